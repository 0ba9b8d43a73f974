"""miniImageNet: Ravi & Larochelle's csv layout or one folder per class; 84x84 RGB, normalised per channel with the
training split's mean and std."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .dataset import SPLITS, DataError, FewShotDataset, Split, split_file, train_normalisation

MINI_SIZE = 84


def load_miniimagenet(root=None) -> FewShotDataset:
    """miniImageNet (Vinyals et al. 2016; split of Ravi & Larochelle 2017: 64 / 16 / 20 classes of 600 images).

    Two layouts are read from ``root``: Ravi's, ``{train,val,test}.csv`` (filename,label) with ``images/<file>``; or
    one folder per class, ``{train,val,test}/<wnid>/*.jpg``. Images are resized to 84x84 (LANCZOS) when they are
    not already; the class lists must match Ravi & Larochelle's split, which ships with the package.
    """
    from PIL import Image, UnidentifiedImageError

    if root is None:
        raise DataError("miniimagenet is not embedded; give --data-dir with {train,val,test}.csv and images/, "
                        "or {train,val,test}/<class>/*.jpg")
    root = Path(root)
    files: dict[str, dict[str, list[Path]]] = {}
    for s in SPLITS:
        per: dict[str, list[Path]] = {}
        if (root / f"{s}.csv").is_file():
            with open(root / f"{s}.csv", newline="") as fh:
                for row in csv.DictReader(fh):
                    per.setdefault(row["label"], []).append(root / "images" / row["filename"])
        elif (root / s).is_dir():
            for d in sorted(p for p in (root / s).iterdir() if p.is_dir()):
                per[d.name] = sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        else:
            raise DataError(f"miniimagenet: neither {root / f'{s}.csv'} nor {root / s}/ exists")
        expected = split_file("miniimagenet", f"{s}.txt").split()
        if sorted(per) != sorted(expected):
            raise DataError(f"miniimagenet split '{s}' in {root} has {len(per)} classes that differ from "
                            f"Ravi & Larochelle's {len(expected)}")
        files[s] = {c: per[c] for c in expected}
    total = sum(len(v) for f in files.values() for v in f.values())
    images = np.empty((total, MINI_SIZE, MINI_SIZE, 3), dtype=np.uint8)
    splits, k = {}, 0
    for s in SPLITS:
        members = []
        for c, paths in files[s].items():
            start = k
            for p in paths:
                try:
                    with Image.open(p) as img:
                        img = img.convert("RGB")
                        if img.size != (MINI_SIZE, MINI_SIZE):
                            img = img.resize((MINI_SIZE, MINI_SIZE), Image.Resampling.LANCZOS)
                        images[k] = np.asarray(img)
                except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
                    raise DataError(f"miniimagenet image {p} is missing or corrupt ({type(e).__name__})") from None
                k += 1
            members.append(np.arange(start, k))
        splits[s] = Split(list(files[s]), members, np.zeros(len(members), dtype=np.int64))
    mean, std = train_normalisation(images, splits["train"].members)
    return FewShotDataset("miniimagenet", images, splits, mean, std, source=f"dir:{root}")


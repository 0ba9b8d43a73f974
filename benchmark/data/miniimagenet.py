"""miniImageNet: Ravi & Larochelle's split (64 / 16 / 20 classes of 600 images), 84x84 RGB, normalised per channel
with the training split's mean and std.

Three layouts are read from ``--data-dir``, detected per split ``s`` in train, val, test (in this order):

* Ren et al.'s pickles, ``mini-imagenet-cache-{s}.pkl``: a dict with ``image_data`` (uint8 [N, 84, 84, 3]) and
  ``class_dict`` (wnid -> image indices); channels are used as stored.
* Ravi & Larochelle's csv layout, ``{s}.csv`` (filename,label) with ``images/<file>``;
* one folder per class, ``{s}/<wnid>/*.jpg``.

Images are decoded (or copied from the pickle) once into the pixel cache (:func:`~.dataset.cached_images`) and read
from disk on demand; JPEGs not already 84x84 are resized (LANCZOS). The class lists must match Ravi & Larochelle's
split, which ships with the package.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .dataset import (
    SPLITS,
    ConcatImages,
    DataError,
    FewShotDataset,
    ImageWriter,
    Split,
    cached_images,
    dataset_with_stats,
    split_file,
)
from .formats import check_images, decode_file_resized, read_pickle

MINI_SIZE = 84


def _decode(p: Path) -> np.ndarray:
    return decode_file_resized(p, MINI_SIZE, "miniimagenet")


def _pickle_split(root: Path, s: str, pkl: Path, expected: list[str]):
    what = "Ren et al.'s dict with 'image_data' (uint8 [N, 84, 84, 3]) and 'class_dict' (wnid -> indices)"
    d = read_pickle(pkl, what)
    if not isinstance(d, dict) or "image_data" not in d or "class_dict" not in d:
        raise DataError(f"{pkl} holds {', '.join(sorted(d)) if isinstance(d, dict) else type(d).__name__}; "
                        f"expected {what}")
    data = d["image_data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise DataError(f"{pkl}: image_data is not a uint8 array; expected {what}")
    check_images(pkl, data.shape, (MINI_SIZE, MINI_SIZE, 3))
    cd = {(k.decode() if isinstance(k, bytes) else str(k)): np.asarray(v, dtype=np.int64).reshape(-1)
          for k, v in d["class_dict"].items()}
    if sorted(cd) != sorted(expected):
        raise DataError(f"{pkl}: class_dict has {len(cd)} classes that differ from Ravi & Larochelle's "
                        f"{len(expected)} {s} classes")
    bad = [c for c in expected if len(cd[c]) == 0 or cd[c].min() < 0 or cd[c].max() >= len(data)]
    if bad:
        raise DataError(f"{pkl}: class_dict[{bad[0]!r}] is empty or indexes past the {len(data)} images of image_data")
    images = cached_images(root, f"miniimagenet-{s}", [pkl], data.shape, lambda w: w.write(0, data))
    return images, [cd[c] for c in expected], f"pickle ({pkl.name})"


def _file_split(root: Path, s: str, expected: list[str]):
    per: dict[str, list[Path]] = {}
    if (root / f"{s}.csv").is_file():
        with open(root / f"{s}.csv", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"filename", "label"} <= set(reader.fieldnames):
                raise DataError(f"{root / f'{s}.csv'} has columns {reader.fieldnames}; expected filename,label")
            for row in reader:
                per.setdefault(row["label"], []).append(root / "images" / row["filename"])
        layout = f"csv ({s}.csv + images/)"
    elif (root / s).is_dir():
        for d in sorted(p for p in (root / s).iterdir() if p.is_dir()):
            per[d.name] = sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        layout = f"class folders ({s}/<wnid>/)"
    else:
        raise DataError(f"miniimagenet: neither {root / f'mini-imagenet-cache-{s}.pkl'}, {root / f'{s}.csv'} nor "
                        f"{root / s}/ exists")
    if sorted(per) != sorted(expected):
        raise DataError(f"miniimagenet split '{s}' in {root} has {len(per)} classes that differ from "
                        f"Ravi & Larochelle's {len(expected)}")
    paths = [p for c in expected for p in per[c]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"miniimagenet image {missing[0]} is missing ({len(missing)} of {len(paths)} listed)")

    sizes = np.cumsum([0] + [len(per[c]) for c in expected])
    return paths, [np.arange(a, b) for a, b in zip(sizes[:-1], sizes[1:])], layout


def _decoded(root: Path, s: str, paths: list[Path]):
    def fill(w: ImageWriter) -> None:
        for i, p in enumerate(paths):
            w.write(i, _decode(p)[None])

    return cached_images(root, f"miniimagenet-{s}", paths, (len(paths), MINI_SIZE, MINI_SIZE, 3), fill)


def load_miniimagenet(root=None) -> FewShotDataset:
    """miniImageNet (Vinyals et al. 2016; split of Ravi & Larochelle 2017) from ``root`` in any of the layouts in
    the module docstring; images stay on disk."""
    if root is None:
        raise DataError("miniimagenet is not embedded; give --data-dir with mini-imagenet-cache-{train,val,test}.pkl, "
                        "{train,val,test}.csv and images/, or {train,val,test}/<class>/*.jpg")
    root = Path(root)
    parts, splits, layouts, start = [], {}, {}, 0
    listed = {s: _file_split(root, s, split_file("miniimagenet", f"{s}.txt").split()) for s in SPLITS
              if not (root / f"mini-imagenet-cache-{s}.pkl").is_file()}  # every list checked before decoding
    for s in SPLITS:
        expected = split_file("miniimagenet", f"{s}.txt").split()
        if s in listed:
            paths, members, layouts[s] = listed[s]
            images = _decoded(root, s, paths)
        else:
            images, members, layouts[s] = _pickle_split(root, s, root / f"mini-imagenet-cache-{s}.pkl", expected)
        splits[s] = Split(list(expected), [start + m for m in members], np.zeros(len(expected), dtype=np.int64))
        parts.append(images)
        start += len(images)
    images = ConcatImages(parts)
    return dataset_with_stats("miniimagenet", images, splits, root, [Path(p.path) for p in parts], f"dir:{root}",
                              {"layout": layouts, "pixels": ", ".join(p.path for p in parts)})

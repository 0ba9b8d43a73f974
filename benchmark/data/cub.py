"""CUB-200-2011 (Wah et al. 2011): 200 bird species, 11,788 images, read from the official archive layout and resized
to 84x84 RGB (the whole image, LANCZOS, no crop), normalised per channel with the training split's mean and std.

``--data-dir`` holds ``CUB_200_2011/`` (or is it): ``images.txt`` (``<id> <NNN.Name>/<file>.jpg``), ``classes.txt``
(``<id> <NNN.Name>``) and ``images/<NNN.Name>/*.jpg``, as extracted from ``CUB_200_2011.tgz``. The images are decoded
once into the pixel cache (:func:`~.dataset.cached_images`), shared by both splits; later loads open it at once.

Class splits, stated by class name in ``splits/cub/<name>/{train,val,test}.txt``:

* ``100-50-50`` (default): Chen et al. 2019, "A Closer Look at Few-shot Classification"
  (wyharveychen/CloserLookFewShot, ``filelists/CUB/write_CUB_filelist.py``: class folders sorted by name, base =
  indices 0, 2, 4, ..., val = 1, 5, 9, ..., novel = 3, 7, 11, ...), the split most cross-domain papers use. The
  shipped lists are torchmeta's (tristandeleu/pytorch-meta), checked to be exactly those classes.
* ``140-30-30``: Triantafillou et al. 2020 (Meta-Dataset, google-research/meta-dataset ``cu_birds_splits.json``;
  also easy-few-shot-learning's).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import (
    SPLITS,
    DataError,
    FewShotDataset,
    ImageWriter,
    Split,
    cached_images,
    dataset_with_stats,
    split_file,
)
from .formats import decode_file_resized

CUB_SIZE = 84
CUB_SPLITS = ("100-50-50", "140-30-30")


def cub_root(root: Path) -> Path:
    base = root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root
    for f in ("images.txt", "classes.txt"):
        if not (base / f).is_file():
            raise DataError(f"CUB file {base / f} is missing; --data-dir must hold CUB_200_2011/ (images.txt, "
                            "classes.txt, images/<NNN.Name>/*.jpg) from CUB_200_2011.tgz")
    if not (base / "images").is_dir():
        raise DataError(f"CUB folder {base / 'images'} is missing; expected images/<NNN.Name>/*.jpg")
    return base


def _read_pairs(path: Path, what: str) -> list[tuple[int, str]]:
    rows = []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{path} line {i} is malformed ({line[:40]!r}); expected '<id> {what}'")
        rows.append((int(parts[0]), parts[1].strip()))
    return rows


def cub_files(base: Path) -> tuple[list[str], list[tuple[str, Path]]]:
    """(class names from classes.txt, [(class, image path)] in images.txt order); DataError on what is missing."""
    classes = [n for _, n in sorted(_read_pairs(base / "classes.txt", "<NNN.Name>"))]
    images = []
    known = set(classes)
    for _, rel in sorted(_read_pairs(base / "images.txt", "<NNN.Name>/<file>.jpg")):
        cls = rel.split("/", 1)[0]
        if cls not in known:
            raise DataError(f"{base / 'images.txt'} lists {rel}, whose class {cls} is not in classes.txt")
        images.append((cls, base / "images" / rel))
    missing = [p for _, p in images if not p.is_file()]
    if missing:
        raise DataError(f"CUB image {missing[0]} is missing ({len(missing)} of {len(images)} listed in images.txt); "
                        "the copy is incomplete")
    return classes, images


def _decode(path: Path) -> np.ndarray:
    return decode_file_resized(path, CUB_SIZE, "CUB")


def load_cub(root=None, split: str = CUB_SPLITS[0]) -> FewShotDataset:
    """CUB-200-2011 with the named class split (module docstring); images on disk in the pixel cache."""
    if root is None:
        raise DataError("cub is not embedded; give --data-dir with CUB_200_2011/ (images.txt, classes.txt, images/)")
    if split not in CUB_SPLITS:
        raise DataError(f"cub has no split {split!r}; choose from {', '.join(CUB_SPLITS)}")
    base = cub_root(Path(root))
    classes, files = cub_files(base)
    lists = {s: split_file("cub", split, f"{s}.txt").split() for s in SPLITS}
    absent = [c for s in SPLITS for c in lists[s] if c not in classes]
    if absent:
        raise DataError(f"{base / 'classes.txt'} lacks class {absent[0]} of the {split} split "
                        f"({len(absent)} missing); expected the 200 CUB-200-2011 classes")
    cls_of = np.array([classes.index(c) for c, _ in files])

    def fill(w: ImageWriter) -> None:
        for i, (_, p) in enumerate(files):
            w.write(i, _decode(p)[None])

    images = cached_images(Path(root), "cub", [base / "images.txt", base / "classes.txt", *(p for _, p in files)],
                           (len(files), CUB_SIZE, CUB_SIZE, 3), fill)
    splits = {}
    for s in SPLITS:
        members = [np.flatnonzero(cls_of == classes.index(c)) for c in lists[s]]
        empty = [c for c, m in zip(lists[s], members) if len(m) == 0]
        if empty:
            raise DataError(f"{base / 'images.txt'} lists no image of class {empty[0]}; the copy is incomplete")
        splits[s] = Split(list(lists[s]), members, np.zeros(len(members), dtype=np.int64))
    return dataset_with_stats("cub", images, splits, Path(root), [base / "images.txt", base / "classes.txt"],
                              f"dir:{root}", {"layout": "CUB_200_2011 official archive (images.txt, classes.txt, "
                                                        "images/)", "pixels": images.path})

"""tieredImageNet (Ren et al. 2018): 608 ImageNet classes in 34 super-categories, split by super-category into
351 / 97 / 160 classes (20 / 6 / 8 super-categories); 779,165 images at 84x84 RGB.

Two layouts are read from ``--data-dir``, per split ``s`` in train, val, test (a folder may mix them):

* Ren et al.'s release: ``{s}_images_png.pkl`` (a pickled list of PNG-encoded images, Python 2) and
  ``{s}_labels.pkl``. The PNGs are decoded once, as the pickle is read, into the pixel cache
  (:func:`~.dataset.cached_images`); later loads open the cache at once.
* The ``{s}_images.npz`` (uint8 array ``images`` [N, 84, 84, 3]) + ``{s}_labels.pkl`` layout of later code
  (MetaOptNet, Meta-Transfer Learning and others, made by decoding the PNGs with OpenCV, hence BGR). A stored
  (``np.savez``) npz is read in place, never loaded; a compressed one is decompressed once into the cache. Channels
  are given back as RGB, so both layouts of the same data give the same pixels and the same fingerprint.

``{s}_labels.pkl`` is Ren et al.'s dict: ``label_specific`` (class index per image), ``label_specific_str`` (the
class wnids), ``label_general`` and ``label_general_str`` (super-category per image and their wnids); pickled by
Python 2 or 3. Classes must be exactly those of Ren et al.'s split, which ships in ``splits/tieredimagenet/``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import SPLITS, ConcatImages, DataError, FewShotDataset, Split, dataset_with_stats, split_file
from .formats import as_str, npz_images, png_pickle_images, read_pickle

TIERED_SIZE = 84
LABEL_KEYS = ("label_specific", "label_specific_str", "label_general", "label_general_str")


def read_labels(path: Path) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """Ren et al.'s ``{split}_labels.pkl`` -> (class per image, class wnids, super-category per image, their wnids)."""
    what = f"Ren et al.'s labels dict with keys {', '.join(LABEL_KEYS)}"
    d = read_pickle(path, what)
    if not isinstance(d, dict) or any(k not in d for k in LABEL_KEYS):
        have = ", ".join(sorted(d)) if isinstance(d, dict) else type(d).__name__
        raise DataError(f"{path} holds {have}; expected {what}")
    try:
        spec = np.asarray(d["label_specific"], dtype=np.int64).reshape(-1)
        gen = np.asarray(d["label_general"], dtype=np.int64).reshape(-1)
        spec_str = [as_str(x) for x in d["label_specific_str"]]
        gen_str = [as_str(x) for x in d["label_general_str"]]
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: labels are not integer arrays and string lists ({e}); expected {what}") from None
    if len(spec) != len(gen) or (len(spec) and (spec.min() < 0 or spec.max() >= len(spec_str))):
        raise DataError(f"{path}: label_specific does not index label_specific_str ({len(spec_str)} names); "
                        f"expected {what}")
    return spec, spec_str, gen, gen_str


def tiered_layout(root: Path, s: str) -> tuple[str, Path]:
    """('npz' | 'png-pkl', images file) for split ``s``; DataError naming what is missing."""
    npz, png = root / f"{s}_images.npz", root / f"{s}_images_png.pkl"
    if npz.is_file():
        return "npz", npz
    if png.is_file():
        return "png-pkl", png
    raise DataError(f"tieredimagenet: neither {npz} nor {png} exists; expected Ren et al.'s {s}_images_png.pkl "
                    f"or the {s}_images.npz layout, each with {s}_labels.pkl")


def load_tieredimagenet(root=None, split: str = "ren") -> FewShotDataset:
    """tieredImageNet from ``root`` in either layout (module docstring); images stay on disk (:class:`DiskImages`)."""
    if root is None:
        raise DataError("tieredimagenet is not embedded; give --data-dir with {train,val,test}_images_png.pkl or "
                        "{train,val,test}_images.npz, each with {train,val,test}_labels.pkl")
    root = Path(root)
    size = (TIERED_SIZE, TIERED_SIZE)
    parts, splits, layouts, supers, start, sources = [], {}, {}, {}, 0, []
    for s in SPLITS:
        layout, images_file = tiered_layout(root, s)
        labels_file = root / f"{s}_labels.pkl"
        spec, spec_str, gen, gen_str = read_labels(labels_file)
        expected = split_file("tieredimagenet", f"{s}.txt").split()
        if sorted(set(spec_str)) != sorted(expected) or len(spec_str) != len(expected):
            extra = sorted(set(spec_str) - set(expected))
            raise DataError(f"{labels_file} names {len(set(spec_str))} classes that differ from Ren et al.'s "
                            f"{len(expected)} {s} classes" + (f" (e.g. {extra[0]})" if extra else ""))
        if layout == "npz":
            imgs = npz_images(images_file, "images", (*size, 3), root, f"tieredimagenet-{s}", bgr=True)
        else:
            imgs = png_pickle_images(images_file, len(spec), size, root, f"tieredimagenet-{s}")
        if len(imgs) != len(spec):
            raise DataError(f"{images_file} holds {len(imgs)} images but {labels_file} labels {len(spec)}; "
                            "the two files must come from the same split")
        index = {n: i for i, n in enumerate(spec_str)}
        members = [start + np.flatnonzero(spec == index[c]) for c in expected]
        empty = [c for c, m in zip(expected, members) if len(m) == 0]
        if empty:
            raise DataError(f"{labels_file}: class {empty[0]} has no images; the copy is incomplete")
        splits[s] = Split(list(expected), members, np.zeros(len(expected), dtype=np.int64))
        parts.append(imgs)
        sources += [images_file, labels_file]
        layouts[s] = f"{layout} ({images_file.name})"
        supers[s] = len(set(gen.tolist()))
        start += len(spec)
    images = ConcatImages(parts)
    return dataset_with_stats("tieredimagenet", images, splits, root, sources, f"dir:{root}", {"layout": layouts, "super-categories": supers,
                                "pixels": ", ".join(getattr(p, "path", "RAM") for p in parts)})

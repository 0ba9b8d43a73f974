"""CIFAR-FS and FC100: CIFAR-100 split as Bertinetto et al. (2019) (64 / 16 / 20 fine classes) and Oreshkin et al.
(2018) (12 / 4 / 4 superclasses); 32x32 RGB, normalised per channel with the training split's mean and std.

Two layouts are read from ``--data-dir``:

* the CIFAR-100 python download, ``cifar-100-python/{train,test,meta}`` (or those three files in the folder);
* the pickles MetaOptNet (Lee et al. 2019) and code after it ship, ``CIFAR_FS_{train,val,test}.pickle`` or
  ``FC100_{train,val,test}.pickle``: dicts with ``data`` (uint8 [N, 32, 32, 3]) and ``labels`` (CIFAR-100 fine
  label ids), pickled by Python 2. Fine ids name classes through CIFAR-100's alphabetical fine label order, and their
  superclasses come from ``splits/fc100/fine_to_coarse.json`` (torchmeta's CIFAR-FS [superclass, class] pairs).
  The same images in this layout come in another order than in the download, hence another fingerprint.

These are small (60,000 images, 184 MB) and stay in RAM.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from .dataset import SPLITS, DataError, FewShotDataset, Split, split_file, train_normalisation
from .formats import check_images, read_pickle

PICKLE_PREFIX = {"cifar-fs": "CIFAR_FS", "fc100": "FC100"}


def fine_to_coarse() -> dict[str, str]:
    """CIFAR-100 fine class name -> superclass name (all 100), from torchmeta's CIFAR-FS lists."""
    return json.loads(split_file("fc100", "fine_to_coarse.json"))


def _pickle_layout(name: str, root: Path) -> bool:
    return any((root / f"{PICKLE_PREFIX[name]}_{s}.pickle").is_file() for s in SPLITS)


def _load_pickles(name: str, root: Path, split_classes: dict[str, list[str]]) -> FewShotDataset:
    """MetaOptNet's ``{CIFAR_FS,FC100}_{split}.pickle`` files -> dataset with the given class lists."""
    fine_names = sorted(fine_to_coarse())  # CIFAR-100's fine label order is alphabetical
    what = "a dict with 'data' (uint8 [N, 32, 32, 3]) and 'labels' (CIFAR-100 fine label ids)"
    arrays, splits, start = [], {}, 0
    for s in SPLITS:
        path = root / f"{PICKLE_PREFIX[name]}_{s}.pickle"
        d = read_pickle(path, what)
        if not isinstance(d, dict) or "data" not in d or "labels" not in d:
            raise DataError(f"{path} holds {', '.join(sorted(d)) if isinstance(d, dict) else type(d).__name__}; "
                            f"expected {what}")
        data, labels = np.asarray(d["data"]), np.asarray(d["labels"]).reshape(-1)
        if data.dtype != np.uint8 or len(data) != len(labels):
            raise DataError(f"{path}: data is {data.dtype} {data.shape} with {len(labels)} labels; expected {what}")
        check_images(path, data.shape, (32, 32, 3))
        if labels.size and (labels.min() < 0 or labels.max() >= 100):
            raise DataError(f"{path}: labels run from {labels.min()} to {labels.max()}; expected CIFAR-100 fine ids 0-99")
        present = sorted(fine_names[i] for i in np.unique(labels))
        if present != sorted(split_classes[s]):
            raise DataError(f"{path}: its {len(present)} classes differ from the {len(split_classes[s])} of {name}'s "
                            f"{s} split; expected CIFAR-100 fine label ids of that split")
        members = [start + np.flatnonzero(labels == fine_names.index(c)) for c in split_classes[s]]
        splits[s] = Split(list(split_classes[s]), members, np.zeros(len(members), dtype=np.int64))
        arrays.append(np.ascontiguousarray(data))
        start += len(data)
    images = np.concatenate(arrays)
    mean, std = train_normalisation(images, splits["train"].members)
    return FewShotDataset(name, images, splits, mean, std, source=f"dir:{root}",
                          info={"layout": f"pickles ({PICKLE_PREFIX[name]}_{{train,val,test}}.pickle)"})


def _load_cifar100(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """CIFAR-100 'python version' (``cifar-100-python/{train,test,meta}``) -> images [N,32,32,3], fine, coarse, names."""
    base = root / "cifar-100-python" if (root / "cifar-100-python").is_dir() else root
    parts = []
    for f in ("train", "test", "meta"):
        if not (base / f).is_file():
            raise DataError(f"CIFAR-100 file {base / f} is missing; --data-dir must hold cifar-100-python/ "
                            "(train, test, meta) from the CIFAR-100 python download")
        try:
            with open(base / f, "rb") as fh:
                parts.append(pickle.load(fh, encoding="bytes"))
        except Exception as e:  # pickle raises many types on corrupt input
            raise DataError(f"CIFAR-100 file {base / f} is corrupt ({type(e).__name__}); download it again") from None
    tr, te, meta = parts
    try:
        data = np.concatenate([tr[b"data"], te[b"data"]]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        fine = np.concatenate([tr[b"fine_labels"], te[b"fine_labels"]])
        coarse = np.concatenate([tr[b"coarse_labels"], te[b"coarse_labels"]])
        fine_names = [n.decode() for n in meta[b"fine_label_names"]]
        coarse_names = [n.decode() for n in meta[b"coarse_label_names"]]
    except (KeyError, ValueError) as e:
        raise DataError(f"CIFAR-100 files in {base} do not have the expected layout ({e})") from None
    return np.ascontiguousarray(data, dtype=np.uint8), fine, coarse, fine_names, coarse_names


def _cifar_dataset(name: str, root, split_classes: dict[str, list[str]]) -> FewShotDataset:
    if root is None:
        raise DataError(f"{name} is not embedded; give --data-dir with the CIFAR-100 python download "
                        f"(cifar-100-python/train, test, meta) or {PICKLE_PREFIX[name]}_{{train,val,test}}.pickle")
    if _pickle_layout(name, Path(root)):
        return _load_pickles(name, Path(root), split_classes)
    images, fine, _, fine_names, _ = _load_cifar100(Path(root))
    splits = {}
    for s, classes in split_classes.items():
        missing = [c for c in classes if c not in fine_names]
        if missing:
            raise DataError(f"{name} split '{s}' needs CIFAR-100 class {missing[0]!r}, absent from {root}")
        members = [np.flatnonzero(fine == fine_names.index(c)) for c in classes]
        splits[s] = Split(list(classes), members, np.zeros(len(classes), dtype=np.int64))
    mean, std = train_normalisation(images, splits["train"].members)
    return FewShotDataset(name, images, splits, mean, std, source=f"dir:{root}",
                          info={"layout": "CIFAR-100 python download (cifar-100-python/train, test, meta)"})


def load_cifar_fs(root=None) -> FewShotDataset:
    """CIFAR-FS (Bertinetto et al. 2019): CIFAR-100 fine classes split 64 / 16 / 20, 600 images each, 32x32."""
    return _cifar_dataset("cifar-fs", root, {s: split_file("cifar-fs", f"{s}.txt").split() for s in SPLITS})


def load_fc100(root=None) -> FewShotDataset:
    """FC100 (Oreshkin et al. 2018): CIFAR-100 split by superclass, 12 / 4 / 4 superclasses (60 / 20 / 20 classes)."""
    if root is None:
        return _cifar_dataset("fc100", None, {})
    if _pickle_layout("fc100", Path(root)):
        coarse_of = fine_to_coarse()
        return _cifar_dataset("fc100", root, {s: sorted(f for f, c in coarse_of.items()
                                                         if c in json.loads(split_file("fc100", f"{s}.json")))
                                              for s in SPLITS})
    _, fine, coarse, fine_names, coarse_names = _load_cifar100(Path(root))
    split_classes = {}
    for s in SPLITS:
        supers = json.loads(split_file("fc100", f"{s}.json"))
        ids = [coarse_names.index(c) for c in supers if c in coarse_names]
        if len(ids) != len(supers):
            raise DataError(f"fc100 split '{s}' names superclasses absent from the CIFAR-100 meta file in {root}")
        split_classes[s] = sorted({fine_names[f] for f, c in zip(fine, coarse) if c in ids})
    return _cifar_dataset("fc100", root, split_classes)


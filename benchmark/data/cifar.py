"""CIFAR-FS and FC100: the CIFAR-100 python download (``cifar-100-python/{train,test,meta}``) split as Bertinetto
et al. (2019) (64 / 16 / 20 fine classes) and Oreshkin et al. (2018) (12 / 4 / 4 superclasses); 32x32 RGB, normalised
per channel with the training split's mean and std."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from .dataset import SPLITS, DataError, FewShotDataset, Split, split_file, train_normalisation


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
                        "(cifar-100-python/train, test, meta)")
    images, fine, _, fine_names, _ = _load_cifar100(Path(root))
    splits = {}
    for s, classes in split_classes.items():
        missing = [c for c in classes if c not in fine_names]
        if missing:
            raise DataError(f"{name} split '{s}' needs CIFAR-100 class {missing[0]!r}, absent from {root}")
        members = [np.flatnonzero(fine == fine_names.index(c)) for c in classes]
        splits[s] = Split(list(classes), members, np.zeros(len(classes), dtype=np.int64))
    mean, std = train_normalisation(images, splits["train"].members)
    return FewShotDataset(name, images, splits, mean, std, source=f"dir:{root}")


def load_cifar_fs(root=None) -> FewShotDataset:
    """CIFAR-FS (Bertinetto et al. 2019): CIFAR-100 fine classes split 64 / 16 / 20, 600 images each, 32x32."""
    return _cifar_dataset("cifar-fs", root, {s: split_file("cifar-fs", f"{s}.txt").split() for s in SPLITS})


def load_fc100(root=None) -> FewShotDataset:
    """FC100 (Oreshkin et al. 2018): CIFAR-100 split by superclass, 12 / 4 / 4 superclasses (60 / 20 / 20 classes)."""
    if root is None:
        return _cifar_dataset("fc100", None, {})
    _, fine, coarse, fine_names, coarse_names = _load_cifar100(Path(root))
    split_classes = {}
    for s in SPLITS:
        supers = json.loads(split_file("fc100", f"{s}.json"))
        ids = [coarse_names.index(c) for c in supers if c in coarse_names]
        if len(ids) != len(supers):
            raise DataError(f"fc100 split '{s}' names superclasses absent from the CIFAR-100 meta file in {root}")
        split_classes[s] = sorted({fine_names[f] for f, c in zip(fine, coarse) if c in ids})
    return _cifar_dataset("fc100", root, split_classes)


"""Few-shot datasets: an array of images plus named class splits.

A :class:`FewShotDataset` holds every image of a dataset once, as uint8, and for each split (``train``, ``val``,
``test``) the classes it contains. A class is a list of image indices plus a rotation (a multiple of 90 degrees;
Omniglot's Vinyals split treats each rotation of a character as its own class). Episodes are drawn from these by
:mod:`benchmark.episodes`.

Loaders:

* ``omniglot`` with no directory: the copy embedded in the package (``benchmark/data/omniglot28.npz``, built by
  ``scripts/prepare_omniglot.py`` from the real Omniglot files; MIT licence in ``LICENSE.omniglot-MIT.txt``).
* ``omniglot`` with a directory: the canonical layout people download,
  ``images_background/<Alphabet>/characterNN/XXXX_YY.png`` and ``images_evaluation/...``, either extracted or as
  ``images_background.zip`` / ``images_evaluation.zip`` in that directory. Images are resized to 28x28 exactly as
  the embedded copy was made, so both loaders give the same pixels.

* ``cifar-fs`` and ``fc100``: the CIFAR-100 python download (``cifar-100-python/{train,test,meta}``) split as
  Bertinetto et al. (2019) and Oreshkin et al. (2018); 32x32 RGB.
* ``miniimagenet``: Ravi & Larochelle's csv layout or one folder per class; 84x84 RGB.

Their split lists ship in ``benchmark/data/splits/`` (sources in README, "Data"). Colour datasets are normalised per channel with the training split's mean and std.
"""
from __future__ import annotations

import hashlib
import io
import re
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import torch

SPLITS = ("train", "val", "test")
OMNIGLOT_SIZE = 28


class DataError(Exception):
    """Missing, incomplete or corrupt data; the message says what to do."""


@dataclass
class Split:
    """The classes of one split: ``members[c]`` are image indices of class ``c``, rotated by ``rotation[c]`` x 90."""

    names: list[str]
    members: list[np.ndarray]
    rotation: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def min_class_size(self) -> int:
        return min(len(m) for m in self.members)


@dataclass
class FewShotDataset:
    """All images of a dataset (uint8 ``[N, H, W]`` or ``[N, H, W, C]``) and its splits.

    ``mean``/``std`` normalise images after scaling to [0, 1] (per channel; 0 and 1 leave them as they are).
    """

    name: str
    images: np.ndarray
    splits: dict[str, Split]
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    source: str = ""
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one model input."""
        if self.images.ndim == 3:
            return (1, self.images.shape[1], self.images.shape[2])
        return (self.images.shape[3], self.images.shape[1], self.images.shape[2])

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the pixels and the split definitions: two datasets with equal fingerprints give equal episodes."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(self.name.encode())
            h.update(str(self.images.shape).encode())
            h.update(np.ascontiguousarray(self.images).tobytes())
            for s in sorted(self.splits):
                sp = self.splits[s]
                h.update(s.encode())
                for n, m, r in zip(sp.names, sp.members, sp.rotation):
                    h.update(n.encode())
                    h.update(np.asarray(m, dtype=np.int64).tobytes())
                    h.update(int(r).to_bytes(1, "little"))
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def tensor(self, split: str, classes: np.ndarray, samples: np.ndarray) -> torch.Tensor:
        """Images as a float tensor ``[len(classes), C, H, W]``.

        ``classes[i]`` is a class index within ``split`` and ``samples[i]`` a position within that class's members.
        """
        sp = self.splits[split]
        idx = np.fromiter((sp.members[c][s] for c, s in zip(classes, samples)), dtype=np.int64, count=len(classes))
        x = self.images[idx]
        rot = sp.rotation[classes]
        if rot.any():
            x = x.copy()
            for k in (1, 2, 3):
                sel = rot == k
                if sel.any():
                    x[sel] = np.rot90(x[sel], k=k, axes=(1, 2))
        t = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
        t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()
        if any(m != 0.0 for m in self.mean) or any(s != 1.0 for s in self.std):
            mean = torch.tensor(self.mean).view(1, -1, 1, 1)
            std = torch.tensor(self.std).view(1, -1, 1, 1)
            t = (t - mean) / std
        return t


# --------------------------------------------------------------------------------------------------------- Omniglot
def _omniglot_from_arrays(images: np.ndarray, names: list[str], split_lists: dict[str, list[str]], source: str,
                          ) -> FewShotDataset:
    """``images`` uint8 [characters, drawers, 28, 28]; ``names`` '<Alphabet>/characterNN' per row."""
    n_char, n_draw = images.shape[:2]
    row = {n: i for i, n in enumerate(names)}
    splits = {}
    for s, lst in split_lists.items():
        cls_names, members, rots = [], [], []
        for entry in lst:
            m = re.fullmatch(r"(.+/character\d+)/rot(\d{3})", entry)
            if m is None:
                raise DataError(f"omniglot split '{s}': malformed class name {entry!r} (want Alphabet/characterNN/rotDDD)")
            if m.group(1) not in row:
                raise DataError(f"omniglot split '{s}' needs {m.group(1)}, which is not in {source}; "
                                "point --data-dir at a complete copy of images_background and images_evaluation")
            r = row[m.group(1)]
            cls_names.append(entry)
            members.append(np.arange(r * n_draw, (r + 1) * n_draw))
            rots.append(int(m.group(2)) // 90)
        splits[s] = Split(cls_names, members, np.array(rots, dtype=np.int64))
    return FewShotDataset("omniglot", images.reshape(n_char * n_draw, *images.shape[2:]), splits, source=source)


def _vinyals_splits() -> dict[str, list[str]]:
    with _embedded_npz() as d:
        return {s: [str(x) for x in d[f"split_{s}"]] for s in SPLITS}


def _embedded_npz():
    path = resources.files("benchmark.data").joinpath("omniglot28.npz")
    return np.load(io.BytesIO(path.read_bytes()))


def load_omniglot_embedded() -> FewShotDataset:
    """The Omniglot copy shipped in the package: 1,623 characters x 20 drawers, 28x28, Vinyals split."""
    with _embedded_npz() as d:
        images = d["images"]
        names = [f"{a}/{c}" for a, c in zip(d["alphabet"], d["character"])]
        splits = {s: [str(x) for x in d[f"split_{s}"]] for s in SPLITS}
    return _omniglot_from_arrays(images, names, splits, source="embedded:omniglot28.npz")


def omniglot_resize(img) -> np.ndarray:
    """A canonical Omniglot PNG (PIL image, white background) -> uint8 [28, 28] ink intensity, antialiased.

    Identical to ``scripts/prepare_omniglot.py``, so directory and embedded loaders agree pixel for pixel.
    """
    from PIL import Image

    ink = ~np.asarray(img.convert("1"), dtype=bool)
    small = Image.fromarray(ink.astype(np.uint8) * 255, mode="L")
    return np.asarray(small.resize((OMNIGLOT_SIZE, OMNIGLOT_SIZE), Image.Resampling.LANCZOS), dtype=np.uint8)


def _omniglot_files(root: Path) -> dict[str, dict[int, bytes | Path]]:
    """Map 'Alphabet/characterNN' -> {drawer: png} from extracted folders and/or the two zips in ``root``."""
    found: dict[str, dict[int, bytes | Path]] = {}
    pat = re.compile(r"(?:^|/)images_(?:background|evaluation)(?:_small\d)?/([^/]+)/(character\d+)/\d+_(\d+)\.png$")
    for sub in ("images_background", "images_evaluation"):
        folder = root / sub
        if folder.is_dir():
            for p in folder.glob("*/character*/*.png"):
                m = pat.search(p.relative_to(root).as_posix())
                if m:
                    found.setdefault(f"{m.group(1)}/{m.group(2)}", {})[int(m.group(3))] = p
        zpath = root / f"{sub}.zip"
        if zpath.is_file() and not folder.is_dir():
            try:
                with zipfile.ZipFile(zpath) as z:
                    for info in z.infolist():
                        m = pat.search(info.filename)
                        if m:
                            found.setdefault(f"{m.group(1)}/{m.group(2)}", {})[int(m.group(3))] = z.read(info)
            except zipfile.BadZipFile as e:
                raise DataError(f"{zpath} is not a readable zip ({e}); download it again") from None
    return found


def load_omniglot_dir(root: str | Path, splits: dict[str, list[str]] | None = None) -> FewShotDataset:
    """Omniglot from the canonical layout in ``root`` (see module docstring), resized to 28x28.

    ``splits`` maps split name -> class names 'Alphabet/characterNN/rotDDD'; the default is the Vinyals split, which
    needs all 1,623 characters.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"omniglot data directory {root} does not exist; give the folder that holds "
                        "images_background/ and images_evaluation/ (or their .zip files)")
    files = _omniglot_files(root)
    if not files:
        raise DataError(f"no Omniglot images found in {root}: expected images_background/<Alphabet>/characterNN/"
                        "XXXX_YY.png (or images_background.zip)")
    splits = splits if splits is not None else _vinyals_splits()
    needed = sorted({"/".join(c.split("/")[:2]) for lst in splits.values() for c in lst})
    missing = [n for n in needed if n not in files]
    if missing:
        raise DataError(f"omniglot data in {root} lacks {len(missing)} characters the split needs (e.g. {missing[0]}); "
                        "it must hold both images_background and images_evaluation")
    drawers = sorted(files[needed[0]])
    images = np.empty((len(needed), len(drawers), OMNIGLOT_SIZE, OMNIGLOT_SIZE), dtype=np.uint8)
    for i, name in enumerate(needed):
        if sorted(files[name]) != drawers:
            raise DataError(f"omniglot character {name} in {root} has drawers {sorted(files[name])}, "
                            f"expected {drawers}; the copy is incomplete")
        for j, d in enumerate(drawers):
            src = files[name][d]
            try:
                with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as img:
                    images[i, j] = omniglot_resize(img)
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"corrupt Omniglot image for {name} drawer {d:02d} in {root}: {e}") from None
    return _omniglot_from_arrays(images, needed, splits, source=f"dir:{root}")


def load_omniglot(data_dir: str | Path | None = None) -> FewShotDataset:
    return load_omniglot_embedded() if data_dir is None else load_omniglot_dir(data_dir)


# ------------------------------------------------------------------------------------- CIFAR-FS, FC100 (CIFAR-100)
def _split_file(*parts: str) -> str:
    return resources.files("benchmark.data").joinpath("splits", *parts).read_text()


def _normalised(images: np.ndarray, train_members: list[np.ndarray]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (of pixels scaled to [0, 1]) over the training split's images."""
    x = images[np.concatenate(train_members)].astype(np.float64) / 255.0
    return tuple(x.mean(axis=(0, 1, 2)).round(6).tolist()), tuple(x.std(axis=(0, 1, 2)).round(6).tolist())


def _load_cifar100(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """CIFAR-100 'python version' (``cifar-100-python/{train,test,meta}``) -> images [N,32,32,3], fine, coarse, names."""
    import pickle

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
    mean, std = _normalised(images, splits["train"].members)
    return FewShotDataset(name, images, splits, mean, std, source=f"dir:{root}")


def load_cifar_fs(root=None) -> FewShotDataset:
    """CIFAR-FS (Bertinetto et al. 2019): CIFAR-100 fine classes split 64 / 16 / 20, 600 images each, 32x32."""
    return _cifar_dataset("cifar-fs", root, {s: _split_file("cifar-fs", f"{s}.txt").split() for s in SPLITS})


def load_fc100(root=None) -> FewShotDataset:
    """FC100 (Oreshkin et al. 2018): CIFAR-100 split by superclass, 12 / 4 / 4 superclasses (60 / 20 / 20 classes)."""
    import json

    if root is None:
        return _cifar_dataset("fc100", None, {})
    _, fine, coarse, fine_names, coarse_names = _load_cifar100(Path(root))
    split_classes = {}
    for s in SPLITS:
        supers = json.loads(_split_file("fc100", f"{s}.json"))
        ids = [coarse_names.index(c) for c in supers if c in coarse_names]
        if len(ids) != len(supers):
            raise DataError(f"fc100 split '{s}' names superclasses absent from the CIFAR-100 meta file in {root}")
        split_classes[s] = sorted({fine_names[f] for f, c in zip(fine, coarse) if c in ids})
    return _cifar_dataset("fc100", root, split_classes)


# ------------------------------------------------------------------------------------------------- miniImageNet
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
            import csv

            with open(root / f"{s}.csv", newline="") as fh:
                for row in csv.DictReader(fh):
                    per.setdefault(row["label"], []).append(root / "images" / row["filename"])
        elif (root / s).is_dir():
            for d in sorted(p for p in (root / s).iterdir() if p.is_dir()):
                per[d.name] = sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        else:
            raise DataError(f"miniimagenet: neither {root / f'{s}.csv'} nor {root / s}/ exists")
        expected = _split_file("miniimagenet", f"{s}.txt").split()
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
    mean, std = _normalised(images, splits["train"].members)
    return FewShotDataset("miniimagenet", images, splits, mean, std, source=f"dir:{root}")


# --------------------------------------------------------------------------------------------------------- registry
LOADERS: dict[str, Callable[[str | Path | None], FewShotDataset]] = {
    "omniglot": load_omniglot, "cifar-fs": load_cifar_fs, "fc100": load_fc100, "miniimagenet": load_miniimagenet}
"""Dataset name -> loader taking the user's data directory (None: the embedded copy, where there is one)."""

_CACHE: dict[tuple[str, str], FewShotDataset] = {}


def load_dataset(name: str, data_dir: str | Path | None = None) -> FewShotDataset:
    """Load (and cache per process) a dataset by name; raises :class:`DataError` with a fix-it message."""
    if name not in LOADERS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(sorted(LOADERS))}")
    key = (name, str(Path(data_dir).resolve()) if data_dir is not None else "")
    if key not in _CACHE:
        _CACHE[key] = LOADERS[name](data_dir)
    return _CACHE[key]

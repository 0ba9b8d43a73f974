"""The dataset model: an array of images plus named class splits, its fingerprint, and the helpers the loaders share.

A :class:`FewShotDataset` holds every image of a dataset once, as uint8, and for each split (``train``, ``val``,
``test``) the classes it contains. A class is a list of image indices plus a rotation (a multiple of 90 degrees;
Omniglot's Vinyals split treats each rotation of a character as its own class). Episodes are drawn from these by
:mod:`benchmark.kit.episodes`.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "val", "test")


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

    ``images`` is a NumPy array in RAM or a :class:`DiskImages` (pixels read from a file on demand, so a dataset
    larger than memory can be used); both give the same episodes and the same fingerprint for the same pixels.
    ``mean``/``std`` normalise images after scaling to [0, 1] (per channel; 0 and 1 leave them as they are).
    ``info``: facts about the files a loader found (layout, super-categories, cache file), for
    ``python -m benchmark.data``; no part of the fingerprint.
    """

    name: str
    images: "np.ndarray | DiskImages"
    splits: dict[str, Split]
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    source: str = ""
    split_name: str = ""  # the named class split it was loaded with (benchmark.data.DATASETS[name].splits)
    info: dict = field(default_factory=dict, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one model input."""
        if self.images.ndim == 3:
            return (1, self.images.shape[1], self.images.shape[2])
        return (self.images.shape[3], self.images.shape[1], self.images.shape[2])

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the pixels and the split definitions: two datasets with equal fingerprints give equal episodes.

        The pixels are hashed in chunks, in image order, so the value is the same whether they are in RAM or on disk
        and never needs them all in memory."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(self.name.encode())
            h.update(str(tuple(int(d) for d in self.images.shape)).encode())
            for chunk in image_chunks(self.images):
                h.update(chunk.data)
            for s in sorted(self.splits):
                sp = self.splits[s]
                h.update(s.encode())
                for n, m, r in zip(sp.names, sp.members, sp.rotation):
                    h.update(n.encode())
                    h.update(np.asarray(m, dtype=np.int64).tobytes())
                    h.update(int(r).to_bytes(1, "little"))
            self._fingerprint = h.hexdigest()
            if self.info.get("stats_file"):
                _write_stats(Path(self.info["stats_file"]), self._fingerprint, self.mean, self.std)
        return self._fingerprint

    def tensor(self, split: str, classes: np.ndarray, samples: np.ndarray) -> "torch.Tensor":
        """Images as a float tensor ``[len(classes), C, H, W]``.

        ``classes[i]`` is a class index within ``split`` and ``samples[i]`` a position within that class's members.
        """
        import torch  # here, so that the dataset table (and --help) imports no torch

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

    @property
    def nbytes(self) -> int:
        """Bytes of all its pixels as uint8 (what :meth:`to_device` copies)."""
        return int(np.prod(self.images.shape))

    def to_device(self, device, pixels=None) -> "DeviceImages":
        """Its pixels copied once to ``device``, building the same float images as :meth:`tensor` there by index
        gathers (:class:`DeviceImages`); ``pixels``: a copy already there (of these pixels) to use instead."""
        return DeviceImages(self, device, pixels)


class DeviceImages:
    """A dataset's uint8 pixels held on a device (a GPU), building the images of :meth:`FewShotDataset.tensor` there:
    the same indices (drawn on the host, as pure functions of the episode's key), gathered from the device copy,
    rotated like ``np.rot90`` (``torch.rot90``) and turned into floats by a lookup table, so that no pixel crosses
    the bus after the first copy, only the indices.

    The table ``[channels, 256]`` holds, for every byte value, the float the host path makes of it (scaled to
    [0, 1], then normalised by the dataset's mean and std), computed by the host path's own operations on the CPU:
    each output value depends only on its byte and channel, so the images are bit-identical to the host path's
    (tested on the CPU), whatever the device's arithmetic (CUDA divides by a scalar through its reciprocal, which
    can differ from the CPU in the last bit; a table gathered on the device cannot).

    The pixels are copied in chunks (:func:`image_chunks`), so a dataset read from disk never needs all its
    pixels in host memory at once. Index copies to CUDA go through pinned memory, asynchronously, so building an
    episode never waits for the device."""

    def __init__(self, ds: FewShotDataset, device, pixels=None):
        import torch

        self.ds, self.device = ds, torch.device(device)
        shape = tuple(int(d) for d in ds.images.shape)
        if pixels is not None:  # a copy of these pixels already on the device (one per process, across runs)
            if tuple(pixels.shape) != shape or pixels.dtype != torch.uint8:
                raise ValueError(f"the device copy {tuple(pixels.shape)} ({pixels.dtype}) is not {ds.name}'s uint8 "
                                 f"pixels {shape}")
            images = pixels
        else:
            images = torch.empty(shape, dtype=torch.uint8, device=self.device)
            at = 0
            for chunk in image_chunks(ds.images):
                images[at:at + len(chunk)].copy_(torch.from_numpy(chunk))
                at += len(chunk)
        self.images = images
        channels = ds.image_shape[0]
        # the host path's arithmetic (FewShotDataset.tensor) on every byte value, one channel per row
        t = torch.arange(256, dtype=torch.uint8).float().div_(255.0).view(1, 1, 1, 256).expand(1, channels, 1, 256)
        if any(m != 0.0 for m in ds.mean) or any(s != 1.0 for s in ds.std):
            mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
            std = torch.tensor(ds.std).view(1, -1, 1, 1)
            t = (t - mean) / std
        self.table = t.reshape(channels, 256).contiguous().to(self.device)
        self._offsets = (torch.arange(channels) * 256).to(self.device)  # row of each channel in the flat table

    def __repr__(self) -> str:
        return f"DeviceImages({self.ds.name}, {tuple(self.images.shape)}, device={self.device})"

    def host_to_device(self, a: np.ndarray):
        """An int64 host array as a tensor on the device (CUDA: pinned, copied without waiting)."""
        import torch

        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def labels(self, ways: int, per: int):
        """``[0]*per + [1]*per + ... + [ways-1]*per`` on the device (int64, as the host path's labels)."""
        import torch

        return torch.arange(ways * per, device=self.device) // per

    def tensor(self, split: str, classes: np.ndarray, samples: np.ndarray):
        """:meth:`FewShotDataset.tensor`'s images (the same float values), built on the device."""
        import torch

        sp = self.ds.splits[split]
        idx = np.fromiter((sp.members[c][s] for c, s in zip(classes, samples)), dtype=np.int64, count=len(classes))
        rot = np.asarray(sp.rotation[classes], dtype=np.int64)
        both = self.host_to_device(np.stack([idx, rot]))  # one copy
        x = self.images.index_select(0, both[0])
        for k in (1, 2, 3):  # which rotations occur is known on the host: no kernel for those that do not
            if (rot == k).any():
                sel = (both[1] == k).view(-1, *([1] * (x.ndim - 1)))
                x = torch.where(sel, torch.rot90(x, k=k, dims=(1, 2)), x)
        if x.ndim == 3:
            return self.table[0][x.long()].unsqueeze(1).contiguous()  # rot90 leaves x's layout permuted
        return self.table.view(-1)[x.long() + self._offsets].permute(0, 3, 1, 2).contiguous()


def _write_stats(path: Path, fingerprint: str | None, mean, std) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "mean": list(mean), "std": list(std)}))
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs time


def dataset_with_stats(name: str, images, splits: dict[str, Split], data_dir, sources: list[Path],
                       source: str, info: dict) -> FewShotDataset:
    """A :class:`FewShotDataset` whose training mean/std and fingerprint are remembered in the pixel cache folder
    (``<name>-<key>.json``, keyed like the pixels by the sources' sizes and modification times and by the split
    definitions): computing them reads every training (or every) pixel, which for tieredImageNet takes minutes."""
    h = hashlib.sha256()
    for s in sorted(splits):
        h.update(json.dumps([s, splits[s].names, [len(m) for m in splits[s].members]]).encode())
        for m in splits[s].members:
            h.update(np.asarray(m, dtype=np.int64).tobytes())
    key = source_key(data_dir, sources, name, tuple(images.shape), h.hexdigest())
    path = pixel_cache_dir(data_dir) / f"{name}-{key}.json"
    fp = None
    try:
        st = json.loads(path.read_text())
        mean, std, fp = tuple(st["mean"]), tuple(st["std"]), st.get("fingerprint")
    except (OSError, ValueError, KeyError, TypeError):
        mean, std = train_normalisation(images, splits["train"].members)
        _write_stats(path, None, mean, std)
    ds = FewShotDataset(name, images, splits, mean, std, source=source, info={**info, "stats_file": str(path)})
    ds._fingerprint = fp
    return ds


def split_file(*parts: str) -> str:
    """A split list shipped in ``benchmark/data/splits/`` (e.g. ``split_file("cifar-fs", "train.txt")``)."""
    return resources.files("benchmark.data").joinpath("splits", *parts).read_text()


NORMALISATION_SAMPLE = 50_000


def train_normalisation(images, train_members: list[np.ndarray],
                        ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (of pixels scaled to [0, 1]) over the training split's images.

    Computed from exact per-channel histograms of the uint8 pixels, a chunk of images at a time: the result does
    not depend on chunking or on where the pixels are stored, and memory stays at one chunk. A training split of more
    than ``NORMALISATION_SAMPLE`` (50,000) images (of the datasets here, only tieredImageNet's 448,695) is measured
    on that many evenly spaced images (in index order), a deterministic sample."""
    idx = np.sort(np.concatenate(train_members))
    if len(idx) > NORMALISATION_SAMPLE:
        idx = idx[np.linspace(0, len(idx) - 1, NORMALISATION_SAMPLE).round().astype(np.int64)]
    channels = 1 if images.ndim == 3 else images.shape[3]
    hist = np.zeros((channels, 256), dtype=np.int64)
    for chunk in image_chunks(images, idx):
        flat = chunk.reshape(-1, channels)
        for c in range(channels):
            hist[c] += np.bincount(flat[:, c], minlength=256)
    v = np.arange(256, dtype=np.float64) / 255.0
    n = hist.sum(axis=1).astype(np.float64)
    mean = (hist * v).sum(axis=1) / n
    var = np.maximum((hist * (v[None, :] - mean[:, None]) ** 2).sum(axis=1) / n, 0.0)
    return tuple(mean.round(6).tolist()), tuple(np.sqrt(var).round(6).tolist())


CHUNK_BYTES = 64 << 20


def image_chunks(images, rows: np.ndarray | None = None, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """C-contiguous uint8 chunks of ``images`` (all rows in order, or ``rows``), about ``chunk_bytes`` each."""
    per = int(np.prod(images.shape[1:]))
    step = max(1, chunk_bytes // max(per, 1))
    n = len(images) if rows is None else len(rows)
    for a in range(0, n, step):
        if rows is None:
            x = images.read_range(a, min(a + step, n)) if hasattr(images, "read_range") else images[a:a + step]
        else:
            x = images[rows[a:a + step]]
        yield np.ascontiguousarray(x, dtype=np.uint8)


class DiskImages:
    """uint8 images ``[N, H, W(, C)]`` stored raw (C order) in a file from byte ``offset``; read on demand.

    Supports what :class:`FewShotDataset` needs of an array: ``shape``, ``ndim``, ``dtype``, ``len`` and indexing
    by an integer, a slice or an integer array (a copy in RAM). Reads use ``os.pread``, not a memory map, so the
    process's resident memory holds only the images asked for (the kernel's page cache is not counted as ours).
    ``bgr``: the file stores channels as B, G, R (OpenCV); they are given back as R, G, B.
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...], offset: int = 0, bgr: bool = False):
        self.path, self.shape, self.offset, self.bgr = str(path), tuple(int(d) for d in shape), int(offset), bgr
        self.dtype = np.dtype(np.uint8)
        self._per = int(np.prod(self.shape[1:]))
        size = os.path.getsize(self.path)
        if size < self.offset + self._per * self.shape[0]:
            raise DataError(f"{self.path} is truncated: {size} bytes, expected at least "
                            f"{self.offset + self._per * self.shape[0]} for images {self.shape}")
        self._fd: int | None = None
        self._pid = -1

    ndim = property(lambda self: len(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"DiskImages({self.path!r}, shape={self.shape}, offset={self.offset}, bgr={self.bgr})"

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_pid": -1}

    _open_lock = threading.Lock()  # two threads (e.g. a prefetcher's and the main one) open one descriptor

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked worker opens its own descriptor
            with self._open_lock:
                if self._fd is None or self._pid != os.getpid():
                    self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def _fix(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x[..., ::-1]) if self.bgr else x

    def read_range(self, a: int, b: int) -> np.ndarray:
        """Images ``a:b`` in one read."""
        a, b = max(0, a), min(b, self.shape[0])
        n = max(0, b - a)
        buf = os.pread(self._file(), n * self._per, self.offset + a * self._per) if n else b""
        if len(buf) != n * self._per:
            raise DataError(f"{self.path}: short read at image {a}; the file changed or is truncated")
        return self._fix(np.frombuffer(buf, dtype=np.uint8).reshape(n, *self.shape[1:]).copy())

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            k = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= k < self.shape[0]:
                raise IndexError(key)
            return self.read_range(k, k + 1)[0]
        if isinstance(key, slice):
            a, b, step = key.indices(self.shape[0])
            return self.read_range(a, b) if step == 1 else self[np.arange(a, b, step)]
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        idx = np.where(idx < 0, idx + self.shape[0], idx)
        if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError("image index out of range")
        out = np.empty((len(idx), *self.shape[1:]), dtype=np.uint8)
        fd = self._file()
        for j, i in enumerate(idx):
            out[j] = np.frombuffer(os.pread(fd, self._per, self.offset + int(i) * self._per),
                                   dtype=np.uint8).reshape(self.shape[1:])
        return self._fix(out)

    def __array__(self, dtype=None, copy=None):
        x = self.read_range(0, self.shape[0])
        return x if dtype is None else x.astype(dtype)


class ConcatImages:
    """Several image arrays (e.g. one :class:`DiskImages` per split file) seen as one, in order; same interface."""

    def __init__(self, parts: list):
        if not parts or len({tuple(p.shape[1:]) for p in parts}) != 1:
            raise ValueError("ConcatImages needs parts with equal image shapes")
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.starts[-1]), *parts[0].shape[1:])
        self.dtype = np.dtype(np.uint8)

    ndim = property(lambda self: len(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ConcatImages({self.parts!r})"

    def read_range(self, a: int, b: int) -> np.ndarray:
        out = [np.asarray(p[max(a - s, 0):max(min(b - s, len(p)), 0)])
               for p, s in zip(self.parts, self.starts[:-1]) if a < s + len(p) and b > s]
        return np.concatenate(out) if out else np.empty((0, *self.shape[1:]), dtype=np.uint8)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            k = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= k < self.shape[0]:
                raise IndexError(key)
            j = int(np.searchsorted(self.starts, k, side="right")) - 1
            return self.parts[j][k - int(self.starts[j])]
        if isinstance(key, slice):
            a, b, step = key.indices(self.shape[0])
            return self.read_range(a, b) if step == 1 else self[np.arange(a, b, step)]
        idx = np.asarray(key).astype(np.int64).reshape(-1)
        idx = np.where(idx < 0, idx + self.shape[0], idx)
        if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError("image index out of range")
        part = np.searchsorted(self.starts, idx, side="right") - 1
        out = np.empty((len(idx), *self.shape[1:]), dtype=np.uint8)
        for j in np.unique(part):
            sel = part == j
            out[sel] = self.parts[j][idx[sel] - self.starts[j]]
        return out

    def __array__(self, dtype=None, copy=None):
        x = self.read_range(0, self.shape[0])
        return x if dtype is None else x.astype(dtype)


# -- the pixel cache: decoded images written once, raw, next to the data ------------------------------------------

CACHE_VERSION = 1
CACHE_ENV = "BENCHMARK_DATA_CACHE"


def pixel_cache_dir(data_dir: str | Path) -> Path:
    """Where decoded pixels of ``data_dir`` are cached: ``$BENCHMARK_DATA_CACHE`` if set, else
    ``<data_dir>/.fewshot-cache/`` when writable, else ``~/.cache/benchmark-fewshot/<hash of data_dir>/``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    data_dir = Path(data_dir).resolve()
    local = data_dir / ".fewshot-cache"
    if os.access(local if local.is_dir() else data_dir, os.W_OK):
        return local
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "benchmark-fewshot" / hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]


def source_key(data_dir: str | Path, sources: list[Path], *extra) -> str:
    """A key for a cache entry: the sources' paths, sizes and modification times, plus ``extra``."""
    data_dir = Path(data_dir).resolve()
    parts = []
    for p in sources:
        st = Path(p).stat()
        parts.append([str(Path(p).resolve().relative_to(data_dir)) if Path(p).resolve().is_relative_to(data_dir)
                      else str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps([CACHE_VERSION, parts, list(extra)], separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ImageWriter:
    """Writes images at given positions of a raw uint8 file (``os.pwrite``; nothing stays mapped in memory)."""

    def __init__(self, fd: int, shape: tuple[int, ...]):
        self.fd, self.shape, self._per = fd, shape, int(np.prod(shape[1:]))

    def write(self, start: int, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=np.uint8)
        if x.shape[1:] != tuple(self.shape[1:]) or start + len(x) > self.shape[0]:
            raise ValueError(f"images {x.shape} do not fit at {start} of {self.shape}")
        view, pos = memoryview(x).cast("B"), self._per * start
        while len(view):
            n = os.pwrite(self.fd, view, pos)
            view, pos = view[n:], pos + n


def cached_images(data_dir: str | Path, name: str, sources: list[Path], shape: tuple[int, ...],
                  fill: Callable[[ImageWriter], None], *extra) -> DiskImages:
    """Decoded images of ``data_dir`` as :class:`DiskImages`, written once by ``fill`` into the pixel cache.

    The file, ``<pixel_cache_dir>/<name>-<key>.u8``, is keyed by the sources' sizes and modification times (and
    ``extra``): changed sources give a new file. It is written under a temporary name and renamed when complete, so
    an interrupted or concurrent build never leaves a partial file in use."""
    shape = tuple(int(d) for d in shape)
    directory = pixel_cache_dir(data_dir)
    path = directory / f"{name}-{source_key(data_dir, sources, shape, *extra)}.u8"
    nbytes = int(np.prod(shape))
    if path.is_file() and path.stat().st_size == nbytes:
        return DiskImages(path, shape)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise DataError(f"cannot write the pixel cache in {directory} ({e.strerror}); set {CACHE_ENV} to a "
                        "writable folder") from None
    try:
        os.ftruncate(fd, nbytes)
        fill(ImageWriter(fd, shape))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return DiskImages(path, shape)


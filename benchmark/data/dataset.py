"""The dataset model: an array of images plus named class splits, its fingerprint, and the helpers the loaders share.

A :class:`FewShotDataset` holds every image of a dataset once, as uint8, and for each split (``train``, ``val``,
``test``) the classes it contains. A class is a list of image indices plus a rotation (a multiple of 90 degrees;
Omniglot's Vinyals split treats each rotation of a character as its own class). Episodes are drawn from these by
:mod:`benchmark.episodes`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
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

    ``mean``/``std`` normalise images after scaling to [0, 1] (per channel; 0 and 1 leave them as they are).
    """

    name: str
    images: np.ndarray
    splits: dict[str, Split]
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    source: str = ""
    split_name: str = ""  # the named class split it was loaded with (benchmark.data.DATASETS[name].splits)
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


def split_file(*parts: str) -> str:
    """A split list shipped in ``benchmark/data/splits/`` (e.g. ``split_file("cifar-fs", "train.txt")``)."""
    return resources.files("benchmark.data").joinpath("splits", *parts).read_text()


def train_normalisation(images: np.ndarray, train_members: list[np.ndarray],
                        ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (of pixels scaled to [0, 1]) over the training split's images."""
    x = images[np.concatenate(train_members)].astype(np.float64) / 255.0
    return tuple(x.mean(axis=(0, 1, 2)).round(6).tolist()), tuple(x.std(axis=(0, 1, 2)).round(6).tolist())


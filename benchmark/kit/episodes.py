"""Episodes as pure functions of their key.

An episode's classes, its support and query samples and its label order are drawn from a Philox counter-based
generator keyed by SHA-256 of (dataset fingerprint, split, ways, shots, queries per class, seed, episode index, stream).
Nothing here reads or advances global random state (``random``, ``numpy.random``, ``torch``), so model
initialisation, dropout or a method that draws more random numbers than another cannot shift an episode. Only the raw
64-bit Philox output is used (``random_raw``), whose stream NumPy keeps stable across releases.

Label order: the ``ways`` classes are drawn in random order and class ``i`` of the draw gets label ``i``. Support and
query tensors are class-major: ``support_y = [0]*shots + [1]*shots + ...``.

Where the pixels come from: the dataset on the host (``FewShotDataset.tensor``, the default), or a copy of its pixels
on a device (``images``, a :class:`~benchmark.data.DeviceImages`: episodes built there from the same index draws,
bit-identical); the draws, the episodes and the fingerprints are the same either way.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator, Sequence

import numpy as np
import torch

from ..data import DeviceImages, FewShotDataset


def keyed_rng(*key) -> np.random.Generator:
    """A Philox generator whose key is SHA-256 of the JSON of ``key``: same key, same stream, on any machine."""
    digest = hashlib.sha256(json.dumps(key, separators=(",", ":")).encode()).digest()
    return np.random.Generator(np.random.Philox(key=int.from_bytes(digest[:16], "little")))


def draw_without_replacement(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``k`` distinct integers from ``range(n)`` in random order, from raw generator output only."""
    if k > n:
        raise ValueError(f"cannot draw {k} distinct items from {n}")
    return np.argsort(rng.bit_generator.random_raw(n), kind="stable")[:k]


@dataclass(frozen=True)
class EpisodeSpec:
    """What an episode is drawn from: everything but the index."""

    dataset: str  # dataset fingerprint
    split: str
    ways: int
    shots: int
    queries: int
    seed: int
    stream: str = "episodes"

    def key(self, index: int) -> list:
        return [self.dataset, self.split, self.ways, self.shots, self.queries, self.seed, self.stream, int(index)]


class _Shape:
    """Ways and shots of an episode, from its classes and support indices (:class:`Episode`, :class:`QueryHidden`)."""

    @property
    def ways(self) -> int:
        return len(self.classes)

    @property
    def shots(self) -> int:
        return self.support_idx.shape[1]


@dataclass
class Episode(_Shape):
    """One few-shot task. ``classes`` are class indices within ``split``; labels are positions in ``classes``."""

    spec: EpisodeSpec
    index: int
    classes: np.ndarray  # [ways]
    support_idx: np.ndarray  # [ways, shots] positions within each class's members
    query_idx: np.ndarray  # [ways, queries]
    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    @classmethod
    def from_tensors(cls, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                     query_y: torch.Tensor | None = None) -> "Episode":
        """An episode from your own tensors, to call a trained method on (``method.predict(episode)``).

        ``support_x`` ``[n, C, H, W]`` and ``query_x`` ``[m, C, H, W]`` are float images preprocessed as the model's
        training data (see ``method.model_info``: image shape, and the dataset's normalisation: e.g. Omniglot is
        ink = 1.0 on a 0.0 background at 28x28); ``support_y`` ``[n]`` holds labels ``0 .. ways-1``, the same number
        of examples for each. The support set is put in the class-major order methods expect (stable sort by label;
        the logits' column ``k`` is label ``k``). ``query_y`` is optional (default -1: unknown). ValueError on
        mismatched shapes or labels.
        """
        support_y = torch.as_tensor(support_y, dtype=torch.long, device=support_x.device)
        if support_x.ndim != 4 or query_x.ndim != 4 or support_x.shape[1:] != query_x.shape[1:]:
            raise ValueError(f"support_x and query_x must be [n, C, H, W] images of one shape, got "
                             f"{tuple(support_x.shape)} and {tuple(query_x.shape)}")
        if support_y.shape != (len(support_x),):
            raise ValueError(f"support_y must have one label per support image ({len(support_x)}), got "
                             f"shape {tuple(support_y.shape)}")
        counts = torch.bincount(support_y) if len(support_y) and support_y.min() >= 0 else torch.zeros(0)
        if len(counts) == 0 or (counts == 0).any() or (counts != counts[0]).any():
            raise ValueError("support_y must hold labels 0 .. ways-1 with the same number of examples each, got "
                             f"counts {counts.tolist()}")
        ways, shots = len(counts), int(counts[0])
        order = torch.sort(support_y, stable=True).indices
        query_y = (torch.full((len(query_x),), -1, dtype=torch.long, device=query_x.device) if query_y is None
                   else torch.as_tensor(query_y, dtype=torch.long, device=query_x.device))
        spec = EpisodeSpec("user", "user", ways, shots, max(1, len(query_x) // ways), 0, "user")
        return cls(spec, 0, np.arange(ways), np.tile(np.arange(shots), (ways, 1)), np.zeros((ways, 0), np.int64),
                   support_x[order], support_y[order], query_x, query_y)

    def to(self, device: torch.device | str) -> "Episode":
        if self.support_x.device == torch.device(device):
            return self
        return Episode(self.spec, self.index, self.classes, self.support_idx, self.query_idx,
                       self.support_x.to(device), self.support_y.to(device),
                       self.query_x.to(device), self.query_y.to(device))

    def digest(self) -> bytes:
        h = hashlib.sha256()
        for a in (self.classes, self.support_idx, self.query_idx):
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        return h.digest()

    def hidden(self) -> "QueryHidden":
        """This episode as methods see it at evaluation: the support set with its labels, the query images without
        theirs (:class:`QueryHidden`)."""
        return QueryHidden(self)


class QueryLabelsHidden(AttributeError):
    """Raised when a method reads the query labels of an evaluation episode (:class:`QueryHidden`)."""


_LABELS_HIDDEN = ("the query labels of a validation or test episode are hidden: predict from the support set and "
                  "the query images (the harness scores the logits)")


class QueryHidden(_Shape):
    """A validation or test episode as ``predict``/``predict_many`` receive it: support images and labels, query
    images, and no query labels. ``query_y`` and ``query_idx`` (whose rows are the classes) raise
    :class:`QueryLabelsHidden`; the harness scores the returned logits against the labels itself.

    It holds no reference to the labelled :class:`Episode` it was made from (only its support set, query images,
    identity and digest), so nothing reachable from it leads back to the query labels; asking it for anything else
    raises :class:`QueryLabelsHidden` too.

    Queries keep the class-major order of :class:`Episode` (so that every method's numbers stay what they were);
    ``benchmark.check`` fails a method whose logits do not follow its queries when they are reordered."""

    def __init__(self, episode: Episode):
        self.spec, self.index, self.classes = episode.spec, episode.index, episode.classes
        self.support_idx, self.support_x, self.support_y = episode.support_idx, episode.support_x, episode.support_y
        self.query_x = episode.query_x
        self._digest = episode.digest()

    @property
    def query_y(self):
        raise QueryLabelsHidden(_LABELS_HIDDEN)

    query_idx = query_y

    def __getattr__(self, name: str):  # also reached when a property above raises (an AttributeError)
        if name in ("query_y", "query_idx"):
            raise QueryLabelsHidden(_LABELS_HIDDEN)
        raise QueryLabelsHidden(f"an evaluation episode has no {name!r}: it carries the support set and the query "
                                "images only, no reference to the labelled episode (the harness scores the logits)")

    def to(self, device: torch.device | str) -> "QueryHidden":
        if self.support_x.device == torch.device(device):
            return self
        other = copy.copy(self)
        other.support_x, other.support_y = self.support_x.to(device), self.support_y.to(device)
        other.query_x = self.query_x.to(device)
        return other

    def digest(self) -> bytes:
        return self._digest

    def hidden(self) -> "QueryHidden":
        return self


def draw_indices(ds: FewShotDataset, spec: EpisodeSpec, index: int,
                 classes: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classes [ways], support [ways, shots], query [ways, queries]) for episode ``index``.

    With ``classes`` given (e.g. MTL's hard tasks) only the samples are drawn, in that class order.
    """
    rng = keyed_rng(*spec.key(index))
    split = ds.splits[spec.split]
    if classes is None:
        cls = draw_without_replacement(rng, len(split), spec.ways)
    else:
        cls = np.asarray(classes, dtype=np.int64)
        if len(cls) != spec.ways:
            raise ValueError(f"{len(cls)} classes given for a {spec.ways}-way episode")
    per = spec.shots + spec.queries
    picks = np.stack([draw_without_replacement(rng, len(split.members[c]), per) for c in cls])
    return cls, picks[:, :spec.shots], picks[:, spec.shots:]


def make_episode(ds: FewShotDataset, spec: EpisodeSpec, index: int,
                 classes: Sequence[int] | None = None, images: DeviceImages | None = None) -> Episode:
    """Episode ``index`` of ``spec``; its tensors built from ``images`` (on its device) when given, else on the
    host from ``ds``."""
    cls, sup, qry = draw_indices(ds, spec, index, classes)
    ways = len(cls)
    src = ds if images is None else images
    sx = src.tensor(spec.split, np.repeat(cls, spec.shots), sup.reshape(-1))
    qx = src.tensor(spec.split, np.repeat(cls, spec.queries), qry.reshape(-1))
    if images is None:
        sy = torch.arange(ways).repeat_interleave(spec.shots)
        qy = torch.arange(ways).repeat_interleave(spec.queries)
    else:
        sy, qy = images.labels(ways, spec.shots), images.labels(ways, spec.queries)
    return Episode(spec, int(index), cls, sup, qry, sx, sy, qx, qy)


def check_spec(ds: FewShotDataset, split: str, ways: int, shots: int, queries: int) -> None:
    """Raise ValueError with a clear message when such episodes cannot be drawn."""
    if split not in ds.splits:
        raise ValueError(f"dataset {ds.name} has no split {split!r}")
    if ways < 1 or shots < 1 or queries < 1:
        raise ValueError(f"ways, shots and queries must be at least 1 (got {ways}-way {shots}-shot, {queries} queries)")
    sp = ds.splits[split]
    if ways > len(sp):
        raise ValueError(f"{ways}-way episodes need {ways} classes but {ds.name}'s {split} split has {len(sp)}")
    if shots + queries > sp.min_class_size():
        raise ValueError(f"{shots} shots + {queries} queries per class exceed the {sp.min_class_size()} images of the "
                         f"smallest class in {ds.name}'s {split} split")


class EpisodeSet:
    """A fixed, fingerprinted set of ``n`` episodes (validation or test): episode ``i`` is ``make_episode(spec, i)``;
    ``images``: built on that device copy of the pixels (:meth:`gathered_by`)."""

    def __init__(self, ds: FewShotDataset, split: str, ways: int, shots: int, queries: int, seed: int, n: int,
                 stream: str = "eval", images: DeviceImages | None = None):
        check_spec(ds, split, ways, shots, queries)
        self.ds, self.n, self.images = ds, n, images
        self.spec = EpisodeSpec(ds.fingerprint, split, ways, shots, queries, seed, stream)

    def gathered_by(self, images: DeviceImages | None) -> "EpisodeSet":
        """The same set (same episodes, same fingerprint) with its episodes built from ``images`` (None: on the
        host)."""
        other = copy.copy(self)
        other.images = images
        return other

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Episode:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return make_episode(self.ds, self.spec, i, images=self.images)

    def __iter__(self) -> Iterator[Episode]:
        return (self[i] for i in range(self.n))

    def hidden(self, i: int) -> QueryHidden:
        """Episode ``i`` as a method gets it (:class:`QueryHidden`): the labelled episode it is made from is not kept
        anywhere."""
        return self[i].hidden()

    def query_labels(self, i: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The query labels of episode ``i`` (the labels of ``self[i].query_y``, on ``device``), which the harness
        obtains only after the method has predicted: class-major, ``[0]*queries + [1]*queries + ...``, a pure
        function of the episode's key (:func:`make_episode`)."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        return torch.arange(self.spec.ways, device=device).repeat_interleave(self.spec.queries)

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 over the spec and every episode's classes and samples (not the pixels: the dataset fingerprint,
        part of the spec, covers those)."""
        h = hashlib.sha256(json.dumps([*self.spec.key(-1), self.n]).encode())
        for i in range(self.n):
            cls, sup, qry = draw_indices(self.ds, self.spec, i)
            for a in (cls, sup, qry):
                h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        return h.hexdigest()


class OutsideTrainingSplit(AttributeError):
    """Raised when a method asks its :class:`TrainingSampler` for anything beyond its run's training split."""


class _SplitImages:
    """The images of one split's members only: indexing any other image raises :class:`OutsideTrainingSplit`."""

    def __init__(self, images, members: list[np.ndarray]):
        self._images = images
        self._allowed = np.zeros(len(images), dtype=bool)
        for m in members:
            self._allowed[np.asarray(m, dtype=np.int64)] = True
        self.shape, self.ndim = images.shape, images.ndim

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, idx):
        if not self._allowed[idx].all():
            raise OutsideTrainingSplit("an image outside the training split was asked for")
        return self._images[idx]


def split_only(ds: FewShotDataset, split: str) -> FewShotDataset:
    """``ds`` restricted to ``split``: the same name, fingerprint (so the same episodes) and normalisation, one split,
    and pixels served for that split's images only."""
    sp = ds.splits[split]
    return dataclasses.replace(ds, images=_SplitImages(ds.images, sp.members), splits={split: sp}, info={},
                               _fingerprint=ds.fingerprint)


class TaskSampler:
    """Training data for one run: episodes and plain classification batches, each a pure function of its index.

    Methods receive one in their :class:`~methods.base.Context`. Streams are separated by name, so that, for
    example, TADAM's auxiliary batches never share random numbers with its episodes. ``images``: episodes and
    batches built on that device copy of the pixels (the same numbers, already on the device).
    """

    def __init__(self, ds: FewShotDataset, split: str, seed: int, images: DeviceImages | None = None):
        self.ds, self.split, self.seed, self.images = ds, split, seed, images
        self.n_classes = len(ds.splits[split])

    def spec(self, ways: int, shots: int, queries: int, stream: str = "episodes") -> EpisodeSpec:
        check_spec(self.ds, self.split, ways, shots, queries)
        return EpisodeSpec(self.ds.fingerprint, self.split, ways, shots, queries, self.seed, stream)

    def episode(self, index: int, ways: int, shots: int, queries: int, stream: str = "episodes",
                classes: Sequence[int] | None = None) -> Episode:
        """Training episode ``index`` of ``stream``; with ``classes`` given, an episode over exactly those classes
        (in that label order) with samples drawn afresh from the key."""
        return make_episode(self.ds, self.spec(ways, shots, queries, stream), index, classes, self.images)

    def batch(self, index: int, size: int, stream: str = "batches") -> tuple[torch.Tensor, torch.Tensor]:
        """A standard classification batch: ``size`` images drawn uniformly from all images of the split, with
        labels that are class indices within the split (0 .. n_classes-1)."""
        split = self.ds.splits[self.split]
        sizes = np.array([len(m) for m in split.members])
        rng = keyed_rng(self.ds.fingerprint, self.split, self.seed, stream, int(index), size)
        flat = (rng.bit_generator.random_raw(size) % np.uint64(sizes.sum())).astype(np.int64)
        cls = np.searchsorted(np.cumsum(sizes), flat, side="right")
        pos = flat - np.concatenate([[0], np.cumsum(sizes)[:-1]])[cls]
        if self.images is not None:
            return self.images.tensor(self.split, cls, pos), self.images.host_to_device(cls)
        return self.ds.tensor(self.split, cls, pos), torch.from_numpy(cls).long()


class TrainingSampler:
    """The training data a method gets (``ctx.sampler``): episodes and classification batches of its run's training
    split, and nothing else (no dataset, no other split: validation is the harness's job).

    The harness owns it and counts what the method draws through it (``episodes_drawn``, ``batches_drawn``, ``images_drawn``): a run's
    recorded training episodes are the meta-batches the harness hands ``train_step`` plus the episodes counted here,
    never a number the method reports.
    """

    def __init__(self, ds: FewShotDataset, seed: int, split: str = "train", images: DeviceImages | None = None):
        view = split_only(ds, split)
        if images is not None:  # the pixels on the device (the same episodes), with the training split's classes only
            images = copy.copy(images)
            images.ds = view
        self._inner = TaskSampler(view, split, seed, images)
        self.split, self.seed, self.n_classes = split, seed, len(view.splits[split])
        #: images of the training split: one epoch of classifier pretraining is this many images
        self.n_images = sum(len(m) for m in view.splits[split].members)
        self.episodes_drawn, self.batches_drawn, self.images_drawn = 0, 0, 0

    def spec(self, ways: int, shots: int, queries: int, stream: str = "episodes") -> EpisodeSpec:
        return self._inner.spec(ways, shots, queries, stream)

    def episode(self, index: int, ways: int, shots: int, queries: int, stream: str = "episodes",
                classes: Sequence[int] | None = None) -> Episode:
        """Training episode ``index`` of ``stream`` (see :meth:`TaskSampler.episode`); counted."""
        ep = self._inner.episode(index, ways, shots, queries, stream, classes)
        self.episodes_drawn += 1
        return ep

    def batch(self, index: int, size: int, stream: str = "batches") -> tuple[torch.Tensor, torch.Tensor]:
        """A classification batch of the training split (see :meth:`TaskSampler.batch`); its images are counted."""
        out = self._inner.batch(index, size, stream)
        self.batches_drawn += 1
        self.images_drawn += size
        return out

    def __getattr__(self, name: str):
        raise OutsideTrainingSplit(f"the training sampler has no {name!r}: a method gets its run's {self.split} "
                                   "split only (episode, batch, spec, n_classes, n_images), no dataset and no other "
                                   "split; validation and testing are the harness's job")


def uncounted(sampler) -> TaskSampler:
    """The harness's own view of a training sampler: its meta-batches are counted by the harness, not here."""
    return sampler._inner if isinstance(sampler, TrainingSampler) else sampler

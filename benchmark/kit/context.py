"""What the harness hands a method: the :class:`Setting` it is evaluated on and the :class:`Context` it is built with.

:class:`Setting` and :class:`Context` are harness types (``methods.base`` re-exports them for method authors), so
the harness core never imports the methods. The harness builds a run's context in one place
(:func:`benchmark.pipeline.method_context.make_context`): the training sampler (the run's seed, its training split
only, counted by the harness: :class:`~benchmark.kit.episodes.TrainingSampler`), the evaluation seed, the backbone
factory and the services ``ctx.cached`` (an artefact cache under the results directory, so that e.g. MTL's
pretraining is computed once and shared by all runs with the same key), ``ctx.snapshots`` (a computation running
under ``ctx.cached`` hands the harness its progress and reads it back, so that a stopped computation resumes where
it was: :class:`Snapshots`), ``ctx.val_accuracy`` (the harness scores a
method's own validation, e.g. MTL's pretraining checkpoints, on label-hidden validation episodes) and
``ctx.progress``. A method reaches no validation or test data and no query label of either.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .backbones import build_backbone, feature_shape
from .episodes import TrainingSampler


@dataclass(frozen=True)
class Setting:
    """What is evaluated: dataset, ways and shots at test time (queries per class at test time too)."""

    dataset: str
    ways: int
    shots: int
    queries: int = 15

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.ways}-way {self.shots}-shot"


def train_episode_shape(hp, setting: Setting) -> tuple[int, int, int]:
    """(ways, shots, queries) of the training episodes of a method under ``hp`` (its ``Hyper``) for ``setting``:
    ``train_ways`` and ``train_shots``, ``None`` meaning the test setting's, and ``train_queries``. The one statement
    of the rule: :meth:`methods.base.Method.train_shape` gives it, a run's preparation checks that the training split
    holds such episodes and ``benchmark.speed --sampler`` draws them."""
    return (hp.train_ways or setting.ways, hp.train_shots or setting.shots, hp.train_queries)


class Snapshots:
    """``ctx.snapshots``: the progress of a long computation running under ``ctx.cached``, kept by the harness, so that
    a computation stopped part-way (Ctrl-C, SIGTERM, a killed worker) resumes where it was instead of starting again.

    ``save(done, state)``: ``state`` (tensors, numbers, dicts and lists of them; CPU or device tensors) after ``done``
    units of work (e.g. iterations); ``load()``: ``(done, state)`` of the last ``save`` of the same artefact's
    computation in an earlier, stopped attempt (tensors on the host), or None (nothing kept: start from the
    beginning). The harness writes and reads the file, next to the artefact, and removes it once the artefact is
    stored; the method does no I/O. Resuming must give the artefact an uninterrupted computation gives, so ``state``
    is everything the rest of the computation depends on; the random generators' states the harness keeps with each
    snapshot and restores on ``load``.

    This class is what a context without an artefact cache has (no results directory, a saved model rebuilt):
    ``save`` keeps nothing and ``load`` finds nothing. So is the harness's outside a ``ctx.cached`` computation."""

    def save(self, done: int, state: Any) -> None:
        return None

    def load(self) -> tuple[int, Any] | None:
        return None


@dataclass
class Context:
    """What the harness gives a method: the data it may train on, the backbone factory, and services."""

    setting: Setting
    image_shape: tuple[int, int, int]
    backbone_name: str
    sampler: TrainingSampler
    eval_seed: int | None
    device: torch.device
    seed: int
    profile: str
    cached: Callable[[str, dict, Callable[[], Any]], Any] = field(
        default=lambda name, key, fn: fn())  # (name, key, compute) -> value, computed once per key by the harness
    progress: Callable[..., Any] = field(default=None)  # (iterable=None, total=None, desc=str) -> tqdm-like
    #: ``val_accuracy(predict, ways, shots, queries, n, stream)``: the mean query accuracy of ``predict`` (a
    #: label-hidden :class:`~benchmark.kit.episodes.QueryHidden` episode on ``device`` -> query logits) on ``n``
    #: validation episodes of that shape keyed by ``eval_seed`` and ``stream``, scored by the harness
    val_accuracy: Callable[..., float] | None = None
    #: True when the method is rebuilt to load a saved model's state (:func:`benchmark.pipeline.models.load_run`): it must not
    #: compute what that state replaces (e.g. MTL's pretraining); ``sampler`` then only knows ``n_classes`` (of the
    #: training split) and draws nothing, and ``eval_seed`` and ``val_accuracy`` are None.
    restoring: bool = False
    #: the progress of a computation under ``cached``, kept across a stopped attempt (:class:`Snapshots`)
    snapshots: Snapshots = field(default_factory=Snapshots)

    @property
    def val_episodes(self):
        raise AttributeError("a method gets no validation episodes: validation is the harness's job (it validates "
                             "every val_every steps); score a method's own checkpoints with ctx.val_accuracy")

    def backbone(self, *, keep_spatial: bool = False, bn_running_stats: bool = True, name: str | None = None,
                 ) -> nn.Module:
        """A fresh shared backbone (``name`` overrides the run's backbone, e.g. a method's own embedding)."""
        return build_backbone(name or self.backbone_name, self.image_shape[0], keep_spatial=keep_spatial,
                              bn_running_stats=bn_running_stats).to(self.device)

    def feature_shape(self, net: nn.Module) -> tuple[int, ...]:
        return feature_shape(net, self.image_shape)

    def iterate(self, iterable: Iterable | None = None, total: int | None = None, desc: str = ""):
        """Wrap a long loop in the harness's progress bar (a no-op bar when the harness gives none)."""
        if self.progress is None:
            return iterable if iterable is not None else range(total or 0)
        return self.progress(iterable if iterable is not None else range(total or 0), total=total, desc=desc)

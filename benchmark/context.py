"""What the harness hands a method: the :class:`Setting` it is evaluated on, the :class:`Context` it is built with,
the one factory of that context (:func:`make_context`) and the artefact cache it provides.

:class:`Setting` and :class:`Context` are harness types (``methods.base`` re-exports them for method authors), so
the harness core never imports the methods. :func:`make_context` gives a prepared run's method its training
sampler (the run's seed), its fixed validation episodes (``eval_seed``), the backbone factory and the services:
``ctx.cached`` (an :class:`ArtefactCache` under the results directory, so that e.g. MTL's pretraining is computed
once and shared by all runs and measurements with the same key) and ``ctx.progress``. The runner (:mod:`benchmark.runner`) and ``benchmark.speed`` both build their
contexts here.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .backbones import build_backbone, feature_shape
from .episodes import EpisodeSet, TaskSampler
from .files import FileLock, atomic_torch_save
from .store import artefact_dir


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


@dataclass
class Context:
    """What the harness gives a method: the data it may train on, the backbone factory, and services."""

    setting: Setting
    image_shape: tuple[int, int, int]
    backbone_name: str
    sampler: TaskSampler
    val_episodes: EpisodeSet
    device: torch.device
    seed: int
    profile: str
    cached: Callable[[str, dict, Callable[[], Any]], Any] = field(
        default=lambda name, key, fn: fn())  # (name, key, compute) -> value, computed once per key by the harness
    progress: Callable[..., Any] = field(default=None)  # (iterable=None, total=None, desc=str) -> tqdm-like
    #: True when the method is rebuilt to load a saved model's state (:func:`benchmark.models.load_run`): it must not
    #: compute what that state replaces (e.g. MTL's pretraining); ``sampler`` then only knows ``n_classes`` (of the
    #: training split) and draws nothing, and ``val_episodes`` is None.
    restoring: bool = False

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




class ArtefactCache:
    """``cache(name, key, compute)``: the value of ``compute()``, stored once per (name, key, dataset, backbone,
    seed) under ``<results_dir>/cache/`` with the seconds it took. ``log`` lists each use for the run's summary:
    name, file (relative to the results directory), seconds, computed_in_this_run.

    Computed once even when several processes (e.g. Ray workers starting MTL variants at the same time) ask for the
    same artefact: the first takes the artefact's OS file lock (``<name>-<hash>.lock`` beside it) and computes it,
    the others wait for the lock and then read the file."""

    def __init__(self, results_dir: str | Path, dataset_fingerprint: str, backbone: str, seed: int,
                 device: torch.device):
        self.results_dir, self.device = Path(results_dir), device
        self.scope = {"dataset": dataset_fingerprint, "backbone": backbone, "seed": seed}
        self.log: list[dict] = []

    def __call__(self, name: str, key: dict, fn: Callable[[], Any]) -> Any:
        full = {"name": name, "key": key, **self.scope}
        h = hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = artefact_dir(self.results_dir) / f"{name}-{h}.pt"
        computed = False
        if not path.is_file():
            with FileLock(path.with_suffix(".lock")):
                if not path.is_file():  # not computed by the process that held the lock before us
                    computed = True
                    t0 = time.perf_counter()
                    value = fn()
                    secs = time.perf_counter() - t0
                    atomic_torch_save(path, {"value": value, "seconds": secs, "key": full})
        if not computed:
            blob = torch.load(path, map_location=self.device, weights_only=False)
            value, secs = blob["value"], blob["seconds"]
        self.log.append({"name": name, "file": str(path.relative_to(self.results_dir)), "seconds": secs,
                         "computed_in_this_run": computed})
        return value


def make_context(prepared, device: torch.device, results_dir: str | Path | None = None,
                 progress: Callable | None = None) -> Context:
    """The context of ``prepared``'s method: training sampler of the run's seed, the run's validation episodes
    (``cfg.n_val``, ``cfg.eval_seed``), and an :class:`ArtefactCache` under ``results_dir`` as ``ctx.cached``
    (without ``results_dir``: artefacts are computed, not cached)."""
    cfg, ds = prepared.cfg, prepared.dataset
    val_set = EpisodeSet(ds, "val", cfg.ways, cfg.shots, cfg.queries, cfg.eval_seed, cfg.n_val, stream="val")
    extra = {} if results_dir is None else {
        "cached": ArtefactCache(results_dir, ds.fingerprint, cfg.backbone, cfg.seed, device)}
    return Context(setting=prepared.setting, image_shape=ds.image_shape, backbone_name=cfg.backbone,
                           sampler=TaskSampler(ds, "train", cfg.seed), val_episodes=val_set, device=device,
                           seed=cfg.seed, profile=cfg.profile, progress=progress, **extra)

"""The one factory of a method's :class:`~benchmark.kit.context.Context` (:func:`make_context`) and the artefact
cache it provides (:class:`ArtefactCache`): harness services, kept out of the method kit so that the kit never
reaches the records store."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..kit.context import Context
from ..kit.episodes import EpisodeSet, TrainingSampler, split_only
from ..store.files import FileLock, atomic_torch_save
from ..store.folders import artefact_dir
from .guard import suspended, watching


class ArtefactCache:
    """``cache(name, key, compute)``: the value of ``compute()``, stored once per (name, key, dataset, backbone,
    seed) under ``<results_dir>/cache/`` with the seconds it took. ``log`` lists each use for the run's summary:
    name, file (relative to the results directory), seconds, computed_in_this_run.

    ``sampler``: the run's :class:`~benchmark.kit.episodes.TrainingSampler`, whose batch images drawn while
    computing an artefact are logged with it (``images``; stored in the artefact, so a reused one reports them too).

    Computed once even when several processes (e.g. Ray workers starting MTL variants at the same time) ask for the
    same artefact: the first takes the artefact's OS file lock (``<name>-<hash>.lock`` beside it) and computes it,
    the others wait for the lock and then read the file.

    A stored value is read back on the host (``map_location="cpu"``), as the methods' artefacts are made (state
    dicts of CPU tensors, loaded into modules on the run's device by ``load_state_dict``): a value that must stay on
    the host (an RNG state) is never moved to the GPU, and a value reads the same on any device."""

    def __init__(self, results_dir: str | Path, dataset_fingerprint: str, backbone: str, seed: int,
                 device: torch.device, sampler: TrainingSampler | None = None):
        self.results_dir, self.device, self.sampler = Path(results_dir), device, sampler
        self.scope = {"dataset": dataset_fingerprint, "backbone": backbone, "seed": seed}
        self.log: list[dict] = []

    def __call__(self, name: str, key: dict, fn: Callable[[], Any]) -> Any:
        with suspended():  # the harness's own files; the method's ``fn`` is watched again
            return self._value(name, key, fn)

    def _value(self, name: str, key: dict, fn: Callable[[], Any]) -> Any:
        full = {"name": name, "key": key, **self.scope}
        h = hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = artefact_dir(self.results_dir) / f"{name}-{h}.pt"
        computed, images = False, None
        if not path.is_file():
            with FileLock(path.with_suffix(".lock")):
                if not path.is_file():  # not computed by the process that held the lock before us
                    computed = True
                    drawn = self.sampler.images_drawn if self.sampler is not None else None
                    t0 = time.perf_counter()
                    with watching(fn, f"ctx.cached({name!r})"):
                        value = fn()
                    secs = time.perf_counter() - t0
                    if drawn is not None:
                        images = self.sampler.images_drawn - drawn
                    atomic_torch_save(path, {"value": value, "seconds": secs, "key": full, "images": images})
        if not computed:
            blob = torch.load(path, map_location="cpu", weights_only=False)
            value, secs, images = blob["value"], blob["seconds"], blob.get("images")
        self.log.append({"name": name, "file": str(path.relative_to(self.results_dir)), "seconds": secs,
                         "computed_in_this_run": computed, "images": images})
        return value


class ValAccuracy:
    """``ctx.val_accuracy``: the harness scores a method's own validation (e.g. MTL's pretraining checkpoints) on
    fixed validation episodes it hands the method without query labels (:class:`~benchmark.kit.episodes.QueryHidden`),
    drawn label-free; the labels are obtained after ``predict`` returned, and ``predict`` runs watched
    (:func:`~benchmark.pipeline.guard.watching`). It keeps the validation split only (no test split, no training
    split). ``busy`` is True while it runs (``benchmark.check`` tells the harness's reads of the validation split
    from the method's)."""

    def __init__(self, ds, eval_seed: int, device: torch.device):
        self._ds, self.eval_seed, self.device, self.busy = split_only(ds, "val"), eval_seed, device, False

    def __call__(self, predict: Callable, ways: int, shots: int, queries: int, n: int, stream: str) -> float:
        with suspended():  # harness code, called by the method; its ``predict`` is watched again
            return self._score(predict, ways, shots, queries, n, stream)

    def _score(self, predict: Callable, ways: int, shots: int, queries: int, n: int, stream: str) -> float:
        self.busy = True
        try:
            accs = []
            episodes = EpisodeSet(self._ds, "val", ways, shots, queries, self.eval_seed, n, stream=stream)
            for i in range(n):
                with watching(predict, "ctx.val_accuracy's predict"):
                    logits = predict(episodes.hidden(i).to(self.device))
                accs.append((logits.argmax(-1) == episodes.query_labels(i, logits.device)).float().mean().item())
            return float(np.mean(accs))
        finally:
            self.busy = False


def _unwatched(progress: Callable | None) -> Callable | None:
    """The harness's progress-bar factory, run unwatched when a method calls it (``ctx.iterate``)."""
    if progress is None:
        return None

    def bar(*args, **kwargs):
        with suspended():
            return progress(*args, **kwargs)
    return bar


def make_context(prepared, device: torch.device, results_dir: str | Path | None = None,
                 progress: Callable | None = None, images=None) -> Context:
    """The context of ``prepared``'s method: the training sampler of the run's seed (training split only, counted:
    :class:`~benchmark.kit.episodes.TrainingSampler`), the run's ``eval_seed`` and validation scoring service
    (:class:`ValAccuracy`), and an :class:`ArtefactCache` under ``results_dir`` as ``ctx.cached`` (without
    ``results_dir``: artefacts are computed, not cached). The harness's own validation episodes are
    :func:`~benchmark.pipeline.episode_sets.validation_set`'s, never the method's. ``images``: the dataset's pixels on the device
    (:class:`~benchmark.data.DeviceImages`), from which the sampler then builds its episodes (the same episodes)."""
    cfg, ds = prepared.cfg, prepared.dataset
    sampler = TrainingSampler(ds, cfg.seed, images=images)
    extra = {} if results_dir is None else {
        "cached": ArtefactCache(results_dir, ds.fingerprint, cfg.backbone, cfg.seed, device, sampler)}
    return Context(setting=prepared.setting, image_shape=ds.image_shape, backbone_name=cfg.backbone,
                   sampler=sampler, eval_seed=cfg.eval_seed, device=device, seed=cfg.seed, profile=cfg.profile,
                   progress=_unwatched(progress), val_accuracy=ValAccuracy(ds, cfg.eval_seed, device), **extra)

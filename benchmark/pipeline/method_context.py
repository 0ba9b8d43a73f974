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
    name, file (relative to the results directory), seconds, computed_in_this_run, images, resumed_from.

    ``sampler``: the run's :class:`~benchmark.kit.episodes.TrainingSampler`, whose batch images drawn while
    computing an artefact are logged with it (``images``; stored in the artefact, so a reused one reports them too).

    A long computation keeps its progress (``snapshots``, the context's ``ctx.snapshots``: :class:`ArtefactSnapshots`):
    while ``compute`` runs it may hand the cache its state, written atomically beside the artefact
    (``<name>-<hash>.partial.pt``); a computation stopped part-way (Ctrl-C, SIGTERM, a killed worker) and asked for
    again reads it back and resumes from there, and the partial file is removed once the artefact is stored. The log
    entry says from which point it resumed (``resumed_from``: the units of work, e.g. iterations, done before the
    stop; None when it ran from the start or was not computed in this run). A resumed artefact's ``seconds`` and
    ``images`` cover every attempt up to the snapshot it resumed from plus this attempt (the work lost after the
    last snapshot is done again and counted once).

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
        self.snapshots = ArtefactSnapshots(self)
        self._computing: list[_Computing] = []  # the artefacts being computed, innermost last

    def __call__(self, name: str, key: dict, fn: Callable[[], Any]) -> Any:
        with suspended():  # the harness's own files; the method's ``fn`` is watched again
            return self._value(name, key, fn)

    def _value(self, name: str, key: dict, fn: Callable[[], Any]) -> Any:
        full = {"name": name, "key": key, **self.scope}
        h = hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = artefact_dir(self.results_dir) / f"{name}-{h}.pt"
        computed, images, resumed_from = False, None, None
        if not path.is_file():
            with FileLock(path.with_suffix(".lock")):
                if not path.is_file():  # not computed by the process that held the lock before us
                    computed = True
                    job = _Computing(path.with_suffix(".partial.pt"), full, self._drawn())
                    self._computing.append(job)
                    try:
                        with watching(fn, f"ctx.cached({name!r})"):
                            value = fn()
                    finally:
                        self._computing.pop()
                    secs = job.seconds()
                    if job.drawn is not None:
                        images = self.sampler.images_drawn - job.drawn[0]
                    atomic_torch_save(path, {"value": value, "seconds": secs, "key": full, "images": images})
                    job.partial.unlink(missing_ok=True)
                    resumed_from = job.resumed_from
        if not computed:
            blob = torch.load(path, map_location="cpu", weights_only=False)
            value, secs, images = blob["value"], blob["seconds"], blob.get("images")
        self.log.append({"name": name, "file": str(path.relative_to(self.results_dir)), "seconds": secs,
                         "computed_in_this_run": computed, "images": images, "resumed_from": resumed_from})
        return value

    def _drawn(self) -> tuple[int, int] | None:
        """(images, batches) the sampler has counted so far (None without a sampler)."""
        return None if self.sampler is None else (self.sampler.images_drawn, self.sampler.batches_drawn)


class _Computing:
    """An artefact being computed: its partial file, its full key, the sampler's counts when it started (a resumed
    computation adds the counts of the attempt it resumes), the seconds of the earlier attempts up to the snapshot
    it resumed from, and the point it resumed from (None: from the start)."""

    def __init__(self, partial: Path, key: dict, drawn: tuple[int, int] | None):
        self.partial, self.key, self.drawn = partial, key, drawn
        self.t0, self.earlier_seconds, self.resumed_from, self.loaded = time.perf_counter(), 0.0, None, False

    def seconds(self) -> float:
        return self.earlier_seconds + time.perf_counter() - self.t0


class ArtefactSnapshots:
    """``ctx.snapshots`` of a context with an artefact cache (:class:`~benchmark.kit.context.Snapshots`): the
    progress of the artefact the cache is computing (the innermost when one computation asks for another), written
    atomically to its partial file (``<name>-<hash>.partial.pt``, under the artefact's file lock, which the cache
    holds while computing) and read back by the next attempt. Outside a computation ``save`` keeps nothing and
    ``load`` finds nothing.

    A partial file holds ``done``, the state, the artefact's full key (a file of another key is not resumed), the
    seconds spent so far, the random generators' states (the checkpoints' :func:`~benchmark.pipeline.training.rng_state`;
    ``load`` restores them, so that the computation draws on as it would have) and the sampler's images and batches
    counted so far; ``load`` adds those counts back to the
    sampler, so that the artefact's ``images`` (and the sampler's counters) are those of an uninterrupted
    computation. A partial file that cannot be read (another PyTorch's, say) is ignored: the computation starts
    again, as it did before partial files existed."""

    def __init__(self, cache: ArtefactCache):
        self._cache = cache

    def save(self, done: int, state: Any) -> None:
        with suspended():  # the harness's own file, written while the method's computation runs
            cache = self._cache
            if not cache._computing:
                return
            from .training import rng_state

            job, now = cache._computing[-1], cache._drawn()
            drawn = None if job.drawn is None else [now[0] - job.drawn[0], now[1] - job.drawn[1]]
            atomic_torch_save(job.partial, {"done": int(done), "state": state, "key": job.key,
                                            "seconds": job.seconds(), "drawn": drawn,
                                            "rng": rng_state(cache.device)})

    def load(self) -> tuple[int, Any] | None:
        with suspended():
            cache = self._cache
            if not cache._computing:
                return None
            job = cache._computing[-1]
            if job.loaded or not job.partial.is_file():  # read once: a second load would count the images twice
                return None
            job.loaded = True
            try:
                blob = torch.load(job.partial, map_location="cpu", weights_only=False)
            except Exception:  # noqa: BLE001 - an unreadable partial file: start again (see the class docstring)
                return None
            if not isinstance(blob, dict) or blob.get("key") != job.key:
                return None
            from .training import set_rng_state

            set_rng_state(blob["rng"], cache.device)  # the generators as they were at the snapshot
            if job.drawn is not None and blob.get("drawn") is not None:
                cache.sampler.images_drawn += int(blob["drawn"][0])
                cache.sampler.batches_drawn += int(blob["drawn"][1])
            job.earlier_seconds, job.resumed_from = float(blob["seconds"]), int(blob["done"])
            return job.resumed_from, blob["state"]


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
    (:class:`ValAccuracy`), and an :class:`ArtefactCache` under ``results_dir`` as ``ctx.cached``, with its
    ``snapshots`` as ``ctx.snapshots`` (without ``results_dir``: artefacts are computed, not cached, and a snapshot
    keeps nothing). The harness's own validation episodes are
    :func:`~benchmark.pipeline.episode_sets.validation_set`'s, never the method's. ``images``: the dataset's pixels on the device
    (:class:`~benchmark.data.DeviceImages`), from which the sampler then builds its episodes (the same episodes)."""
    cfg, ds = prepared.cfg, prepared.dataset
    sampler = TrainingSampler(ds, cfg.seed, images=images)
    extra = {}
    if results_dir is not None:
        cache = ArtefactCache(results_dir, ds.fingerprint, cfg.backbone, cfg.seed, device, sampler)
        extra = {"cached": cache, "snapshots": cache.snapshots}
    return Context(setting=prepared.setting, image_shape=ds.image_shape, backbone_name=cfg.backbone,
                   sampler=sampler, eval_seed=cfg.eval_seed, device=device, seed=cfg.seed, profile=cfg.profile,
                   progress=_unwatched(progress), val_accuracy=ValAccuracy(ds, cfg.eval_seed, device), **extra)

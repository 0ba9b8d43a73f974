"""The one factory of a method's :class:`~benchmark.kit.context.Context` (:func:`make_context`) and the artefact
cache it provides (:class:`ArtefactCache`): harness services, kept out of the method kit so that the kit never
reaches the records store."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..kit.context import Context
from ..kit.episodes import TaskSampler
from ..store.files import FileLock, atomic_torch_save
from ..store.folders import artefact_dir
from .episode_sets import validation_set


class ArtefactCache:
    """``cache(name, key, compute)``: the value of ``compute()``, stored once per (name, key, dataset, backbone,
    seed) under ``<results_dir>/cache/`` with the seconds it took. ``log`` lists each use for the run's summary:
    name, file (relative to the results directory), seconds, computed_in_this_run.

    Computed once even when several processes (e.g. Ray workers starting MTL variants at the same time) ask for the
    same artefact: the first takes the artefact's OS file lock (``<name>-<hash>.lock`` beside it) and computes it,
    the others wait for the lock and then read the file.

    A stored value is read back on the host (``map_location="cpu"``), as the methods' artefacts are made (state
    dicts of CPU tensors, loaded into modules on the run's device by ``load_state_dict``): a value that must stay on
    the host (an RNG state) is never moved to the GPU, and a value reads the same on any device."""

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
            blob = torch.load(path, map_location="cpu", weights_only=False)
            value, secs = blob["value"], blob["seconds"]
        self.log.append({"name": name, "file": str(path.relative_to(self.results_dir)), "seconds": secs,
                         "computed_in_this_run": computed})
        return value


def make_context(prepared, device: torch.device, results_dir: str | Path | None = None,
                 progress: Callable | None = None, images=None) -> Context:
    """The context of ``prepared``'s method: training sampler of the run's seed, the run's validation episodes
    (``cfg.n_val``, ``cfg.eval_seed``), and an :class:`ArtefactCache` under ``results_dir`` as ``ctx.cached``
    (without ``results_dir``: artefacts are computed, not cached). ``images``: the dataset's pixels on the device
    (:class:`~benchmark.data.DeviceImages`), from which the sampler and the validation set then build their
    episodes (the same episodes)."""
    cfg, ds = prepared.cfg, prepared.dataset
    val_set = validation_set(prepared).gathered_by(images)
    extra = {} if results_dir is None else {
        "cached": ArtefactCache(results_dir, ds.fingerprint, cfg.backbone, cfg.seed, device)}
    return Context(setting=prepared.setting, image_shape=ds.image_shape, backbone_name=cfg.backbone,
                           sampler=TaskSampler(ds, "train", cfg.seed, images), val_episodes=val_set, device=device,
                           seed=cfg.seed, profile=cfg.profile, progress=progress, **extra)

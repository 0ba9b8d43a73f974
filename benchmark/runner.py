"""Meta-train, validate, test and record one run.

A run is (method, dataset, ways, shots, backbone, seed, profile). :func:`run` meta-trains the method on training
episodes drawn by index from the run's seed, validates on a fixed episode set every ``val_every`` steps (one
convergence-curve point each: steps, episodes seen, training seconds, validation accuracy), keeps the checkpoint with
the best validation accuracy, tests it on the fixed test episodes and writes the run folder
(:class:`benchmark.store.RunFolder`), with the best model as ``model.pt`` (:mod:`benchmark.models`) unless
``save_model=False``.

Validation and test episodes depend on ``eval_seed`` (default 0), not on the training seed, so every method and
every seed of a setting is tested on the same episodes, which their fingerprint proves.

Resume: a checkpoint (module and optimiser state, RNG states, step, episodes seen, curve, best state) is written
atomically after each validation and on Ctrl-C. Running the same run again continues from it; since training
episodes are pure functions of their index and the RNG states are restored, the result equals an uninterrupted run's.

Failures and concurrency: a run whose training loss becomes NaN or infinite stops at that step, and a run that
raises stops there; either is recorded as failed in its folder (``failed.json``, plus ``traceback.txt`` for an
exception; :meth:`RunFolder.fail`) and :class:`RunFailed` is raised, so the caller goes on with the other runs.
The process training a run holds its OS file lock (:meth:`RunFolder.lock`); another process that reaches the same
run waits for it (``if_locked="wait"``, then reads the finished run) or skips it (``"skip"``: :class:`Locked`),
so a run is never trained by two processes at once.

One job per module, all re-exported here: :mod:`benchmark.config` (profiles, :class:`RunConfig`, :func:`prepare`
and :class:`PreparedRun`), :mod:`benchmark.machine` (provenance, device, peak memory), :mod:`benchmark.context` (the
method's context and the artefact cache), :mod:`benchmark.training` (training step, evaluation, RNG state, training
loop and checkpoints) and :mod:`benchmark.store` (the run folder).
"""
from __future__ import annotations

import dataclasses
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .config import PROFILES, PreparedRun, Profile, RunConfig, build_hyper, prepare
from .context import ArtefactCache, make_context
from .data import DATASETS
from .episodes import EpisodeSet
from .facts import record_facts
from .machine import PeakMemory, code_version, environment, placement as where, resolve_device
from .models import model_payload
from .statistics import mean_ci95
from .store import RunFolder
from .training import Interrupted, NonFiniteLoss, Trainer, evaluate, seed_everything

__all__ = ["PROFILES", "ArtefactCache", "Interrupted", "Locked", "PeakMemory", "PreparedRun", "Profile", "RunConfig",
           "RunFailed", "build_hyper", "code_version", "environment", "evaluate", "make_context", "prepare",
           "resolve_device", "run", "seed_everything"]


class RunFailed(Exception):
    """A run failed (non-finite loss, or an exception) and was recorded as failed in its folder; ``record`` is what
    ``failed.json`` holds."""

    def __init__(self, run_id: str, record: dict):
        super().__init__(f"{run_id} failed: {record['reason']}")
        self.run_id, self.record = run_id, record


class Locked(Exception):
    """The run is being trained by another process (it holds the run's lock) and ``if_locked="skip"``."""

    def __init__(self, run_id: str, holder: dict):
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        super().__init__(f"{run_id} is being trained by another process ({who}); skipped, re-run the command when "
                         "it has finished")
        self.run_id, self.holder = run_id, holder


def run(cfg: RunConfig, results_dir: Path, device: torch.device, data_dir: str | Path | None = None,
        progress: Callable | None = None, stop_after: int | None = None,
        prepared: PreparedRun | None = None, placement: dict | None = None, if_locked: str = "wait",
        note: Callable[[str], None] | None = None, save_model: bool = True) -> dict:
    """Run (or resume, or skip when finished) one configuration; returns its summary.

    ``prepared``: ``cfg`` as :func:`~benchmark.config.prepare` returned it (then nothing is prepared again and its
    ``data_dir`` is the one recorded); without it the run is prepared here from ``data_dir``.
    ``progress(iterable, total=, desc=)`` wraps loops in progress bars (e.g. ``tqdm``); ``stop_after`` stops after
    that many training steps in this call, leaving a checkpoint (used to test resuming).
    ``placement``: where the run runs, recorded in its summary (default: :func:`benchmark.machine.placement`, the
    sequential executor). ``if_locked``: ``"wait"`` for another process training the same run (then its summary is
    returned) or ``"skip"`` it (:class:`Locked`); ``note(text)`` is told when waiting.
    ``save_model``: keep the best-validation model as ``model.pt`` (its size in the summary's ``model_bytes``).
    Raises :class:`RunFailed` after recording a failure, :class:`Interrupted` on Ctrl-C (checkpoint saved).
    """
    if prepared is not None and prepared.cfg != cfg:
        raise ValueError(f"the prepared run is {prepared.cfg.run_id}, not {cfg.run_id}")
    folder = RunFolder(results_dir, cfg.run_id)
    if folder.is_finished():
        return folder.read_summary()
    lock = folder.lock()
    if not lock.acquire(wait=False):
        holder = lock.holder()
        if if_locked == "skip":
            raise Locked(cfg.run_id, holder)
        if note is not None:
            note(f"{cfg.run_id} is being trained by another process (pid {holder.get('pid', '?')} on "
                 f"{holder.get('host', '?')}); waiting for it")
        try:
            lock.acquire(wait=True)
        except KeyboardInterrupt:
            raise Interrupted("interrupted while waiting for another process's run") from None
    try:
        if folder.is_finished():  # finished by the process we waited for
            return folder.read_summary()
        return _run_locked(cfg, folder, results_dir, device, data_dir, progress, stop_after, prepared,
                           placement or where(device), save_model)
    finally:
        lock.release()


def _run_locked(cfg: RunConfig, folder: RunFolder, results_dir: Path, device: torch.device,
                data_dir: str | Path | None, progress: Callable | None, stop_after: int | None,
                prepared: PreparedRun | None, placement: dict, save_model: bool = True) -> dict:
    """:func:`run` once this process holds the run's lock: failures are recorded and raised as :class:`RunFailed`."""
    seen: dict = {}  # the trainer, once built, for the step a failure happened at
    try:
        return _train_and_test(cfg, folder, results_dir, device, data_dir, progress, stop_after, prepared,
                               placement, seen, save_model)
    except (Interrupted, RunFailed):
        raise
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted while testing {cfg.run_id}; its checkpoint stays, run the same command "
                          "again to resume") from None
    except NonFiniteLoss as e:
        metrics = {k: v if np.isfinite(v) else str(v) for k, v in e.metrics.items()}  # "nan": strict JSON
        record = {"kind": "non_finite_loss", "reason": str(e), "step": e.step, "metrics": metrics,
                  "last_curve_point": e.last_curve_point}
        tb = None
    except Exception as e:  # noqa: BLE001 - any error of one run is recorded, and the sweep goes on
        state = seen["trainer"].state if "trainer" in seen else {}
        record = {"kind": "exception", "reason": f"{type(e).__name__}: {e}".strip().splitlines()[0],
                  "step": state.get("step"),
                  "last_curve_point": state["curve"][-1] if state.get("curve") else None}
        tb = traceback.format_exc()
    record.update(placement=placement, failed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    folder.fail(record, tb)
    raise RunFailed(cfg.run_id, record)


def _train_and_test(cfg: RunConfig, folder: RunFolder, results_dir: Path, device: torch.device,
                    data_dir: str | Path | None, progress: Callable | None, stop_after: int | None,
                    prepared: PreparedRun | None, placement: dict, seen: dict, save_model: bool = True) -> dict:
    if prepared is None:
        prepared = prepare(cfg, data_dir)
    folder.start()
    test_set = EpisodeSet(prepared.dataset, "test", cfg.ways, cfg.shots, cfg.queries, cfg.eval_seed, cfg.n_test,
                          stream="test")
    seed_everything(cfg.seed)
    ctx = make_context(prepared, device, results_dir, progress)
    label = f"{cfg.method} {cfg.ways}w{cfg.shots}s"
    with PeakMemory(device) as mem:
        method = prepared.cls(prepared.hp, ctx).to(device)
        trainer = Trainer(method, prepared.hp, ctx.sampler, ctx.val_episodes, device, folder.checkpoint,
                          dataclasses.asdict(cfg), ctx.cached.log)
        seen["trainer"] = trainer
        trainer.resume()
        trainer.train(progress, f"{label} train", stop_after)
        trainer.restore_best()
        acc, secs = evaluate(method, test_set, device, progress, desc=f"{label} test")
    config, curve, episodes, summary = _records(prepared, trainer, test_set, acc, secs, mem, device)
    summary["placement"] = placement
    summary["model_bytes"] = folder.write_model(model_payload(prepared, method)) if save_model else None
    folder.finish(config, curve, episodes, summary)
    return summary


def _records(prepared: PreparedRun, trainer: Trainer, test_set: EpisodeSet, acc: np.ndarray, secs: np.ndarray,
             mem: PeakMemory, device: torch.device) -> tuple[dict, pd.DataFrame, pd.DataFrame, dict]:
    """The run folder's records: config, curve, test episodes and summary (:class:`~benchmark.store.RunFolder`)."""
    cfg, cls, ds, hp, state, method = (prepared.cfg, prepared.cls, prepared.dataset, prepared.hp, trainer.state,
                                       trainer.method)
    val_set = trainer.val_set
    mean, ci = mean_ci95(acc)
    paper_episodes = cls.paper_train_episodes(prepared.setting)
    config = {**dataclasses.asdict(cfg), "run_id": cfg.run_id, "hyperparameters": dataclasses.asdict(hp),
              "hyperparameter_class": type(hp).__name__, "train_episode_shape": list(trainer.shape),
              "val_spec": dataclasses.asdict(val_set.spec), "test_spec": dataclasses.asdict(test_set.spec),
              "data_dir": str(prepared.data_dir) if prepared.data_dir else None}
    summary = {
        "run_id": cfg.run_id, "method": cfg.method, "family": cls.family, "dataset": cfg.dataset,
        "split": ds.split_name, "default_split": DATASETS[cfg.dataset].default_split,
        "ways": cfg.ways, "shots": cfg.shots, "backbone": cfg.backbone, "profile": cfg.profile, "seed": cfg.seed,
        "mean": 100 * mean, "ci95": 100 * ci, "n_episodes": len(acc), "queries": cfg.queries,
        "train_steps": state["step"], "train_episodes": state["episodes"],
        "train_seconds": state["train_seconds"], "val_seconds": state["val_seconds"],
        "ms_per_train_episode": 1000 * state["train_seconds"] / max(state["episodes"], 1),
        "ms_per_test_episode": 1000 * float(np.mean(secs)),
        "best_step": state["best_step"], "best_val_acc": 100 * state["best_acc"],
        "resumed_at_steps": state.get("resumed_at", []),
        "paper_train_episodes": paper_episodes,
        "budget_fraction": state["episodes"] / paper_episodes if paper_episodes else None,
        "peak_memory_mb": mem.mb, "memory_kind": "cuda_allocated" if device.type == "cuda" else "process_rss",
        "trainable_params": method.trainable_parameters(), "adapted_params": method.adapted_parameters(),
        "device": str(device), "environment": environment(device), "code_version": code_version(),
        "dataset_fingerprint": ds.fingerprint, "dataset_source": ds.source,
        "val_fingerprint": val_set.fingerprint, "test_fingerprint": test_set.fingerprint,
        "cache": trainer.cache_log, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **record_facts(cls, cfg.backbone),
    }
    curve = pd.DataFrame(state["curve"])
    episodes = pd.DataFrame({"episode": np.arange(len(acc)), "accuracy": acc, "adapt_seconds": secs})
    return config, curve, episodes, summary

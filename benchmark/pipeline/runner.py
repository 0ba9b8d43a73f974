"""Meta-train, validate, test and record one run.

A run is (method, dataset, ways, shots, backbone, seed, profile). An executor (:mod:`benchmark.pipeline.executors`)
hands each run to :func:`run_job` as a :class:`RunJob` (the prepared run, the command's :class:`JobTemplate`: where
it writes, the device, lock policy, model saving, execution; where it runs, progress) and gets back an
:class:`Outcome` (done, failed or skipped, and whether this call trained it); :func:`run` is the short form for the
API and the tests. The run meta-trains the method on training episodes drawn by index from the run's seed, validates
on a fixed episode set every ``val_every`` steps (one convergence-curve point each: steps, episodes seen, training
seconds, validation accuracy), keeps the checkpoint with the best validation accuracy, tests it on the fixed test
episodes and writes the run folder (:class:`benchmark.store.folders.RunFolder`), with the best model as ``model.pt``
(:mod:`benchmark.pipeline.models`) unless ``save_model=False``.

Validation and test episodes depend on ``eval_seed`` (default 0), not on the training seed, so every method and
every seed of a setting is tested on the same episodes, which their fingerprint proves.

Resume: a checkpoint (module and optimiser state, RNG states, step, episodes seen, curve, best state) is written
atomically after each validation and on Ctrl-C. Running the same run again continues from it; since training
episodes are pure functions of their index and the RNG states are restored, the result equals an uninterrupted run's.

Failures and concurrency: a run whose training loss becomes NaN or infinite stops at that step, and a run that
raises stops there; either is recorded as failed in its folder (``failed.json``, plus ``traceback.txt`` for an
exception; :meth:`RunFolder.fail`, with :func:`failure_record`) and its outcome says so (:func:`run` raises
:class:`RunFailed`), so the caller goes on with the other runs.
The process training a run holds its OS file lock (:meth:`RunFolder.lock`); another process that reaches the same
run waits for it (``if_locked="wait"``, then reads the finished run) or skips it (``"skip"``: :class:`Locked`),
so a run is never trained by two processes at once.

The method class is looked up in the registry here (:func:`prepare`); the method is built by
:mod:`benchmark.pipeline.builder`, as ``benchmark.speed`` and ``benchmark.check`` build it. The pipeline's public names are those of
:mod:`benchmark.pipeline` (its face), not re-exported here.
"""
from __future__ import annotations

import dataclasses
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..data import DATASETS
from ..kit.episodes import EpisodeSet
from ..store.files import utc_timestamp
from ..store.folders import RunFolder, test_table
from ..store.statistics import at_chance, mean_ci95
from .builder import build_method, method_context
from .config import PreparedRun, RunConfig
from .config import prepare as config_prepare
from .episode_sets import test_set, validation_set
from .execution import Execution, group_size
from .facts import record_facts
from .machine import NondeterministicOps, PeakMemory, code_version, configure_determinism, environment, use_device
from .machine import placement as where
from .models import model_payload
from .prefetch import device_images, gather_on_device
from .steps import count_difference, dynamo_counts, evaluate
from .training import Checkpointing, Interrupted, NonFiniteLoss, Trainer


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


def prepare(cfg: RunConfig, data_dir: str | Path | None = None, positive: bool = False) -> PreparedRun:
    """:func:`benchmark.pipeline.config.prepare` with the method class looked up in the registry by ``cfg.method`` (ValueError
    for an unknown name)."""
    from . import registry

    return config_prepare(cfg, registry.get(cfg.method), data_dir, positive)


@dataclass(frozen=True)
class JobTemplate:
    """What every run of a command shares: where runs are written (``results_dir``), the device, what to do when
    another process holds a run's lock (``if_locked``: "wait" or "skip"), whether to keep each run's model, how to
    execute it (:class:`~benchmark.pipeline.execution.Execution`: prefetch depth, deterministic CUDA, compiled
    modules; recorded in the summary, never part of the run id) and ``stop_after`` (stop after that many training
    steps in this call, leaving a checkpoint; for tests). Small and picklable: a worker process (a Ray task, a process
    of ``--executor processes``) receives it with the run's configuration, and sets its own ``device`` and
    ``results_dir`` with :func:`dataclasses.replace`."""

    results_dir: Path
    device: torch.device
    if_locked: str = "wait"
    save_model: bool = True
    execution: Execution = dataclasses.field(default_factory=Execution)
    stop_after: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "results_dir", Path(self.results_dir))
        if self.if_locked not in ("wait", "skip"):
            raise ValueError(f"if_locked must be 'wait' or 'skip', not {self.if_locked!r}")


@dataclass(frozen=True)
class RunJob:
    """One run's job, everything carrying it out needs: the prepared run (its ``cfg`` is the run's one
    configuration), the command's :class:`JobTemplate`, where the run runs (``placement``, recorded in its summary),
    progress bars (``progress(iterable, total=, desc=, initial=)``) and a ``note(text)`` for messages. An executor
    (:mod:`benchmark.pipeline.executors`) builds one with ``prepared=None`` per process and fills it per run with
    ``dataclasses.replace(job, prepared=...)``; :func:`run_job` carries it out."""

    prepared: PreparedRun | None
    template: JobTemplate
    placement: dict
    progress: Callable | None = None
    note: Callable[[str], None] | None = None

    @property
    def cfg(self) -> RunConfig:
        return self.prepared.cfg

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.template.results_dir, self.cfg.run_id)


@dataclass
class Outcome:
    """What became of one run: ``done`` (``summary``), ``failed`` (``failure``: what ``failed.json`` holds) or
    ``skipped`` (another process is training it; ``note`` says which). ``trained``: a ``done`` run was trained by
    this call (False: it had been finished before, or by another process this call waited for)."""

    run_id: str
    status: str
    summary: dict | None = None
    failure: dict | None = None
    note: str | None = None
    trained: bool = False


def record_failure(folder: RunFolder, record: dict, detail: str | None = None) -> dict:
    """Write a failed run's record (:meth:`RunFolder.fail`) and return it; when even that cannot be written (a full
    disk), the record says so (``unrecorded``: why) and nothing is raised, so the other runs go on. Every executor
    records failures through here."""
    try:
        folder.fail(record, detail)
    except OSError as e:
        return {**record, "unrecorded": _one_line(e)}
    return record


def failure_record(kind: str, reason: str, placement: dict, step: int | None = None,
                   last_curve_point: dict | None = None, **extra) -> dict:
    """What ``failed.json`` holds (:meth:`RunFolder.fail`): the kind (``non_finite_loss``, ``exception``,
    ``task_error``), the reason in one line, the step and the last validation's curve point when known, where it ran
    and when; ``extra`` adds fields (e.g. the step's metrics)."""
    return {"kind": kind, "reason": reason, "step": step, **extra, "last_curve_point": last_curve_point,
            "placement": placement, "failed_at": utc_timestamp()}


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip().splitlines()[0]


def run_job(job: RunJob) -> Outcome:
    """Run (or resume, or read back when finished) one job. A failure (recorded in the run's folder) and a run
    locked by another process (``if_locked="skip"``) are outcomes, not exceptions; Ctrl-C raises
    :class:`Interrupted` after the checkpoint is saved. A failure that cannot even be recorded (the disk is full:
    :meth:`RunFolder.fail` or the run's lock raise OSError) is a failed outcome whose record has ``unrecorded`` (why
    not): the run stays unfinished, never taken as finished, and the same command retries it."""
    try:
        return _run_job(job)
    except OSError as e:
        record = failure_record("exception", _one_line(e), job.placement)
        return Outcome(job.cfg.run_id, "failed", failure={**record, "unrecorded": _one_line(e)})


def _run_job(job: RunJob) -> Outcome:
    run_id, folder = job.cfg.run_id, job.folder
    if folder.is_finished():
        return Outcome(run_id, "done", summary=folder.read_summary())
    lock = folder.lock()
    if not lock.acquire(wait=False):
        holder = lock.holder()
        if job.template.if_locked == "skip":
            return Outcome(run_id, "skipped", note=str(Locked(run_id, holder)))
        if job.note is not None:
            job.note(f"{run_id} is being trained by another process (pid {holder.get('pid', '?')} on "
                     f"{holder.get('host', '?')}); waiting for it")
        try:
            lock.acquire(wait=True)
        except KeyboardInterrupt:
            raise Interrupted("interrupted while waiting for another process's run") from None
    try:
        if folder.is_finished():  # finished by the process we waited for
            return Outcome(run_id, "done", summary=folder.read_summary())
        attempt = _Attempt(job)
        try:
            return Outcome(run_id, "done", summary=attempt.train_and_test(), trained=True)
        except RunFailed as e:
            return Outcome(run_id, "failed", failure=e.record)
    finally:
        lock.release()


#: :func:`run`'s keywords that are :class:`RunJob` fields rather than :class:`JobTemplate` fields
_JOB_KEYWORDS = ("placement", "progress", "note")


def run(what: RunConfig | PreparedRun, results_dir: str | Path, device: torch.device,
        data_dir: str | Path | None = None, **options) -> dict:
    """Run (or resume, or skip when finished) one run; returns its summary. The API's short form of
    :func:`run_job`.

    ``what``: a :class:`RunConfig` (prepared here from ``data_dir``) or a :class:`PreparedRun` as :func:`prepare`
    returned it (used as it is: the run's one configuration is its ``cfg``). ``options``: the other fields of
    :class:`JobTemplate` (``if_locked``, ``save_model``, ``execution``, ``stop_after``) and of :class:`RunJob`
    (``progress``, ``note``, ``placement``: default :func:`benchmark.pipeline.machine.placement`, the sequential
    executor's); TypeError for another keyword.
    Raises :class:`RunFailed` after recording a failure, :class:`Locked` for a run another process trains when
    ``if_locked="skip"``, :class:`Interrupted` on Ctrl-C (checkpoint saved).
    """
    if "prepared" in options:
        raise TypeError("run() takes the PreparedRun as its first argument, not as prepared=")
    job_options = {k: options.pop(k) for k in _JOB_KEYWORDS if k in options}
    template = JobTemplate(Path(results_dir), device, **options)  # TypeError names an unknown keyword
    cfg = what.cfg if isinstance(what, PreparedRun) else what
    folder = RunFolder(results_dir, cfg.run_id)
    if folder.is_finished():  # without preparing it
        return folder.read_summary()
    prepared = what if isinstance(what, PreparedRun) else prepare(what, data_dir)
    job = RunJob(prepared, template, job_options.get("placement") or where(device), job_options.get("progress"),
                 job_options.get("note"))
    out = run_job(job)
    if out.status == "failed":
        raise RunFailed(cfg.run_id, out.failure)
    if out.status == "skipped":
        raise Locked(cfg.run_id, job.folder.lock().holder())
    return out.summary


class _Attempt:
    """One attempt at training and testing a job's run, once this process holds the run's lock; a failure is
    recorded in the run's folder and raised as :class:`RunFailed` (the trainer, once built, tells at which step)."""

    def __init__(self, job: RunJob):
        self.job, self.trainer = job, None
        self.phase = "setting up"  # then "training" (the trainer reports its own interruption) and "testing"

    def train_and_test(self) -> dict:
        job = self.job
        try:
            return self._train_and_test()
        except Interrupted:
            raise
        except KeyboardInterrupt:
            raise Interrupted(interruption_message(job.cfg.run_id, self.phase)) from None
        except NonFiniteLoss as e:
            metrics = {k: v if np.isfinite(v) else str(v) for k, v in e.metrics.items()}  # "nan": strict JSON
            record = failure_record("non_finite_loss", str(e), job.placement, e.step, e.last_curve_point,
                                    metrics=metrics)
            tb = None
        except Exception as e:  # noqa: BLE001 - any error of one run is recorded, and the sweep goes on
            state = self.trainer.state if self.trainer is not None else {}
            record = failure_record("exception", f"{type(e).__name__}: {e}".strip().splitlines()[0], job.placement,
                                    state.get("step"), state["curve"][-1] if state.get("curve") else None)
            tb = traceback.format_exc()
        raise RunFailed(job.cfg.run_id, record_failure(job.folder, record, tb))

    def _train_and_test(self) -> dict:
        job, prepared, t = self.job, self.job.prepared, self.job.template
        device, ex, cfg, folder = t.device, t.execution, prepared.cfg, job.folder
        use_device(device)  # cuda:N the current device: its events, streams and allocator
        determinism = configure_determinism(device, ex.deterministic)  # before any CUDA work of the run
        folder.start()
        # a dataset that fits the run's share of the GPU is copied there once per process and its episodes are built
        # there (the same episodes); nothing is then left to prefetch
        on_device = gather_on_device(prepared.dataset, device, gpu_fraction=job.placement.get("gpu_fraction"))
        images = device_images(prepared.dataset, device) if on_device else None
        tests = test_set(prepared).gathered_by(images)
        ctx = method_context(prepared, device, t.results_dir, job.progress, images)
        label = f"{cfg.method} {cfg.ways}w{cfg.shots}s"
        prefetch = 0 if images is not None else ex.prefetch_for(device)
        # this attempt's execution, kept in the checkpoint's training state (a resumed run lists every attempt).
        # deterministic: CPU kernels are, at a fixed thread count, whatever is asked; on CUDA, when determinism is
        # configured and no operation warns that it lacks a deterministic kernel (then False, with its name)
        attempt = {"prefetch": prefetch, "episodes_on_device": images is not None, "compile": ex.compile,
                   "capture": ex.capture, "compiled": [],
                   "deterministic_requested": ex.deterministic,
                   "deterministic": device.type != "cuda" or bool(determinism["deterministic"]),
                   "nondeterministic_ops": []}
        watch = NondeterministicOps(device.type == "cuda" and ex.deterministic, attempt["nondeterministic_ops"],
                                     lambda: attempt.update(deterministic=False))
        dynamo_before = dynamo_counts()
        with PeakMemory(device) as mem, watch:
            # the one builder's method (compiled with --compile; for CUDA graphs with --capture: Execution's docstring)
            method, attempt["compiled"] = build_method(prepared, ctx, ex.compile, ex.capture)
            self.phase = "training"
            self.trainer = trainer = Trainer(method, prepared.hp, ctx, validation_set(prepared).gathered_by(images),
                                             Checkpointing(folder.checkpoint, dataclasses.asdict(cfg),
                                                           ctx.cached.log), prefetch, cfg.precision)
            trainer.resume()
            attempt["sync_every_step"] = trainer.sync_every_step  # False: steps read at validations (CUDA)
            attempt["from_step"] = trainer.state["step"]
            trainer.state.setdefault("executions", []).append(attempt)
            trainer.train(job.progress, f"{label} train", t.stop_after)
            trainer.restore_best()
            self.phase = "testing"
            attempt["eval_group"] = group_size(method, tests, None, device)  # what evaluate takes (recorded)
            acc, secs = evaluate(method, tests, device, job.progress, desc=f"{label} test", prefetch=prefetch,
                                 precision=cfg.precision)
        # whether anything was compiled in this attempt (Dynamo's frames compiled, graphs made, graph breaks), not
        # only whether compiling was asked for (the process's counters: runs of one process follow each other)
        attempt["dynamo"] = count_difference(dynamo_before, dynamo_counts())
        config, curve, episodes, summary = _records(prepared, trainer, tests, acc, secs, mem, device)
        summary["placement"] = job.placement
        summary["model_bytes"] = folder.write_model(model_payload(prepared, method)) if t.save_model else None
        folder.finish(config, curve, episodes, summary)
        return summary


def interruption_message(run_id: str, phase: str) -> str:
    """What an interrupted attempt says, by where it stopped: while the method was being built (its own preparation
    inside the method, such as MTL's pretraining: a cached artefact's computation keeps its progress through
    ``ctx.snapshots`` and resumes from its last snapshot; artefacts it finished and cached are reused), or while
    training or testing (the checkpoint stays and the run resumes from it)."""
    if phase == "setting up":
        return (f"interrupted while setting up {run_id} (building the method: its pretraining's progress is kept "
                "and resumes from its last snapshot; finished cached artefacts are reused); run the same command "
                "again to resume it")
    return f"interrupted while {phase} {run_id}; its checkpoint stays, run the same command again to resume"


def _execution_facts(attempts: list[dict]) -> dict:
    """The summary's execution fields from the attempts that trained a run (a resumed run has several):
    ``execution`` (the last attempt: prefetch depth, episodes built on the device from its copy of the pixels,
    compiled modules, steps read at each step or at validations, deterministic asked and in force, operations
    without a deterministic kernel), ``execution_attempts`` (all of them) and ``deterministic`` (every attempt
    was, the per-run leaderboard's column)."""
    if not attempts:
        return {"execution": None, "execution_attempts": [], "deterministic": None}
    ops = sorted({op for a in attempts for op in a.get("nondeterministic_ops") or []})
    last = {**attempts[-1], "nondeterministic_ops": ops}
    return {"execution": last, "execution_attempts": attempts,
            "deterministic": all(a.get("deterministic", False) for a in attempts)}


def _compute_facts(flops: dict | None) -> dict:
    """The summary's compute fields from the training state's ``flops`` (counted on one step, the first the run
    trained): ``flops_per_train_episode`` (forward and backward FLOPs of that step over the training episodes it
    consumed; None when it consumed none, e.g. the transfer baselines, or for a checkpoint older than the count) and
    ``flops_counted_step``."""
    if not flops:
        return {"flops_per_train_episode": None, "flops_counted_step": None}
    per = flops["flops"] / flops["episodes"] if flops.get("episodes") else None
    return {"flops_per_train_episode": per, "flops_counted_step": flops["step"]}


def _records(prepared: PreparedRun, trainer: Trainer, tests: EpisodeSet, acc: np.ndarray, secs: np.ndarray,
             mem: PeakMemory, device: torch.device) -> tuple[dict, pd.DataFrame, pd.DataFrame, dict]:
    """The run folder's records: config, curve, test episodes and summary (:class:`~benchmark.store.folders.RunFolder`)."""
    cfg, cls, ds, hp, state, method = (prepared.cfg, prepared.cls, prepared.dataset, prepared.hp, trainer.state,
                                       trainer.method)
    val_set = trainer.val_set
    mean, ci = mean_ci95(acc)
    paper_episodes = cls.paper_train_episodes(prepared.setting)
    config = {**dataclasses.asdict(cfg), "run_id": cfg.run_id, "hyperparameters": dataclasses.asdict(hp),
              "hyperparameter_class": type(hp).__name__, "train_episode_shape": list(trainer.batches.shape),
              "val_spec": dataclasses.asdict(val_set.spec), "test_spec": dataclasses.asdict(tests.spec),
              "data_dir": str(prepared.data_dir) if prepared.data_dir else None}
    summary = {
        "run_id": cfg.run_id, "method": cfg.method, "family": cls.family, "dataset": cfg.dataset,
        "split": ds.split_name, "default_split": DATASETS[cfg.dataset].default_split,
        "ways": cfg.ways, "shots": cfg.shots, "backbone": cfg.backbone, "profile": cfg.profile, "seed": cfg.seed,
        "mean": 100 * mean, "ci95": 100 * ci, "n_episodes": len(acc), "queries": cfg.queries,
        "at_chance": at_chance(acc, cfg.ways),  # finite loss, test accuracy at 100/ways: diverged? (the report notes it)
        "train_steps": state["step"], "train_episodes": state["episodes"], "train_images": state.get("images"),
        **_compute_facts(state.get("flops")), "transductive": cls.is_transductive(hp),
        "train_seconds": state["train_seconds"], "val_seconds": state["val_seconds"],
        "ms_per_train_episode": 1000 * state["train_seconds"] / max(state["episodes"], 1),
        "ms_per_test_episode": 1000 * float(np.mean(secs)),
        "best_step": state["best_step"], "best_val_acc": 100 * state["best_acc"],
        "resumed_at_steps": state.get("resumed_at", []),
        "paper_train_episodes": paper_episodes,
        "budget_fraction": state["episodes"] / paper_episodes if paper_episodes else None,
        "peak_memory_mb": mem.mb, "memory_kind": "cuda_allocated" if device.type == "cuda" else "process_rss",
        # the peak minus the level when the run began (memory_kind's measure): independent of the run's place in a job
        "peak_memory_increase_mb": mem.increase_mb,
        "trainable_params": method.trainable_parameters(), "adapted_params": method.adapted_parameters(),
        "device": str(device), "environment": environment(device), "code_version": code_version(),
        "precision": cfg.precision, **_execution_facts(state.get("executions") or []),
        "dataset_fingerprint": ds.fingerprint, "dataset_source": ds.source,
        "val_fingerprint": val_set.fingerprint, "test_fingerprint": tests.fingerprint,
        "cache": trainer.cache_log, "finished_at": utc_timestamp(),
        **record_facts(cls, cfg.backbone, hp),
    }
    curve = pd.DataFrame(state["curve"])
    episodes = test_table(acc, secs)
    return config, curve, episodes, summary

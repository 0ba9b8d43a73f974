"""Meta-training: the training loop with its validations, best state and checkpoints (:class:`Trainer`), the
training state a checkpoint keeps and the RNG states it restores.

:class:`Trainer` meta-trains a method on training episodes drawn by index, validates every ``val_every`` steps (one
convergence-curve point each: steps, episodes seen, training seconds, validation accuracy and the mean training
metrics since the last point), keeps the state with the best validation accuracy, and writes a checkpoint (module and
optimiser state, RNG states, the training state below) atomically after each validation and when stopped. A step
whose loss is NaN or infinite stops training (:class:`NonFiniteLoss`; the runner records the run as failed). Training
episodes are pure functions of their index and the RNG states are restored, so a resumed run equals an uninterrupted
one.

Its steps and validations are :mod:`benchmark.pipeline.steps`' timed step and evaluation pass (shared with
``benchmark.speed`` and ``benchmark.check``); the names of that module that were first defined here stay importable
from here. For a GPU: ``prefetch`` draws meta-batches and validation groups ahead on a background thread
(:mod:`benchmark.pipeline.prefetch`; 0, the default, draws them when needed) and ``precision`` ("fp32", the default,
or "bf16") sets the autocast of the steps and validations; neither changes anything on the CPU at its default.
On CUDA the trainer does not wait for the GPU after each step (:func:`sync_every_step_default`): the steps' metrics,
times (CUDA events) and non-finite check are read at each validation and checkpoint, giving the eager path's records.
"""
from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..kit.episodes import Episode, EpisodeSet
from ..store.files import atomic_torch_save
from ..store.statistics import mean_ci95
from .execution import PRECISIONS, group_size  # noqa: F401 - re-exported
from .prefetch import prefetched

# the step and the evaluation pass are .steps'; those of its names that commands, tests and plugins import from this
# module stay importable here
from .steps import (  # noqa: F401 - compile_method, count_difference, dynamo_counts, ...: re-exported
    MetaBatches,
    StepResult,
    autocast,
    compile_method,
    count_difference,
    counted_step,
    draw_episodes,
    drawn,
    dynamo_counts,
    evaluate,
    flop_counter,
    meta_batch_size,
    seed_everything,
    synchronize,
    timed_step,
)


class Interrupted(Exception):
    """Raised after the checkpoint is saved when a run is stopped early (Ctrl-C or ``stop_after``)."""


class NonFiniteLoss(Exception):
    """Raised when a training step's loss is NaN or infinite: training stops at that step (the checkpoint of the last
    validation stays as it was). ``step`` is the number of the step (1-based, as the curve counts), ``metrics`` the
    step's training metrics, ``last_curve_point`` the last validation's curve row (None before the first)."""

    def __init__(self, step: int, metrics: dict, last_curve_point: dict | None):
        bad = ", ".join(f"{k}={v}" for k, v in metrics.items() if not np.isfinite(v))
        super().__init__(f"non-finite training loss at step {step} ({bad})")
        self.step, self.metrics, self.last_curve_point = step, metrics, last_curve_point


class TasksMisreported(ValueError):
    """A method's ``train_step`` still reports a ``tasks`` metric (the old contract) that differs from the training
    episodes the harness counted for the step (:meth:`Trainer.step`). A ValueError, so that a caller catching
    ValueError catches it."""


def non_finite(metrics: dict) -> bool:
    """Whether a step's loss (any metric whose name contains ``loss``; every metric when none does) is NaN or
    infinite."""
    keys = [k for k in metrics if "loss" in k] or list(metrics)
    return any(not np.isfinite(float(metrics[k])) for k in keys)


# ------------------------------------------------------------------------------------------------ random state
def rng_state(device: torch.device | str | None = None) -> dict:
    """The random states a checkpoint keeps: the CPU generator's, NumPy's, Python's and, on CUDA, the generator of
    the run's own ``device`` only (``cuda``: its state, ``cuda_index``: its index), so that a checkpoint resumes on
    a machine that shows fewer GPUs than the one that wrote it."""
    out = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
           "cuda": None}
    if device is not None and torch.device(device).type == "cuda":
        index = _cuda_index(device)
        out.update(cuda=torch.cuda.get_rng_state(index), cuda_index=index)
    return out


def _cuda_index(device: torch.device | str) -> int:
    """The index of a CUDA device (``cuda`` without one: the current device)."""
    device = torch.device(device)
    return torch.cuda.current_device() if device.index is None else device.index


def set_rng_state(s: dict, device: torch.device | str | None = None) -> None:
    """Restore :func:`rng_state`'s states; the CUDA state goes to the run's ``device`` (a CUDA run) and is left
    out elsewhere. Torch keeps every generator's state as a CPU ``ByteTensor``; states that were moved to a device on
    the way (a checkpoint loaded onto a GPU) are brought back to the host first, since ``torch.set_rng_state`` and
    ``torch.cuda.set_rng_state`` refuse them there. A checkpoint written before only the run's device's state was
    kept holds a list of every visible GPU's state: the entry of the run's device is taken (the one it wrote)."""
    torch.set_rng_state(s["torch"].cpu())
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    state = s.get("cuda")
    if state is None or device is None or torch.device(device).type != "cuda":
        return
    index = _cuda_index(device)
    if isinstance(state, (list, tuple)):  # the older format: every GPU's state, by index
        state = state[index] if index < len(state) else None
    if state is not None:
        torch.cuda.set_rng_state(state.cpu(), index)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint as :meth:`Trainer.save` wrote it, loaded on the host (``map_location="cpu"``) whatever the run's
    device: the RNG states must stay CPU tensors (``torch.set_rng_state`` refuses a GPU tensor), and the module and
    optimiser states reach the run's device when they are loaded into it (``load_state_dict`` copies into the
    module's tensors; an optimiser casts its state to its parameters' device)."""
    return torch.load(path, map_location="cpu", weights_only=False)


# ------------------------------------------------------------------------------------------------ the training loop
def sync_every_step_default(device: torch.device | str) -> bool:
    """Whether the trainer reads each training step's metrics and time as it ends (eager) or at the next validation
    or checkpoint (deferred): eager on the CPU, where it costs nothing and nothing changes; deferred on CUDA, where
    reading a value waits for the GPU to drain its queue after every step. The one place this is decided."""
    return torch.device(device).type != "cuda"


def _host_values(steps: list[dict]) -> list[dict]:
    """The steps' metrics with every tensor value read as a Python number, in few transfers (one per tensor dtype
    and device: the values are stacked there and copied once); each number is ``float(v)``'s for a floating tensor
    (a float32 value is exact in a Python float), so accounting them gives the eager path's sums."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for metrics in steps:
        for v in metrics.values():
            if isinstance(v, torch.Tensor):
                groups.setdefault((v.dtype, v.device), []).append(v.detach().reshape(()))
    read = {key: iter(torch.stack(ts).cpu().tolist()) for key, ts in groups.items()}
    return [{k: next(read[(v.dtype, v.device)]) if isinstance(v, torch.Tensor) else v for k, v in m.items()}
            for m in steps]


def new_state() -> dict:
    """The training state a checkpoint keeps (besides the method's): progress, timings, curve, best state, the
    training metrics summed since the last curve point (``metric_sums``: metric name -> sum over the steps since
    then; ``metric_count``: those steps), the cache log, the classification-batch images the method drew through
    its sampler in its training steps (``images``) and the compute counted on one step (``flops``: step, FLOPs,
    episodes, optimiser steps; None until counted)."""
    return {"step": 0, "episodes": 0, "train_seconds": 0.0, "val_seconds": 0.0, "curve": [], "best_acc": -1.0,
            "best_step": 0, "best_state": None, "metric_sums": {}, "metric_count": 0, "cache_log": [], "images": 0,
            "flops": None}


#: training-state keys renamed since checkpoints were first written: old name -> new name
_RENAMED_STATE_KEYS = {"acc_sum": "metric_sums", "acc_n": "metric_count"}


def upgrade_state(state: dict) -> dict:
    """A checkpoint's training state under the current key names (a checkpoint written before a rename resumes)."""
    for old, new in _RENAMED_STATE_KEYS.items():
        if old in state:
            value = state.pop(old)
            state.setdefault(new, value)
    state.setdefault("images", 0)  # checkpoints written before the harness counted images and FLOPs
    state.setdefault("flops", None)
    return state


@dataclass
class Checkpointing:
    """Where a :class:`Trainer` writes its checkpoint (``path``, the resume file) and what the checkpoint keeps
    besides the training state: the run's ``config`` (stored in it) and the run's artefact-cache log (``cache_log``,
    a list the trainer extends on resume, so it is kept across resumes)."""

    path: Path
    config: dict = field(default_factory=dict)
    cache_log: list = field(default_factory=list)


class Trainer:
    """Meta-trains ``method`` under ``hp`` (``train_steps``, ``meta_batch``, ``val_every``) on the training episodes
    of ``ctx`` (the method's :class:`~benchmark.kit.context.Context`: ``ctx.sampler``), validating on
    ``val_set`` (the harness's validation episodes, never the method's), on ``ctx.device``; ``checkpoint`` says where it resumes from and saves to
    (:class:`Checkpointing`). ``prefetch``: training meta-batches and validation groups drawn (and moved to the
    device) that many ahead by a background thread (:mod:`benchmark.pipeline.prefetch`; 0: none;
    :func:`~benchmark.pipeline.prefetch.default_prefetch` gives a device's default); results are the same either way.
    ``precision``: "fp32" or "bf16", the autocast of the training steps and the validations (:func:`autocast`).

    ``sync_every_step`` (None: :func:`sync_every_step_default`, eager on the CPU and deferred on CUDA): eager reads
    each step's metrics and time as the step ends and stops at a non-finite loss there. Deferred keeps the steps'
    results as they came (metrics a method returns as tensors stay on the device; on CUDA the times are CUDA events)
    and reads them once, at the next validation or checkpoint: they are then accounted step by step, in order, by the
    same code as the eager path (:meth:`_account` and :func:`non_finite`), so the curve, its metrics, the first
    non-finite step (with its metrics and the last curve point) and the checkpoints are the eager path's. A
    non-finite loss is found before anything is validated or saved, so the checkpoint kept is the last good
    validation's, as in the eager path; only the steps run past the bad one before that (never recorded) differ."""

    def __init__(self, method, hp, ctx, val_set: EpisodeSet, checkpoint: Checkpointing, prefetch: int = 0,
                 precision: str = "fp32",
                 sync_every_step: bool | None = None):
        self.method, self.hp, self.sampler, self.val_set = method, hp, ctx.sampler, val_set
        self.device = ctx.device
        self.checkpoint, self.config, self.cache_log = checkpoint.path, checkpoint.config, checkpoint.cache_log
        self.prefetch = int(prefetch)
        autocast(self.device, precision)  # ValueError now on an unknown name
        self.precision = precision
        self.sync_every_step = sync_every_step_default(self.device) if sync_every_step is None else bool(sync_every_step)
        self.batches = MetaBatches.of(method, hp)  # what each step is handed
        self.state = new_state()
        self._pending: list[tuple[int, StepResult]] = []  # deferred: (step index, result) not yet accounted
        self._drawn_in_init = drawn(self.sampler)[0]  # episodes the method drew while being built

    def resume(self) -> None:
        """Continue from the checkpoint when there is one: method, training state and RNG states."""
        if self.checkpoint.is_file():
            ck = load_checkpoint(self.checkpoint)  # on the host: see load_checkpoint
            self.method.load_training_state(ck["method"])
            self.state = upgrade_state(ck["state"])
            set_rng_state(ck["rng"], self.device)
            self.state.setdefault("resumed_at", []).append(self.state["step"])  # provenance: where it resumed
        else:
            self.state["episodes"] += self._drawn_in_init
        self.cache_log.extend(self.state.get("cache_log", []))

    def save(self) -> None:
        self.settle()  # a deferred non-finite loss is raised here, before anything is written
        self.state["cache_log"] = self.cache_log
        atomic_torch_save(self.checkpoint, {"method": self.method.training_state(), "state": self.state,
                                            "rng": rng_state(self.device), "config": self.config})

    def train(self, progress: Callable | None = None, desc: str = "train", stop_after: int | None = None) -> None:
        """Train from the current step to ``hp.train_steps``; ``stop_after`` steps in this call at most (then
        :class:`Interrupted`, as on Ctrl-C, after saving the checkpoint)."""
        state, total = self.state, self.hp.train_steps
        steps = range(state["step"], total)
        bar = progress(steps, total=total, desc=desc, initial=state["step"]) if progress else steps
        if stop_after is not None:  # nothing past the stop is drawn
            steps = range(state["step"], min(total, state["step"] + max(1, stop_after)))

        def draw(step: int, dev: torch.device) -> list[Episode]:
            return self.batches.draw(self.sampler, step, dev)

        try:
            with prefetched(draw, steps, self.prefetch, self.device) as batches:
                for done, step in enumerate(bar, 1):
                    episodes = batches.get(step)
                    r = self.step(episodes, step)
                    if self.sync_every_step:
                        self._check_and_account(step, r)
                    else:
                        self._pending.append((step, r))
                    state["step"] = step + 1
                    if state["step"] % self.hp.val_every == 0 or state["step"] == total:
                        self.validate(bar)
                    if stop_after is not None and done >= stop_after and state["step"] < total:
                        self.save()
                        raise Interrupted(f"stopped after step {state['step']}")
        except KeyboardInterrupt:
            self.save()
            raise Interrupted(f"interrupted at step {state['step']} of {total}; "
                              "run the same command again to resume") from None
        except (Interrupted, NonFiniteLoss):
            raise
        except Exception as e:
            self._settle_after(e)  # a deferred non-finite loss before the error is the run's failure
            raise
        finally:
            if hasattr(bar, "close"):
                bar.close()

    def _check_and_account(self, step: int, r: StepResult) -> None:
        """Stop at a non-finite loss (:class:`NonFiniteLoss`, naming step ``step + 1``), else account the step."""
        if non_finite(r.metrics):
            raise NonFiniteLoss(step + 1, {k: float(v) for k, v in r.metrics.items()},
                                self.state["curve"][-1] if self.state["curve"] else None)
        self._account(r)

    def settle(self) -> None:
        """Deferred mode: read the steps run since the last validation or checkpoint (one synchronisation) and
        account them in order as the eager path does, raising :class:`NonFiniteLoss` at the first non-finite loss.
        Nothing to do in the eager mode."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        synchronize(self.device)
        values = _host_values([r.metrics for _, r in pending])
        for (step, r), metrics in zip(pending, values):
            self._check_and_account(step, dataclasses.replace(r, metrics=metrics, seconds=r.elapsed(),
                                                                  events=None))

    def _settle_after(self, error: Exception) -> None:
        """After a step raised: a deferred non-finite loss before it is raised instead (the eager path would have
        stopped there); nothing else of the pending steps is needed (the run fails)."""
        try:
            self.settle()
        except NonFiniteLoss as bad:
            raise bad from error
        except Exception:  # noqa: BLE001 - the device may be unusable after the error; the error itself is raised
            pass

    def step(self, episodes: list[Episode], step: int) -> StepResult:
        """One timed training step; ``tasks``: the meta-batch handed over plus the episodes the method drew through
        its counting sampler during the step. The first step a run trains also counts its FLOPs and optimiser steps
        (kept in the training state). A ``tasks`` metric the method reports that differs from the count is an
        error (:class:`TasksMisreported`)."""
        state = self.state
        r, images = counted_step(self.method, self.sampler, episodes, step, self.device, self.precision,
                                 sync=self.sync_every_step, count_flops=state["flops"] is None)
        state["images"] += images
        if r.reported_tasks is not None and r.reported_tasks != r.tasks:
            raise TasksMisreported(f"{self.method.name}'s train_step reports tasks={r.reported_tasks}, but the step "
                                   f"consumed {r.tasks} training episodes ({len(episodes)} handed over, "
                                   f"{r.tasks - len(episodes)} drawn through ctx.sampler); the harness counts them "
                                   "itself: drop 'tasks'")
        if r.flops is not None:
            state["flops"] = {"step": step, "flops": int(r.flops), "episodes": r.tasks,
                              "optimizer_steps": r.optimizer_steps}
        return r

    def _account(self, r: StepResult) -> None:
        state = self.state
        state["train_seconds"] += r.seconds
        state["episodes"] += r.tasks
        for k, v in r.metrics.items():
            state["metric_sums"][k] = state["metric_sums"].get(k, 0.0) + float(v)
        state["metric_count"] += 1

    def validate(self, bar=None) -> None:
        """One curve point: validation accuracy now, and the mean training metrics since the last point; keeps the
        best state, then saves the checkpoint."""
        self.settle()  # deferred steps are accounted (or a non-finite loss raised) before the point is made
        state = self.state
        t1 = time.perf_counter()
        acc, _ = evaluate(self.method, self.val_set, self.device, prefetch=self.prefetch,
                          precision=self.precision)
        state["val_seconds"] += time.perf_counter() - t1
        m, ci = mean_ci95(acc)
        row = {"step": state["step"], "episodes": state["episodes"],
               "train_seconds": round(state["train_seconds"], 4), "val_acc": 100 * m, "val_ci95": 100 * ci}
        row.update({f"train_{k}": v / state["metric_count"] for k, v in state["metric_sums"].items()})
        state["curve"].append(row)
        state["metric_sums"], state["metric_count"] = {}, 0
        if m > state["best_acc"]:
            state["best_acc"], state["best_step"] = m, state["step"]
            state["best_state"] = {k: v.detach().clone() for k, v in self.method.state_dict().items()}
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(val=f"{100 * m:.1f}%", best=f"{100 * state['best_acc']:.1f}%")
        self.save()

    def restore_best(self) -> None:
        """Load the state with the best validation accuracy (none when no validation ran)."""
        if self.state["best_state"] is not None:
            self.method.load_state_dict(self.state["best_state"])

"""Meta-training and evaluation: the timed training step, the evaluation loop, RNG state and the training loop with
its validations, best state and checkpoints.

:func:`timed_step` and :func:`evaluate` are the one implementation of a timed training step and of an evaluation
pass; the runner (:class:`Trainer`, :mod:`benchmark.pipeline.runner`) and ``benchmark.speed`` both use them, so their
figures measure the same thing.

:class:`Trainer` meta-trains a method on training episodes drawn by index, validates every ``val_every`` steps (one
convergence-curve point each: steps, episodes seen, training seconds, validation accuracy and the mean training
metrics since the last point), keeps the state with the best validation accuracy, and writes a checkpoint (module and
optimiser state, RNG states, the training state below) atomically after each validation and when stopped. A step
whose loss is NaN or infinite stops training (:class:`NonFiniteLoss`; the runner records the run as failed). Training
episodes are pure functions of their index and the RNG states are restored, so a resumed run equals an uninterrupted
one.

For a GPU: ``prefetch`` (:class:`Trainer`, :func:`evaluate`) draws meta-batches and evaluation groups ahead on a
background thread (:mod:`benchmark.pipeline.prefetch`; 0, the default, draws them when needed), ``precision`` ("fp32", the
default, or "bf16": :func:`autocast`) sets the autocast of the steps and evaluations, and :func:`group_size` sizes
evaluation groups by the device's total memory on CUDA (a fixed ladder). None of them changes anything on the CPU at their defaults.
On CUDA the trainer does not wait for the GPU after each step (:func:`sync_every_step_default`): the steps' metrics,
times (CUDA events) and non-finite check are read at each validation and checkpoint, giving the eager path's records.
"""
from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..kit.episodes import Episode, EpisodeSet, QueryHidden, TaskSampler, uncounted
from ..store.files import atomic_torch_save
from ..store.statistics import mean_ci95
from .execution import CAPTURE_MODE, PRECISIONS, check_precision, group_size  # noqa: F401 - PRECISIONS re-exported
from .guard import watching
from .prefetch import prefetched


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


def non_finite(metrics: dict) -> bool:
    """Whether a step's loss (any metric whose name contains ``loss``; every metric when none does) is NaN or
    infinite."""
    keys = [k for k in metrics if "loss" in k] or list(metrics)
    return any(not np.isfinite(float(metrics[k])) for k in keys)


# ------------------------------------------------------------------------------------------------ random state
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


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


# ------------------------------------------------------------------------------------------------ one step, one pass
def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def draw_episodes(sampler: TaskSampler, step: int, meta_batch: int, shape: tuple[int, int, int],
                  device: torch.device) -> list[Episode]:
    """The meta-batch of training step ``step``: episodes ``step * meta_batch + j`` of shape (ways, shots, queries).
    Drawn by the harness (not counted by a :class:`~benchmark.kit.episodes.TrainingSampler`: the harness counts the
    meta-batch it hands the method)."""
    ways, shots, queries = shape
    source = uncounted(sampler)
    return [source.episode(step * meta_batch + j, ways, shots, queries).to(device) for j in range(meta_batch)]


def meta_batch_size(method, hp) -> int:
    """Episodes the harness hands ``method.train_step`` per step: ``hp.meta_batch``, or none for a method that
    meta-trains on no episode (:attr:`~methods.base.Method.meta_trains` False, e.g. the transfer baselines)."""
    return hp.meta_batch if getattr(method, "meta_trains", True) else 0


@dataclass
class StepResult:
    metrics: dict  # the method's training metrics (floats, or scalar tensors a method returned), without ``tasks``
    tasks: int  # training episodes the step consumed, counted by the harness (set by the caller; see :class:`Trainer`)
    seconds: float | None  # None when the step's time is read later (``events``)
    events: tuple | None = None  # deferred timing on CUDA: (start, end) CUDA events recorded around the step
    reported_tasks: int | None = None  # a ``tasks`` metric the method still returns (old contract), else None
    flops: int | None = None  # forward+backward FLOPs of the step when counted (``count_flops``)
    optimizer_steps: int | None = None  # ``torch.optim`` optimiser steps the step took, when counted

    def elapsed(self) -> float:
        """The step's seconds; with ``events``, once the device has run past the end event (a synchronisation)."""
        if self.events is None:
            return self.seconds
        start, end = self.events
        return start.elapsed_time(end) / 1000.0


def sync_every_step_default(device: torch.device | str) -> bool:
    """Whether the trainer reads each training step's metrics and time as it ends (eager) or at the next validation
    or checkpoint (deferred): eager on the CPU, where it costs nothing and nothing changes; deferred on CUDA, where
    reading a value waits for the GPU to drain its queue after every step. The one place this is decided."""
    return torch.device(device).type != "cuda"


class OptimizerSteps:
    """Counts ``torch.optim`` optimiser steps while active (a global post-step hook), e.g. over one training step."""

    def __init__(self):
        self.n, self._handle = 0, None

    def _hook(self, *args) -> None:
        self.n += 1

    def __enter__(self) -> "OptimizerSteps":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()



def _prod(values) -> int:
    n = 1
    for v in values:
        n *= int(v)
    return n


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, **_kwargs) -> int:
    """FLOPs of ``aten.convolution_backward`` from its shapes, grouped convolutions counted right: each gradient
    asked for (``output_mask``: input, weight) costs what the forward convolution cost, ``2 x prod(weight shape) x
    batch x prod(the spatial shape the weights slide over)``, where the weight's shape already holds the channels
    per group. PyTorch's own formula ignores ``groups`` in the weight gradient and so counts a grouped
    convolution's ``groups`` times over; ``torch.func.vmap`` turns per-task weights into one grouped convolution,
    so MAML's vectorised meta-batch counted up to 6x the FLOPs of the same step looped (7.24 against 1.16 GFLOP per
    task, paper profile, 1-shot, before this formula). Bias gradients are left out, as PyTorch leaves them out."""
    spatial = (x_shape if transposed else grad_out_shape)[2:]
    forward = 2 * _prod(w_shape) * int(x_shape[0]) * _prod(spatial)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter():
    """``torch.utils.flop_counter.FlopCounterMode`` (no display) with :func:`conv_backward_flops` for convolution
    backward passes: the one FLOP counter of the harness (runs' ``flops_per_train_episode``, ``benchmark.speed``, the
    GPU check), so a method's count does not depend on whether its tasks ran looped or vectorised."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False,
                           custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops})


def autocast(device: torch.device | str, precision: str = "fp32"):
    """The autocast context of ``precision``: with "bf16", ``torch.autocast(device_type, dtype=torch.bfloat16)``
    (matrix products and convolutions in bfloat16, reductions such as the losses in float32, parameters, gradients
    and optimiser state stay float32); with "fp32" a disabled autocast (nothing changes). ValueError on another
    name."""
    check_precision(precision)
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def timed_step(method, episodes: list[Episode], step: int, device: torch.device, precision: str = "fp32",
               sync: bool = True, count_flops: bool = False) -> StepResult:
    """One ``method.train_step`` on ``episodes``, timed (on CUDA between two synchronisations); ``precision``: see
    :func:`autocast` (the whole step runs under it: the method's forward and backward passes; its optimiser update
    is on float32 parameters either way). ``tasks`` is the meta-batch's size here (:func:`counted_step` adds the
    episodes the method drew through its counting sampler); a ``tasks`` metric a method still returns (the old
    contract) is taken out of the metrics into ``reported_tasks``, never counted.

    ``sync=False`` (the trainer's deferred mode, :func:`sync_every_step_default`): no synchronisation; on CUDA the
    step is timed by two CUDA events recorded around it on the current stream (``StepResult.events``, read by
    :meth:`StepResult.elapsed` once the device has passed them), and metrics the method returns as tensors stay on
    the device. On the CPU, which runs the step before returning, both give the same wall-clock timing.

    ``count_flops``: also count the step's FLOPs (forward and backward: ``torch.utils.flop_counter.FlopCounterMode``,
    which observes the operations without changing their results) and its ``torch.optim`` optimiser steps; its time
    then includes the counter's overhead. The counted step runs eagerly (:func:`eager_step`): compiled modules are
    not compiled under the counter (Dynamo would skip their frames under its dispatch mode, and PyTorch up to 2.11
    then never compiled them), and their FLOPs are the eager operations' count.

    A method compiled for CUDA graphs (:func:`compile_method` with ``--capture``'s mode) has each step marked as a
    new CUDA-graph step (``torch.compiler.cudagraph_mark_step_begin``) before it runs."""
    ctx = autocast(device, precision)
    if count_flops:
        counter, opt_steps, eager = flop_counter(), OptimizerSteps(), eager_step()
    else:
        counter = opt_steps = eager = contextlib.nullcontext()
    mark_cudagraph_step(method)
    events = None
    if sync:
        synchronize(device)
    elif device.type == "cuda":
        stream = torch.cuda.current_stream(device)  # the run's device's stream, not the current device's
        events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        events[0].record(stream)
    t0 = time.perf_counter()
    with eager, counter, opt_steps, ctx, watching(method, "train_step"):
        metrics = dict(method.train_step(episodes, step))
    if sync:
        synchronize(device)
    elif events is not None:
        events[1].record(stream)
    secs = None if events is not None else time.perf_counter() - t0
    reported = metrics.pop("tasks", None)
    return StepResult(metrics, len(episodes), secs, events, None if reported is None else int(reported),
                      counter.get_total_flops() if count_flops else None, opt_steps.n if count_flops else None)


def eager_step():
    """A context in which compiled modules run their eager code and nothing is compiled
    (``torch.compiler.set_stance("force_eager")``; a null context on a PyTorch without it)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def mark_cudagraph_step(method) -> None:
    """Before a training step or an evaluation group of a method compiled for CUDA graphs (``--capture``): tell
    PyTorch a new step begins (``torch.compiler.cudagraph_mark_step_begin``), so that the outputs of the previous
    replay may be overwritten; nothing for any other method."""
    if getattr(method, "cudagraph_steps", False):
        torch.compiler.cudagraph_mark_step_begin()


def dynamo_counts() -> dict[str, int]:
    """Dynamo's counters of this process so far (``torch._dynamo.utils.counters``): frames compiled (``frames``:
    Dynamo's ``frames["ok"]``; a recompilation for new shapes counts again), frames it looked at (``frames_seen``:
    ``frames["total"]``), graphs made (``graphs``: ``stats["unique_graphs"]``) and graph breaks. The difference over
    a run says whether anything of it was compiled (a compiled module whose frame Dynamo skipped is not)."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # noqa: BLE001 - a PyTorch without Dynamo compiles nothing
        return {"frames": 0, "frames_seen": 0, "graphs": 0, "graph_breaks": 0}
    return {"frames": int(counters["frames"].get("ok", 0)), "frames_seen": int(counters["frames"].get("total", 0)),
            "graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def count_difference(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """``after - before`` of two :func:`dynamo_counts`."""
    return {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in after}


def drawn(sampler) -> tuple[int, int]:
    """(episodes, images) a method has drawn so far through its counting sampler
    (:class:`~benchmark.kit.episodes.TrainingSampler`; 0 for a plain sampler)."""
    return getattr(sampler, "episodes_drawn", 0), getattr(sampler, "images_drawn", 0)


def counted_step(method, sampler, episodes: list[Episode], step: int, device: torch.device, precision: str = "fp32",
                 sync: bool = True, count_flops: bool = False) -> tuple[StepResult, int]:
    """:func:`timed_step`, with ``tasks`` the training episodes the step consumed as the harness counts them: the
    meta-batch handed over plus the episodes the method drew through its counting ``sampler`` during the step (MTL's
    hard tasks, say). The one place that count is made: runs (:class:`Trainer`) and measurements
    (:mod:`benchmark.speed`) both take it, so a time or FLOPs figure "per training episode" means the same thing in
    both. Also returns the classification-batch images drawn during the step."""
    before = drawn(sampler)
    r = timed_step(method, episodes, step, device, precision, sync=sync, count_flops=count_flops)
    after = drawn(sampler)
    r.tasks = len(episodes) + after[0] - before[0]
    return r, after[1] - before[1]


def compile_method(method, mode: str | None = None) -> list[str]:
    """Compile ``method``'s :meth:`~methods.base.Method.compile_modules` in place (``nn.Module.compile``, PyTorch's
    defaults: the inductor backend, shapes specialised first and made dynamic when they change; ``mode``: a
    ``torch.compile`` mode, e.g. "reduce-overhead" for CUDA graphs, ``--capture``); returns the names of the modules
    compiled, empty for a method that compiles none (its ``compile_note`` says why). Parameters, buffers and
    ``state_dict`` keys are unchanged, so checkpoints and saved models are those of the uncompiled method; the
    numbers can differ from eager in the last bits (fused kernels round differently)."""
    mods = method.compile_modules()
    for m in mods.values():
        if mode is None:
            m.compile()
        else:
            m.compile(mode=mode)
    if mods and mode == CAPTURE_MODE:
        method.cudagraph_steps = True  # steps and evaluation groups are marked (mark_cudagraph_step)
    return sorted(mods)


def hidden_episode(episodes, i: int) -> QueryHidden:
    """Episode ``i`` of ``episodes`` as the method gets it: drawn label-free from an
    :class:`~benchmark.kit.episodes.EpisodeSet` (the labelled episode is not kept), else ``episodes[i].hidden()``."""
    return episodes.hidden(i) if isinstance(episodes, EpisodeSet) else episodes[i].hidden()


def query_labels(episodes, i: int, device: torch.device) -> torch.Tensor:
    """The query labels of episode ``i`` on ``device``, obtained after the method predicted: a pure function of the
    episode's key for an :class:`~benchmark.kit.episodes.EpisodeSet`, else ``episodes[i].query_y``."""
    if isinstance(episodes, EpisodeSet):
        return episodes.query_labels(i, device)
    return episodes[i].query_y.to(device)


def evaluate(method, episodes: EpisodeSet, device: torch.device, progress=None, desc: str = "eval",
             group: int | None = None, prefetch: int = 0, precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Per-episode query accuracy and adaptation seconds of ``method`` on every episode of ``episodes``.

    The method gets each episode without its query labels (:class:`~benchmark.kit.episodes.QueryHidden`), drawn
    label-free, and runs watched (:func:`~benchmark.pipeline.guard.watching`); the labels are obtained only after it
    returned, and the accuracy is scored here: no frame below the method's call holds a query label while it runs.

    Episodes go to ``method.predict_many`` in groups of :func:`group_size` (``group``, default the method's
    ``eval_group``, capped by input size; on CUDA by the device's total memory, on a fixed ladder), which
    methods implement as fewer, larger passes with the same per-episode results as ``predict`` one at a time
    (tested); an episode's seconds are its group's time divided by the group's size.
    ``prefetch``: groups drawn and moved to the device ahead by a background thread (:mod:`benchmark.pipeline.prefetch`; 0:
    none, each group is drawn when it is needed); the results are the same either way. ``precision``: the
    autocast of ``predict_many`` (:func:`autocast`).
    """
    cast = autocast(device, precision)
    group = group_size(method, episodes, group, device)
    n = len(episodes)
    acc = np.empty(n)
    secs = np.empty(n)
    bar = progress(total=n, desc=desc) if progress is not None else None
    starts = range(0, n, group)

    def draw(start: int, dev: torch.device) -> list[QueryHidden]:
        return [hidden_episode(episodes, i).to(dev) for i in range(start, min(n, start + group))]

    try:
        with prefetched(draw, starts, prefetch, device) as groups:
            for start in starts:
                eps = groups.get(start)  # label-free: no query label is held here while the method runs
                mark_cudagraph_step(method)
                t0 = time.perf_counter()
                with torch.set_grad_enabled(method.adapts_at_test), cast, watching(method, "predict_many"):
                    logits = method.predict_many(eps)
                synchronize(device)
                secs[start:start + len(eps)] = (time.perf_counter() - t0) / len(eps)
                # the labels, only now; the group's accuracies read in one copy (each the float32 mean .item()
                # gave, as a Python float)
                acc[start:start + len(eps)] = torch.stack([
                    (lg.argmax(-1) == query_labels(episodes, i, lg.device)).float().mean()
                    for i, lg in zip(range(start, start + len(eps)), logits)]).tolist()
                if bar is not None:
                    bar.update(len(eps))
    finally:
        if bar is not None and hasattr(bar, "close"):
            bar.close()
    return acc, secs


# ------------------------------------------------------------------------------------------------ the training loop
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
        self.shape = method.train_shape()
        self.meta_batch = meta_batch_size(method, hp)
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
            return draw_episodes(self.sampler, step, self.meta_batch, self.shape, dev)

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
        error."""
        state = self.state
        r, images = counted_step(self.method, self.sampler, episodes, step, self.device, self.precision,
                                 sync=self.sync_every_step, count_flops=state["flops"] is None)
        state["images"] += images
        if r.reported_tasks is not None and r.reported_tasks != r.tasks:
            raise ValueError(f"{self.method.name}'s train_step reports tasks={r.reported_tasks}, but the step "
                             f"consumed {r.tasks} training episodes ({len(episodes)} handed over, {r.tasks - len(episodes)} "
                             "drawn through ctx.sampler); the harness counts them itself: drop 'tasks'")
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

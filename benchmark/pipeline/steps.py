"""One training step and one evaluation pass: the timed (and counted) training step, the FLOP counter, autocast,
compiling, Dynamo's counters, the meta-batch a step is handed, seeding and the evaluation loop.

:func:`timed_step` (:func:`counted_step`) and :func:`evaluate` are the one implementation of a timed training step
and of an evaluation pass; the runner (through :class:`~benchmark.pipeline.training.Trainer`), ``benchmark.speed``
and ``benchmark.check`` all use them, so their figures measure the same thing. The training loop, its validations,
best state and checkpoints are :mod:`benchmark.pipeline.training`'s.

For a GPU: ``prefetch`` (:func:`evaluate`) draws evaluation groups ahead on a background thread
(:mod:`benchmark.pipeline.prefetch`; 0, the default, draws them when needed), ``precision`` ("fp32", the default, or
"bf16": :func:`autocast`) sets the autocast of the steps and evaluations, and
:func:`~benchmark.pipeline.execution.group_size` sizes evaluation groups by the device's total memory on CUDA (a
fixed ladder). None of them changes anything on the CPU at their defaults.
"""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..kit.episodes import Episode, EpisodeSet, QueryHidden, TaskSampler, uncounted
from .execution import CAPTURE_MODE, check_precision, group_size
from .guard import watching
from .prefetch import prefetched


# ------------------------------------------------------------------------------------------------ random state
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


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


@dataclass(frozen=True)
class MetaBatches:
    """The meta-batches the harness hands ``method.train_step``: ``size`` episodes a step (:func:`meta_batch_size`)
    of ``shape`` (``method.train_shape()``), step ``s`` getting the training sampler's episodes ``s * size + j``
    (:func:`draw_episodes`). The one owner of what a step is handed: the trainer draws a run's steps with it,
    ``benchmark.speed`` the steps it times and ``benchmark.check`` the steps it checks."""

    size: int
    shape: tuple[int, int, int]

    @classmethod
    def of(cls, method, hp) -> "MetaBatches":
        """The meta-batches of ``method`` trained under ``hp``."""
        return cls(meta_batch_size(method, hp), method.train_shape())

    def draw(self, sampler: TaskSampler, step: int, device: torch.device) -> list[Episode]:
        """The meta-batch of step ``step``, on ``device``."""
        return draw_episodes(sampler, step, self.size, self.shape, device)


@dataclass
class StepResult:
    metrics: dict  # the method's training metrics (floats, or scalar tensors a method returned), without ``tasks``
    tasks: int  # training episodes the step consumed, counted by the harness (set by the caller: :func:`counted_step`)
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

    ``sync=False`` (the trainer's deferred mode, :func:`~benchmark.pipeline.training.sync_every_step_default`): no
    synchronisation; on CUDA the step is timed by two CUDA events recorded around it on the current stream
    (``StepResult.events``, read by :meth:`StepResult.elapsed` once the device has passed them), and metrics the
    method returns as tensors stay on the device. On the CPU, which runs the step before returning, both give the same wall-clock timing.

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
    hard tasks, say). The one place that count is made: runs (:class:`~benchmark.pipeline.training.Trainer`) and
    measurements (:mod:`benchmark.speed`) both take it, so a time or FLOPs figure "per training episode" means the
    same thing in both. Also returns the classification-batch images drawn during the step."""
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

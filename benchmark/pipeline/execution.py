"""How a run is executed, as opposed to what it is: the prefetch depth, deterministic CUDA and compiled kernels.

A :class:`~benchmark.pipeline.config.RunConfig` says what a run computes (its run id depends on it); an :class:`Execution`
says how this process computes it: none of its fields enters the run id, and each is recorded in the run's
``summary.json`` (``execution``, and ``deterministic`` as a leaderboard column). Numerical precision is not here: a
bf16 run computes other numbers, so ``precision`` is a field of the :class:`~benchmark.pipeline.config.RunConfig` (and of
its run id when not fp32).

* ``prefetch``: training meta-batches and evaluation groups drawn that many ahead by a background thread
  (:mod:`benchmark.pipeline.prefetch`); None picks the device's default (:func:`benchmark.pipeline.prefetch.default_prefetch`: 0 on
  the CPU, 2 on CUDA). Results are the same at any depth.
* ``deterministic``: on CUDA, deterministic kernels (:func:`benchmark.pipeline.machine.configure_determinism`; the default).
  False lets cuDNN pick fast, non-deterministic algorithms (``cudnn.benchmark``). On the CPU the kernels are
  deterministic at a fixed number of threads either way, and nothing changes.
* ``compile``: ``torch.compile`` the method's compilable modules (:meth:`~methods.base.Method.compile_modules`);
  off by default (measured slower on the CPU, see docs/measurements.md).
* ``capture``: CUDA only: the same modules compiled with ``mode="reduce-overhead"`` (:data:`CAPTURE_MODE`), so that
  their forward and backward passes are replayed as captured CUDA graphs (one launch per graph instead of one per
  kernel) wherever their shapes repeat, eager elsewhere; a method that compiles nothing captures nothing (its
  ``compile_note`` says why). Off by default until the GPU check measures it faster with the same accuracy on the
  same episodes (``benchmark.gpu_check``, its capture part).

Evaluation groups: :func:`group_size` sizes the groups of test episodes one ``predict_many`` call takes, by
input size on the CPU and, on CUDA, by the device's total memory on a fixed ladder of sizes (never by the memory
free at the moment, so identical, resumed and packed runs evaluate in the same groups).

This module imports no PyTorch (:func:`group_size` imports it when called), so the command line can check these values before loading anything.
"""
from __future__ import annotations

from dataclasses import dataclass

#: Numerical precisions of training and evaluation: "fp32" (float32 everywhere, the papers') or "bf16" (autocast to
#: bfloat16: matrix products and convolutions in bfloat16, parameters, gradients and optimiser state in float32).
PRECISIONS = ("fp32", "bf16")
#: ``torch.compile`` mode of ``--capture``: Inductor's kernels replayed as CUDA graphs (cudagraph trees)
CAPTURE_MODE = "reduce-overhead"


def check_precision(precision: str) -> str:
    """``precision`` when it is one of :data:`PRECISIONS`; ValueError (one line) otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return precision


def parse_prefetch(text: str) -> int | None:
    """``--prefetch``'s value: ``auto`` (None: the device's default) or a depth of 0 or more; ValueError (one line)
    otherwise."""
    if str(text).strip().lower() == "auto":
        return None
    try:
        n = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"--prefetch must be auto or a number of batches (0 turns it off), not {text!r}") from None
    if n < 0:
        raise ValueError(f"--prefetch must be at least 0 (0 turns it off), not {n}")
    return n


@dataclass(frozen=True)
class Execution:
    """How this process executes its runs (see the module's docstring); the defaults are the command line's."""

    prefetch: int | None = None  # None: benchmark.pipeline.prefetch.default_prefetch(device)
    deterministic: bool = True
    compile: bool = False
    capture: bool = False

    def __post_init__(self):
        if self.prefetch is not None and (not isinstance(self.prefetch, int) or self.prefetch < 0):
            raise ValueError(f"prefetch must be None (the device's default) or at least 0, not {self.prefetch!r}")

    def prefetch_for(self, device) -> int:
        """The prefetch depth on ``device``: the one asked for, else the device's default."""
        if self.prefetch is not None:
            return self.prefetch
        from .prefetch import default_prefetch

        return default_prefetch(device)


# ------------------------------------------------------------------------------------------------ evaluation groups
#: Most input values (images x channels x height x width) one grouped evaluation pass takes: 20 Omniglot 5-way 5-shot
#: episodes with 15 queries (100 images of 28x28 each) fit; one 84x84 RGB episode of 80 images is 1.7 million, so
#: such datasets are evaluated one episode at a time instead of 20, which would hold gigabytes of activations.
EVAL_GROUP_VALUES = 2_000_000


#: CUDA: a grouped evaluation pass may fill at most this share of the device's total memory
#: (``torch.cuda.get_device_properties(device).total_memory``) with activations: an eighth, so that eight runs packed
#: on one GPU (``--executor processes --workers 8``, the most the GPU check packs) fit beside each other. Total, not
#: free memory: a group size that followed the free memory would change with earlier runs of the process and with
#: packed neighbours, and different groups are different grouped-convolution shapes, which can round differently.
EVAL_MEMORY_SHARE = 0.125
#: CUDA: estimated bytes of activations per input value of a pass: float32 (4 bytes) x 512. A Conv-4 block's
#: convolution, BatchNorm and ReLU outputs hold 64 channels per input channel at full resolution (3 x 64 = 192 values
#: per value of a 1-channel image, the pooled later blocks add about a third), and a method that adapts at test time
#: keeps them all for its backward pass; 512 rounds that up. A method can give its own as ``eval_activation_bytes``.
EVAL_ACTIVATION_BYTES = 4 * 512
#: CUDA: ResNet backbones (three convolutions per block, widths up to 640) hold about 4 times a Conv-4's activations.
RESNET_ACTIVATION_SCALE = 4
#: CUDA: most episodes one grouped pass takes (methods that group at all, ``eval_group > 1``).
EVAL_GROUP_MAX_CUDA = 64
#: CUDA: the group sizes a grouped pass may take (the largest that fits is chosen): a fixed ladder, so that nearby
#: memory sizes give the same groups.
EVAL_GROUP_LADDER = (1, 2, 4, 8, 16, 32, 64)


def group_size(method, episodes, group: int | None = None, device=None) -> int:
    """Episodes per ``predict_many`` call. Only speed and memory depend on it, never results (tested).

    CPU (or no ``device``): ``group`` (default: the method's ``eval_group``), capped so that a call takes at most
    :data:`EVAL_GROUP_VALUES` input values.

    CUDA, for a method that groups (``eval_group > 1``): the largest size of :data:`EVAL_GROUP_LADDER` that is at
    most ``group`` (default: :data:`EVAL_GROUP_MAX_CUDA`) and whose estimated memory fits
    :data:`EVAL_MEMORY_SHARE` of the device's total memory: per episode, its input values x
    :data:`EVAL_ACTIVATION_BYTES` (or the method's ``eval_activation_bytes``; x :data:`RESNET_ACTIVATION_SCALE` on
    a ResNet backbone) plus the method's ``eval_episode_bytes`` (memory per episode that does not scale with the
    images, e.g. the Meta-LSTM's per-coordinate state). A function of the configuration and the device model only,
    so every run of a configuration on a GPU model evaluates in the same groups (the runs record it). A method that
    does not group (``eval_group == 1``: its ``predict_many`` is a loop) keeps 1.
    """
    import torch

    own = max(1, int(getattr(method, "eval_group", 1)))
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda and own > 1 and len(episodes):
        e = episodes[0]
        values = (len(e.support_x) + len(e.query_x)) * e.support_x[0].numel()
        per_value = getattr(method, "eval_activation_bytes", None) or EVAL_ACTIVATION_BYTES
        backbone = str(getattr(getattr(method, "ctx", None), "backbone_name", "") or "")
        if backbone.startswith("resnet"):
            per_value *= RESNET_ACTIVATION_SCALE
        per_episode = values * per_value + int(getattr(method, "eval_episode_bytes", 0) or 0)
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        fits = int(EVAL_MEMORY_SHARE * total // max(1, per_episode))
        cap = min(int(group or EVAL_GROUP_MAX_CUDA), fits, EVAL_GROUP_MAX_CUDA)
        return max([g for g in EVAL_GROUP_LADDER if g <= cap] or [1])
    group = max(1, int(group or own))
    if group > 1 and len(episodes):
        e = episodes[0]
        per_episode = (len(e.support_x) + len(e.query_x)) * e.support_x[0].numel()
        group = max(1, min(group, EVAL_GROUP_VALUES // max(1, per_episode)))
    return group

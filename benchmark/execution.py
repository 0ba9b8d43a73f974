"""How a run is executed, as opposed to what it is: the prefetch depth, deterministic CUDA and compiled kernels.

A :class:`~benchmark.config.RunConfig` says what a run computes (its run id depends on it); an :class:`Execution`
says how this process computes it: none of its fields enters the run id, and each is recorded in the run's
``summary.json`` (``execution``, and ``deterministic`` as a leaderboard column). Numerical precision is not here: a
bf16 run computes other numbers, so ``precision`` is a field of the :class:`~benchmark.config.RunConfig` (and of
its run id when not fp32).

* ``prefetch``: training meta-batches and evaluation groups drawn that many ahead by a background thread
  (:mod:`benchmark.prefetch`); None picks the device's default (:func:`benchmark.prefetch.default_prefetch`: 0 on
  the CPU, 2 on CUDA). Results are the same at any depth.
* ``deterministic``: on CUDA, deterministic kernels (:func:`benchmark.machine.configure_determinism`; the default).
  False lets cuDNN pick fast, non-deterministic algorithms (``cudnn.benchmark``). On the CPU the kernels are
  deterministic at a fixed number of threads either way, and nothing changes.
* ``compile``: ``torch.compile`` the method's compilable modules (:meth:`~methods.base.Method.compile_modules`);
  off by default (measured slower on the CPU, see the README's "Speed").

This module imports no PyTorch, so the command line can check these values before loading anything.
"""
from __future__ import annotations

from dataclasses import dataclass

#: Numerical precisions of training and evaluation: "fp32" (float32 everywhere, the papers') or "bf16" (autocast to
#: bfloat16: matrix products and convolutions in bfloat16, parameters, gradients and optimiser state in float32).
PRECISIONS = ("fp32", "bf16")


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

    prefetch: int | None = None  # None: benchmark.prefetch.default_prefetch(device)
    deterministic: bool = True
    compile: bool = False

    def __post_init__(self):
        if self.prefetch is not None and (not isinstance(self.prefetch, int) or self.prefetch < 0):
            raise ValueError(f"prefetch must be None (the device's default) or at least 0, not {self.prefetch!r}")

    def prefetch_for(self, device) -> int:
        """The prefetch depth on ``device``: the one asked for, else the device's default."""
        if self.prefetch is not None:
            return self.prefetch
        from .prefetch import default_prefetch

        return default_prefetch(device)

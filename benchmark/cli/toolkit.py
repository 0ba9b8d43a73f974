"""The command-line toolkit the commands share (``benchmark.run``, ``benchmark.evaluate``, ``benchmark.speed``,
``benchmark.check``, ``benchmark.data``): exit codes, the one-line usage error, count and folder checks, torch and
device set-up, progress bars and notes. The commands that look methods up add :mod:`benchmark.cli.methods`
(``--method-file`` and ``--help``'s catalogue).

Importing this module imports neither torch nor the methods: torch is imported by :func:`setup_torch` only once the
arguments have been parsed.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class UsageError(Exception):
    """Bad input: the command prints ``error: <message>`` (one line) on stderr and exits with :data:`EXIT_USAGE`."""


def usage_errors(body: Callable[[], int]) -> int:
    """``body()``'s exit code; a :class:`UsageError` it raises becomes one line on stderr and :data:`EXIT_USAGE`."""
    try:
        return body()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


def at_least(label: str, values: int | Iterable[int] | None, low: int = 1) -> None:
    """UsageError naming ``label`` (e.g. ``--ways``) when a value (an int, a list of them, or None: unset) is below
    ``low``."""
    if values is None:
        return
    for v in [values] if isinstance(values, int) else values:
        if v < low:
            raise UsageError(f"{label} must be {'at least 1' if low == 1 else f'{low} or more'} (got {v})")


def gpu_share(label: str, value: float | None) -> None:
    """UsageError naming ``label`` (e.g. ``--gpus-per-run``) unless ``value`` (None: unset) is a share of GPUs Ray
    accepts for a task: above 0, a fraction up to 1 (at most 4 decimals: Ray's unit is 0.0001) or a whole number."""
    if value is None:
        return
    import math

    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{label} must be greater than 0 (got {value:g}); leave it out for no GPU")
    if value > 1 and value != int(value):
        raise UsageError(f"{label} above 1 must be a whole number of GPUs (got {value:g}); fractions are for "
                         "sharing one GPU: 0.5, 0.25, ...")
    if abs(value * 10_000 - round(value * 10_000)) > 1e-6:
        raise UsageError(f"{label} is a share of a GPU in steps of 0.0001, Ray's unit (got {value!r})")


def whole_number(label: str, text: str | None, low: int = 1) -> int | None:
    """``text`` (a flag's value as typed; None: unset) as an int of at least ``low``; UsageError in one line
    naming ``label`` otherwise."""
    if text is None:
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        raise UsageError(f"{label} must be a whole number (got {text!r})") from None
    at_least(label, value, low)
    return value


def existing_dir(label: str, path: str | Path | None) -> None:
    """UsageError when a folder given as ``label`` (e.g. ``--data-dir``) is not one."""
    if path is not None and not Path(path).is_dir():
        raise UsageError(f"{label} {path} does not exist or is not a folder")


def setup_torch(device: str, threads: int | None = None):
    """Prepare this process for PyTorch work: the allocator settings (:func:`benchmark.pipeline.perf.tune_cpu`), PyTorch's CPU
    threads (``threads``; None: PyTorch's default) and the device (``auto | cpu | cuda[:N]``); returns the
    ``torch.device``. UsageError for a device that is not there."""
    import torch

    from ..pipeline.machine import resolve_device
    from ..pipeline.machine import tune_cpu

    tune_cpu()
    if threads:
        torch.set_num_threads(threads)
    try:
        return resolve_device(device)
    except ValueError as e:
        raise UsageError(str(e)) from None


def progress_factory(disabled: bool = False) -> Callable:
    """The progress bars of a command: ``progress(iterable=None, total=None, desc="", initial=0)`` -> a tqdm bar on
    stderr that disappears when done (``disabled``: none shown)."""
    from tqdm import tqdm

    def progress(iterable=None, total=None, desc="", initial=0):
        return tqdm(iterable, total=total, desc=desc, initial=initial, leave=False, dynamic_ncols=True,
                    disable=disabled, file=sys.stderr, mininterval=0.5)

    return progress


def note(text: str) -> None:
    """A message on stderr that does not break the progress bars."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)

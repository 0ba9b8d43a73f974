"""The command-line toolkit the commands share (``benchmark.run``, ``benchmark.evaluate``, ``benchmark.speed``,
``benchmark.check``, ``benchmark.report``, ``benchmark.data``): exit codes, the one parser (:class:`Parser`, whose
errors are one line), the one-line usage error, count, name and folder checks, progress bars and notes, and the
progress lines of the executors' workers, whose output is forwarded line by line (:class:`LineProgress`). The
commands that look methods up add :mod:`benchmark.pipeline.method_options` (``--method-file`` and ``--help``'s
catalogue).

This module imports nothing of the harness, nor torch: every command, the data checker and the report included, can
use it. The process's set-up for PyTorch (threads, device), once the arguments are parsed, is
:func:`benchmark.pipeline.machine.setup_torch`.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class UsageError(Exception):
    """Bad input: the command prints ``error: <message>`` (one line) on stderr and exits with :data:`EXIT_USAGE`."""


class Parser(argparse.ArgumentParser):
    """The argument parser of every command: argparse's own errors (a value of the wrong type, an unknown choice, a
    missing value or argument, an unknown option) print ONE line, ``<prog>: error: <message>``, on stderr and exit
    with :data:`EXIT_USAGE`, without argparse's usage dump (``--help`` shows the usage)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def usage_errors(body: Callable[[], int], guard: bool = True) -> int:
    """``body()``'s exit code; a :class:`UsageError` it raises becomes one line on stderr and :data:`EXIT_USAGE`.
    A ``BENCHMARK_GUARD`` other than "on" or "off" (:mod:`benchmark.pipeline.guard`) is one too, unless ``guard`` is
    False (``benchmark.report``, which calls no method, leaves the variable alone)."""
    try:
        value = os.environ.get("BENCHMARK_GUARD", "on")
        if guard and value not in ("on", "off"):
            raise UsageError(f"BENCHMARK_GUARD must be 'on' or 'off', not {value!r}")
        return body()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


def at_least(label: str, values: int | Iterable[int] | None, low: int = 1) -> None:
    """UsageError naming ``label`` (e.g. ``--ways``) when a value (a number, a list of them, or None: unset) is below
    ``low``."""
    if values is None:
        return
    for v in [values] if isinstance(values, (int, float)) else values:
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


def folder_name(label: str, name: str) -> None:
    """UsageError when ``name`` (e.g. ``--report-name``) cannot name a folder inside another: empty or blank, ``.``
    or ``..`` (which would write into the parent folder itself or above it), or an absolute path."""
    parts = Path(name).parts if name.strip() else ()
    if not parts or Path(name).is_absolute() or any(p in (".", "..") for p in parts) or name != name.strip():
        raise UsageError(f"{label} must name a folder (not empty, blank, '.', '..', absolute or padded with spaces; "
                         f"got {name!r})")


def writable_dir(label: str, path: str | Path) -> None:
    """UsageError, before any work and without creating anything, when files cannot be written into the folder
    ``path`` given as ``label`` (e.g. ``--reports-dir``): it is not a folder, or it (or, when it does not exist yet,
    the nearest existing folder above it, where it would be created) is not writable. Probed by creating and removing
    a temporary file, so that permissions, read-only file systems and root are all judged as a real write would be."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.is_symlink():  # a dangling link: creating the folder would fail
            raise UsageError(f"{label} {path}: {probe} is a broken symbolic link")
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == path else f" ({probe} is a file, so {path} cannot be created)"
        raise UsageError(f"{label} {path} is not a folder{where}; give a folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UsageError(f"{label} {path} is not writable ({e.strerror or e}"
                         f"{'' if probe == path else f' in {probe}, where it would be created'}); give another")


def progress_factory(disabled: bool = False) -> Callable:
    """The progress bars of a command: ``progress(iterable=None, total=None, desc="", initial=0)`` -> a tqdm bar on
    stderr that disappears when done (``disabled``: none shown)."""
    from tqdm import tqdm

    def progress(iterable=None, total=None, desc="", initial=0):
        return tqdm(iterable, total=total, desc=desc, initial=initial, leave=False, dynamic_ncols=True,
                    disable=disabled, file=sys.stderr, mininterval=0.5)

    return progress


class LineProgress:
    """A progress "bar" as occasional lines (every ``every`` seconds, and at the end), for tasks whose output Ray
    forwards to the driver line by line: ``LineProgress(prefix)(iterable, total=, desc=, initial=)`` or
    ``(total=, desc=)`` with ``update``; ``set_postfix`` adds e.g. the validation accuracy."""

    def __init__(self, prefix: str, every: float = 15.0, stream=None):
        self.prefix, self.every, self.stream = prefix, every, stream

    def __call__(self, iterable=None, total=None, desc="", initial=0):
        return _Lines(self, iterable, total, desc, initial)


class _Lines:
    def __init__(self, owner: LineProgress, iterable, total, desc, initial):
        self.o, self.iterable, self.total, self.desc, self.n = owner, iterable, total, desc, initial
        self.postfix, self.t0, self.last = "", time.time(), time.time()

    def _line(self, force=False):
        now = time.time()
        if force or now - self.last >= self.o.every:
            self.last = now
            tot = f"/{self.total}" if self.total else ""
            print(f"{self.o.prefix}: {self.desc} {self.n}{tot} ({now - self.t0:.0f} s){self.postfix}",
                  file=self.o.stream or sys.stderr, flush=True)

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update(1)

    def update(self, k=1):
        self.n += k
        self._line()

    def set_postfix(self, **kw):
        self.postfix = " " + " ".join(f"{k}={v}" for k, v in kw.items())

    def close(self):
        self._line(force=True)


def note(text: str) -> None:
    """A message on stderr that does not break the progress bars."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)

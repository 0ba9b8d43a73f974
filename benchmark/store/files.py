"""Writing files safely: atomic writers (a temporary name, then ``os.replace``, so a crash leaves either the old file
or the new one, never half of one), the OS file lock (:class:`FileLock`), the check that a folder is writable and
the records' UTC timestamp (:func:`utc_timestamp`).

Names no file: what goes where is the run store's job (:mod:`benchmark.store.folders`). Imports torch only inside
:func:`atomic_torch_save`, so the report can use this module without torch.
"""
from __future__ import annotations

import io
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def utc_timestamp() -> str:
    """Now in UTC, as the records write their times (``finished_at``, ``failed_at``, ``added_at``):
    ``2024-01-31T12:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_csv(path: Path, df: pd.DataFrame) -> None:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())


def _exact_floats() -> dict:
    """``pd.read_csv`` arguments that parse every float exactly as written: before pandas 3.1 the default parser
    ("high" precision) can land one unit in the last place off the written value (an accuracy of 52/75 read back
    as its neighbour), and ``float_precision="round_trip"`` is exact; pandas 3.1 made exact parsing the default and
    deprecated the argument."""
    try:
        version = tuple(int(v) for v in pd.__version__.split(".")[:2])
    except ValueError:
        version = (0, 0)
    return {} if version >= (3, 1) else {"float_precision": "round_trip"}


def read_csv(path: Path, **kwargs) -> pd.DataFrame:
    """A record's table as written by :func:`atomic_write_csv`: every float the same number that was written, on
    every pandas this package supports, so per-episode accuracies read back compare equal to recomputed ones."""
    return pd.read_csv(path, **_exact_floats(), **kwargs)


def atomic_torch_save(path: Path, obj: Any) -> int:
    """``torch.save(obj)`` to ``path`` atomically; returns the file's size in bytes."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return len(data)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def check_writable(results_dir: Path) -> None:
    """Raise OSError with a clear message when runs cannot be written under ``results_dir``."""
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=results_dir, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OSError(f"results directory {results_dir} is not writable ({e.strerror or e}); "
                      "choose another with --results-dir") from None


class FileLock:
    """An exclusive OS file lock (``fcntl.flock``) on ``path``: held by one process at a time and released by the
    kernel when that process dies, so a killed trainer never leaves a stale lock. The holder writes its pid and host
    into the file (:meth:`holder`), for the notes of processes that find it locked."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, wait: bool = True, poll: float = 0.2) -> bool:
        """Take the lock; with ``wait=False`` return False at once when another process holds it."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    os.close(fd)
                    return False
                time.sleep(poll)  # polled rather than blocking, so that Ctrl-C stays responsive
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def holder(self) -> dict:
        """The pid and host the last holder wrote (empty when unknown)."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

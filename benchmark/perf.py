"""Process-level speed settings shared by the CLI, the speed script and the tests.

``tune_cpu()`` raises glibc's mmap and trim thresholds. Training a Conv-4 allocates and frees activation buffers of
tens of megabytes every step; with glibc's defaults each of them is a fresh ``mmap`` whose pages are faulted in and
zeroed again, which cost up to a third of a ProtoNet step on 2 cores (see README, "Speed"). Keeping them on the heap
removes that. It changes no result, only time.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_done = False


def tune_cpu() -> bool:
    """Apply the allocator settings once per process; returns whether they took effect (glibc only)."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):
        ok = False
    _done = ok
    return ok

"""The machine a run is on: the code's version, the software and hardware environment, the device, peak memory.

:func:`code_version` and :func:`environment` are a run's provenance (``summary.json``); :func:`resolve_device`
turns ``--device`` into a ``torch.device`` (ValueError with a fix-it message); :class:`PeakMemory` samples the peak
resident memory of the process (CPU) or reads the peak allocated CUDA memory during a block.
"""
from __future__ import annotations

import os
import platform
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch


def code_version() -> str:
    """The git commit of this code, with '-dirty' when tracked files differ; 'unknown' outside a checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict[str, Any]:
    import torchvision

    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "numpy": np.__version__, "pandas": pd.__version__, "platform": platform.platform(),
           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor()
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        env["device_name"] = f"{cpu} ({os.cpu_count()} logical cores, {torch.get_num_threads()} threads)"
    return env


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but PyTorch sees no CUDA device; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
    return torch.device(name)


class PeakMemory:
    """Peak memory during a block: resident set size of the process (CPU), or allocated CUDA memory."""

    def __init__(self, device: torch.device):
        self.device, self.peak_bytes = device, 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _poll(self):
        while not self._stop.wait(0.05):
            self.peak_bytes = max(self.peak_bytes, self._rss())

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_bytes = self._rss()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._rss())

    @property
    def mb(self) -> float:
        return self.peak_bytes / 2 ** 20


def placement(device: torch.device, executor: str = "sequential", **extra: Any) -> dict[str, Any]:
    """Where a run ran, for its summary (``placement``) and the leaderboard: the executor, the node (host name, plus
    the Ray node id under Ray), the process, the CPU threads PyTorch used and the share of a GPU it was given (1 for
    a CUDA run of the sequential executor, ``--gpus-per-run`` under Ray, None on CPU); ``extra`` adds or overrides."""
    import socket

    out = {"executor": executor, "node": socket.gethostname(), "pid": os.getpid(), "cpus": torch.get_num_threads(),
           "gpu_fraction": 1.0 if device.type == "cuda" else None}
    out.update(extra)
    return out

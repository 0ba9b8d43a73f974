"""The machine a run is on: the code's version, the software and hardware environment, the device, peak memory.

:func:`code_version` and :func:`environment` are a run's provenance (``summary.json``); :func:`resolve_device`
turns ``--device`` into a ``torch.device`` (ValueError with a fix-it message); :func:`configure_determinism` makes
CUDA runs reproducible (nothing changes on the CPU); :class:`PeakMemory` samples the peak resident memory of the
process (CPU) or reads the peak allocated CUDA memory during a block; :class:`NondeterministicOps` collects
PyTorch's warnings about operations without a deterministic kernel during a run; :func:`tune_cpu` is the process's
CPU allocator setting.

CPU tuning: ``tune_cpu()`` (used by the commands, the speed script and the tests) raises glibc's mmap and trim thresholds. Training a Conv-4 allocates and frees activation buffers of
tens of megabytes every step; with glibc's defaults each of them is a fresh ``mmap`` whose pages are faulted in and
zeroed again, which cost up to a third of a ProtoNet step on 2 cores (see docs/measurements.md). Keeping them on the heap
removes that. It changes no result, only time.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import re
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable

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
    """The software and hardware a run ran on, for its summary; includes the determinism settings in force
    (:func:`determinism_state`: ``deterministic``, and on CUDA the cuDNN flags and the cuBLAS workspace)."""
    try:  # recorded when present; nothing here needs it (a GPU image may ship PyTorch without it)
        import torchvision
        vision = torchvision.__version__
    except ImportError:
        vision = None
    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": vision,
           "numpy": np.__version__, "pandas": pd.__version__, "platform": platform.platform(),
           "threads": torch.get_num_threads(), **determinism_state(device)}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    else:
        env["device_name"] = f"{cpu_model()} ({os.cpu_count()} logical cores, {torch.get_num_threads()} threads)"
    env.update(numerics(device))
    return env


def cpu_model() -> str:
    """The CPU's model name: ``model name`` of ``/proc/cpuinfo`` (Linux on x86), else ``platform.processor()``,
    else ``platform.machine()``; "unknown" when none says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _build_fact(config: str, pattern: str) -> str | None:
    m = re.search(pattern, config)
    return m.group(1).strip() if m else None


@functools.lru_cache(maxsize=1)
def math_libraries() -> dict[str, str | None]:
    """The math libraries PyTorch was built with, as ``torch.__config__.show()`` reports them (None where it does not
    name one): ``onednn`` (oneDNN, formerly MKL-DNN: the convolution kernels on the CPU), ``mkl`` (Intel MKL's
    version), ``blas`` and ``lapack`` (the build's ``BLAS_INFO`` / ``LAPACK_INFO``: ``mkl``, ``open`` for OpenBLAS,
    ``accelerate``, ...) and ``openmp`` (the OpenMP version, which sets how CPU work is split between threads)."""
    try:
        config = torch.__config__.show()
    except Exception:  # noqa: BLE001 - provenance only: a build that cannot say records nothing
        config = ""
    return {"onednn": _build_fact(config, r"(?:MKL-DNN|oneDNN)\s+v?(\d[\w.]*)"),
            "mkl": _build_fact(config, r"Math Kernel Library Version\s+([^\n]+?)(?:\s+for\s|\n|$)"),
            "blas": _build_fact(config, r"BLAS_INFO=([^,\s]+)"),
            "lapack": _build_fact(config, r"LAPACK_INFO=([^,\s]+)"),
            "openmp": _build_fact(config, r"OpenMP\s+(\d+)")}


def numerics(device: torch.device | str) -> dict[str, Any]:
    """What a run's numbers depend on besides its configuration, for its provenance: ``cpu_capability`` (the
    instruction set PyTorch's CPU kernels use, ``torch.backends.cpu.get_cpu_capability()``: e.g. AVX2, AVX512,
    DEFAULT), ``cpu_model`` (:func:`cpu_model`), the math libraries (:func:`math_libraries`), and on CUDA also
    ``cuda`` (the CUDA version PyTorch was built with) and ``cudnn`` (cuDNN's version). With the thread count
    (``threads``), the device and the versions of PyTorch and NumPy, these decide whether two runs of one
    configuration give bit-identical numbers (docs/reproducibility.md)."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    out: dict[str, Any] = {"cpu_capability": capability, "cpu_model": cpu_model(), **math_libraries()}
    if torch.device(device).type == "cuda":
        out["cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return out


CUBLAS_WORKSPACE = ":4096:8"  # NVIDIA's cuBLAS docs (results reproducibility): ":4096:8" or ":16:8" make it deterministic


def determinism_state(device: torch.device | str) -> dict[str, Any]:
    """The determinism settings in force, for provenance: ``deterministic`` (``torch.use_deterministic_algorithms``)
    and ``deterministic_warn_only``; on CUDA also ``cudnn_benchmark``, ``cudnn_deterministic``,
    ``cublas_workspace_config`` (the environment variable, None when unset), ``fill_uninitialized_memory``
    (``torch.utils.deterministic``) and whether float32 convolutions and matrix products may run as TF32
    (``tf32_convolutions``: ``torch.backends.cudnn.allow_tf32``; ``tf32_matmul``:
    ``torch.backends.cuda.matmul.allow_tf32``)."""
    out: dict[str, Any] = {"deterministic": torch.are_deterministic_algorithms_enabled(),
                           "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled()}
    if torch.device(device).type == "cuda":
        out.update(cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
                   cudnn_deterministic=bool(torch.backends.cudnn.deterministic),
                   cublas_workspace_config=os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
                   fill_uninitialized_memory=_fill_uninitialized_memory(),
                   tf32_convolutions=bool(torch.backends.cudnn.allow_tf32),
                   tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32))
    return out


def _fill_uninitialized_memory() -> bool | None:
    """``torch.utils.deterministic.fill_uninitialized_memory`` (None on a PyTorch without it)."""
    try:
        import torch.utils.deterministic as d
    except ImportError:
        return None
    return bool(d.fill_uninitialized_memory) if hasattr(d, "fill_uninitialized_memory") else None


def configure_kernels(device: torch.device | str) -> None:
    """CUDA settings every run has, deterministic or not: float32 is float32 (TF32 off for convolutions and matrix
    products: ``torch.backends.cudnn.allow_tf32`` and ``torch.backends.cuda.matmul.allow_tf32`` False; PyTorch lets
    cuDNN run float32 convolutions as TF32 by default, with 10-bit mantissas, which the papers' float32 numbers never
    had; ``--precision bf16`` is the fast, reduced-precision choice, named in the run id), and new allocations are
    not filled (``torch.utils.deterministic.fill_uninitialized_memory`` False: under deterministic algorithms PyTorch
    otherwise writes NaN into every new CUDA tensor, a cost for no result of ours, since no method reads memory it
    has not written). Nothing on the CPU. Recorded by :func:`determinism_state`."""
    if torch.device(device).type != "cuda":
        return
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        import torch.utils.deterministic as d

        if hasattr(d, "fill_uninitialized_memory"):
            d.fill_uninitialized_memory = False
    except ImportError:
        pass


def use_device(device: torch.device | str) -> None:
    """Make a CUDA ``device`` with an index this process's current device (``torch.cuda.set_device``), before any
    CUDA work of a run or worker on it: CUDA events, streams and the allocator otherwise act on the current device
    (cuda:0), and every process would open a context on GPU 0. Nothing for the CPU or ``cuda`` without an index."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def configure_determinism(device: torch.device | str, deterministic: bool = True, warn_only: bool = True,
                          ) -> dict[str, Any]:
    """Make CUDA runs bit-reproducible (same code, inputs, software and GPU model give the same numbers); call it once
    per process before any CUDA work (the runner's process and each Ray worker). Returns the settings in force
    (:func:`determinism_state`), for the run's provenance. Idempotent.

    On CUDA with ``deterministic``: the environment variable ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (kept when already
    ``:4096:8`` or ``:16:8``; cuBLAS reads it when its first handle is made, so it must be set before the first matrix
    product; a note is returned under ``cublas_note`` when CUDA was already initialised),
    ``torch.use_deterministic_algorithms(True, warn_only=warn_only)``, ``torch.backends.cudnn.benchmark = False``
    (no timing-based choice of convolution algorithms, which differs between runs) and
    ``torch.backends.cudnn.deterministic = True``. ``warn_only`` (default): an operation without a deterministic CUDA
    kernel warns (``UserWarning``) and runs its non-deterministic kernel instead of raising, so every method still
    runs; the warning names the operation, and such a method's results can differ between runs in the last bits.
    With ``deterministic=False`` (``--no-deterministic``) on CUDA: ``torch.use_deterministic_algorithms(False)``,
    ``cudnn.deterministic = False`` and ``cudnn.benchmark = True`` (cuDNN times its algorithms for each new shape and
    keeps the fastest, which may be non-deterministic; atomics-based kernels are allowed). On CUDA either way:
    :func:`configure_kernels` (no TF32, no filling of new allocations). On the CPU nothing is changed either: the CPU kernels these methods use are deterministic for a
    fixed number of threads (tests: ``tests/test_runner.py``'s resumed run equals the uninterrupted one).

    Operations of the eight methods without a deterministic CUDA kernel (read from ``help(torch.use_deterministic_
    algorithms)`` of PyTorch 2.14 against every ``torch``/``F`` call in ``methods/`` and
    ``benchmark/kit/backbones.py``):

    * Relation Network: ``F.adaptive_avg_pool2d(h, 1)`` (``methods/relation.py``, the pool before the relation
      module's first linear layer): its backward on CUDA has no deterministic kernel (``AdaptiveAvgPool2d``, listed
      as raising). Under ``warn_only`` it warns and runs; ``h.mean((2, 3))`` computes the same pool with a
      deterministic backward (a change of the method's code, not made here: its CPU sums could differ in the last
      bit).
    * Everything else has a deterministic CUDA path under this mode: convolutions and BatchNorm (cuDNN with
      ``deterministic``), ``max_pool2d`` backward (a gather per input element, not listed), matrix products and
      ``cdist`` (cuBLAS with the workspace setting), ``nn.LSTM`` (Matching's FCE; cuDNN RNNs need the cuBLAS
      workspace setting), ``F.cross_entropy``/``F.nll_loss`` on ``[n, ways]`` logits (only the spatial
      ``nll_loss2d`` kernel is listed as non-deterministic), ``F.one_hot`` (a scatter of a scalar), indexing with a
      tensor and its backward (``index_put`` with accumulation uses its sorting kernel), ``masked_fill``,
      ``logsumexp``, ``log_softmax``, the ``torch._foreach_*`` optimiser kernels and ``torch.func`` (vmap/grad) over
      these. No method uses ``scatter_add``, ``index_add``, ``F.interpolate``, ``histc``, ``bincount`` with
      weights, ``cumsum`` on CUDA, ``median``, ``grid_sample`` or ``CTCLoss``. (``Episode.from_tensors`` calls
      ``bincount`` without weights, which is deterministic, on user labels only.)
    * On the CPU, runs of protonet, matching, relation, maml, reptile, meta-lstm, tadam and mtl (smoke profile, a few
      steps) under ``torch.use_deterministic_algorithms(True)`` raise nothing.

    ``python -m benchmark.gpu_check`` runs every main method under this mode on a GPU and lists any warning raised.
    """
    device = torch.device(device)
    out: dict[str, Any] = {}
    configure_kernels(device)
    if device.type == "cuda" and deterministic:
        if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
            if torch.cuda.is_initialized():
                out["cublas_note"] = ("CUBLAS_WORKSPACE_CONFIG set after CUDA was initialised: matrix products may "
                                      "stay non-deterministic if cuBLAS was used already")
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.deterministic = False
    return {**determinism_state(device), **out}


#: The start of PyTorch's warning for an operation without a deterministic CUDA kernel under warn-only determinism
#: (``torch.use_deterministic_algorithms(True, warn_only=True)``), e.g. "adaptive_avg_pool2d_backward_cuda does not
#: have a deterministic implementation, but you set 'torch.use_deterministic_algorithms(True, warn_only=True)'...".
NONDETERMINISTIC_WARNING = "does not have a deterministic implementation"


def nondeterministic_op(message: str) -> str | None:
    """The operation a warning names when it is PyTorch's warning about an operation without a deterministic kernel
    (:data:`NONDETERMINISTIC_WARNING`), else None."""
    text = str(message)
    if NONDETERMINISTIC_WARNING not in text:
        return None
    return text.split(NONDETERMINISTIC_WARNING, 1)[0].strip() or "an operation"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but PyTorch sees no CUDA device; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
    return torch.device(name)


class PeakMemory:
    """Peak memory during a block: resident set size of the process (CPU), or allocated CUDA memory.

    ``mb`` is the peak itself; on the CPU it includes whatever the process held when the block began (earlier runs
    of the same job, imported libraries), so it rises with a run's place in the job. ``increase_mb`` is the peak
    minus the level when the block began (resident set on the CPU, allocated CUDA memory on a GPU): what the run
    itself added, comparable between runs of one job and of different jobs."""

    def __init__(self, device: torch.device):
        self.device, self.peak_bytes, self.start_bytes = device, 0, 0
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
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self.peak_bytes = self.start_bytes = self._rss()
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

    @property
    def increase_mb(self) -> float:
        return max(self.peak_bytes - self.start_bytes, 0) / 2 ** 20


def placement(device: torch.device, executor: str = "sequential", **extra: Any) -> dict[str, Any]:
    """Where a run ran, for its summary (``placement``) and the leaderboard: the executor, the node (host name, plus
    the Ray node id under Ray), the process, the CPU threads PyTorch used and the share of a GPU it was given (1 for
    a CUDA run of the sequential executor, ``--gpus-per-run`` under Ray, None on CPU); ``extra`` adds or overrides."""
    import socket

    out = {"executor": executor, "node": socket.gethostname(), "pid": os.getpid(), "cpus": torch.get_num_threads(),
           "gpu_fraction": 1.0 if device.type == "cuda" else None}
    out.update(extra)
    return out


class NondeterministicOps:
    """Within the block (when ``active``: CUDA under warn-only deterministic algorithms), PyTorch's warnings about an
    operation without a deterministic kernel are collected as they arrive, not shown: each operation once in
    ``names`` (the list given, which a checkpoint saved meanwhile holds too), and ``on_op()`` is called. Other
    warnings are shown as usual."""

    def __init__(self, active: bool, names: list[str], on_op: Callable[[], None]):
        self.active, self.names, self.on_op = active, names, on_op

    def __enter__(self):
        if self.active:
            import warnings

            self._catch = warnings.catch_warnings()
            self._catch.__enter__()
            warnings.filterwarnings("always", message=f".*{NONDETERMINISTIC_WARNING}")
            shown = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                op = nondeterministic_op(message)
                if op is None:
                    return shown(message, category, filename, lineno, file, line)
                if op not in self.names:
                    self.names.append(op)
                self.on_op()

            warnings.showwarning = show
        return self

    def __exit__(self, *exc):
        if self.active:
            self._catch.__exit__(*exc)


# ------------------------------------------------------------------------------------------------ CPU tuning
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


def setup_torch(device: str, threads: int | None = None):
    """Prepare this process for PyTorch work: the allocator settings (:func:`tune_cpu`), PyTorch's CPU
    threads (``threads``: at least 1; None: PyTorch's default) and the device (``auto | cpu | cuda[:N]``); returns the
    ``torch.device``. UsageError for a device that is not there or a thread count below 1 (checked before torch is
    imported; 0 is refused rather than read as "the default": omit ``--threads`` for that)."""
    from ..cli.toolkit import UsageError, at_least

    at_least("--threads", threads)
    tune_cpu()
    if threads:
        torch.set_num_threads(threads)
    try:
        return resolve_device(device)
    except ValueError as e:
        raise UsageError(str(e)) from None

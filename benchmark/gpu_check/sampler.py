"""The GPU check's utilisation samples: :class:`GpuSampler`, a thread sampling the GPU while a part's jobs run."""
from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path


class GpuSampler:
    """Samples GPU utilisation (%) and memory used (MiB) every ``every`` seconds in a thread: ``nvidia-smi`` when it
    is on the PATH, else ``torch.cuda.utilization()`` / ``memory_used`` when CUDA is available; nothing otherwise."""

    def __init__(self, every: float = 2.0):
        self.every, self.samples, self.source = every, [], None
        self._stop = threading.Event()
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
        else:
            import torch

            if torch.cuda.is_available():
                self.source = "torch.cuda.utilization"
        self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)

    def _sample(self) -> tuple[float, float] | None:
        try:
            if self.source == "nvidia-smi":
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                     timeout=10).stdout.strip().splitlines()
                util, mem = (float(v) for v in out[0].split(","))
                return util, mem
            if self.source:
                import torch

                return float(torch.cuda.utilization()), float(torch.cuda.memory_used()) / 2 ** 20
        except Exception:  # noqa: BLE001 - a missed sample is only a missed sample
            return None
        return None

    def _loop(self):
        while not self._stop.wait(self.every):
            s = self._sample()
            if s is not None:
                self.samples.append(s)

    def __enter__(self):
        if self.source:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def save(self, path: Path) -> None:
        """The samples as CSV (sample number, seconds since the first, utilisation %, memory used MiB)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = ["sample,seconds,utilisation_percent,memory_used_mib"]
        rows += [f"{i},{i * self.every:g},{u:g},{m:g}" for i, (u, m) in enumerate(self.samples)]
        path.write_text("\n".join(rows) + "\n")

    def summary(self) -> str:
        if not self.source:
            return "GPU utilisation: not sampled (no nvidia-smi and no CUDA)"
        if not self.samples:
            return f"GPU utilisation: no sample ({self.source})"
        util = [u for u, _ in self.samples]
        mem = [m for _, m in self.samples]
        return (f"GPU utilisation ({self.source}, {len(util)} samples every {self.every:g} s): mean "
                f"{sum(util) / len(util):.0f}%, max {max(util):.0f}%; memory used max {max(mem):.0f} MiB")


"""What a worker process of the Ray and pool executors gets besides each run's configuration and data folder
(:class:`WorkerJob`), and what both executors share: the grace of an interrupt, the workers' notes on stderr."""
from __future__ import annotations

import sys
from dataclasses import dataclass

from ...cli.toolkit import LineProgress
from ..runner import JobTemplate

#: seconds the runs being trained have to save their checkpoints after Ctrl-C (Ray and the process pool)
INTERRUPT_GRACE_S = 60.0


def stderr_note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class WorkerJob:
    """What a worker process needs to carry out runs besides each run's configuration and data folder; picklable.
    ``template``: the command's, with the driver's results folder (absolute) and the worker's device; ``executor``
    ("ray" or "processes", recorded in the placement); ``threads``: PyTorch's threads in the worker;
    ``progress_lines``: print a progress line per run every 15 s (:class:`~benchmark.cli.toolkit.LineProgress`);
    ``gpus``: the share of a GPU the run has (placement; None on the CPU); Ray only: ``shared`` (the driver's results
    folder is visible here; None: detect it by the marker ``.driver-<token>``), ``token`` and ``origin``
    (:func:`~benchmark.pipeline.executors.ray_executor.local_results_dir`)."""

    template: JobTemplate
    executor: str
    threads: int = 1
    progress_lines: bool = True
    gpus: float | None = None
    shared: bool | None = True
    token: str = ""
    origin: str = ""

    def progress(self, run_id: str):
        return LineProgress(run_id) if self.progress_lines else None


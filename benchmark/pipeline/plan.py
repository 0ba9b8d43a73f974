"""The frozen plan of a ``benchmark.run`` command line: what :func:`benchmark.run.plan` returns once every argument
has been checked, and all that the rest of the command reads (never ``args``).

A :class:`Plan` holds the prepared runs (each with its one configuration, ``prepared.cfg``), the results folder as a
:class:`~pathlib.Path`, the device, the :class:`~benchmark.pipeline.execution.Execution`, the executor chosen with its
settings (:class:`RaySettings`, :class:`ProcessSettings`), the lock policy, model saving, progress and where the
report goes. :meth:`Plan.template` is the :class:`~benchmark.pipeline.runner.JobTemplate` every run of the command
shares.

This module imports no PyTorch (the runner, which does, is imported by :meth:`Plan.template` when called).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .execution import Execution

#: seconds a Ray cluster's address (HOST:PORT) has to accept a TCP connection
#: (:func:`benchmark.pipeline.executors.check_ray_address`)
RAY_PROBE_TIMEOUT_S = 5.0
#: seconds ``ray.init`` has to join a running Ray cluster; a local instance is started without a limit
#: (:class:`benchmark.pipeline.executors.RayExecutor`)
RAY_INIT_TIMEOUT_S = 60.0
#: the executors of ``--executor`` (:mod:`benchmark.pipeline.executors`)
EXECUTORS = ("sequential", "ray", "processes")


@dataclass(frozen=True)
class RaySettings:
    """``--executor ray``: the cluster to join (``address``; empty: a local instance), CPUs and GPU share reserved per
    run (``cpus_per_run`` is also PyTorch's threads in the task; ``gpus_per_run`` may be a fraction below 1, or a
    whole number), times a task whose worker died is retried (``max_retries``) and whether the workers see the
    driver's results folder (``shared``; None: detected by a marker file, the command line's)."""

    address: str = ""
    cpus_per_run: int = 1
    gpus_per_run: float = 0.0
    max_retries: int = 3
    shared: bool | None = None


@dataclass(frozen=True)
class ProcessSettings:
    """``--executor processes``: the number of worker processes (``workers``), PyTorch's threads in each (``threads``;
    None: the machine's cores divided by the workers, at least 1) and how many times the runs that were being trained
    when a worker process died are started again (``max_retries``; from their checkpoints)."""

    workers: int = 2
    threads: int | None = None
    max_retries: int = 3


@dataclass(frozen=True)
class Plan:
    """A checked command line (see the module's docstring). ``executor`` is one of :data:`EXECUTORS`; ``settings``
    its :class:`RaySettings` or :class:`ProcessSettings` (None for the sequential executor); ``report_dir`` is None
    with ``--no-report``; ``progress``: show progress bars and lines."""

    runs: tuple  # of benchmark.pipeline.config.PreparedRun, in the command line's order
    results_dir: Path
    device: Any  # torch.device
    execution: Execution
    executor: str = "sequential"
    settings: RaySettings | ProcessSettings | None = None
    if_locked: str = "wait"
    save_model: bool = True
    progress: bool = True
    report_dir: Path | None = None

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise ValueError(f"unknown executor {self.executor!r}; choose from {', '.join(EXECUTORS)}")
        object.__setattr__(self, "runs", tuple(self.runs))
        object.__setattr__(self, "results_dir", Path(self.results_dir))

    @property
    def run_ids(self) -> list[str]:
        return [p.cfg.run_id for p in self.runs]

    def template(self):
        """The :class:`~benchmark.pipeline.runner.JobTemplate` of every run of this plan."""
        from .runner import JobTemplate

        return JobTemplate(self.results_dir, self.device, self.if_locked, self.save_model, self.execution)

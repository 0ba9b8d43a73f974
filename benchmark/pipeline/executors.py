"""Executors: how the runs of one command are carried out, behind one small interface used by ``benchmark.run``.

* :class:`SequentialExecutor` (the default, ``--executor sequential``): one run after another in this process.
* :class:`RayExecutor` (``--executor ray``): each run is a Ray task (Ray Core, ``ray.remote``) with ``num_cpus``
  (``--cpus-per-run``, also PyTorch's threads in the task), ``num_gpus`` (``--gpus-per-run``, fractions let several
  runs share a GPU) and ``max_retries`` (``--max-retries``: a task whose worker dies is run again, and the retry
  resumes from the run's checkpoint). ``--ray-address ''`` starts a local Ray instance; ``auto`` or ``host:port``
  joins a cluster. Ray is an optional dependency (``pip install -e '.[distributed]'``).

Both build one :class:`~benchmark.pipeline.runner.RunJob` per run (with its placement) and execute it with the same
function, :func:`benchmark.pipeline.runner.run_job`, which returns its :class:`~benchmark.pipeline.runner.Outcome`, so a run's records
are the same whichever executor ran it; only the driver (``benchmark.run``) writes the
leaderboard and the report. The task receives the small :class:`~benchmark.pipeline.config.RunConfig` and prepares the run
itself (datasets are cached per worker process), never large arrays.

Results directory: when the workers see the driver's results directory (one machine, or a shared filesystem; told by
a marker file the driver writes and the task looks for) they write there directly. Otherwise the task runs under a
local folder of its node and sends the finished (or failed) run folder back as bytes, which the driver writes
atomically (:meth:`~benchmark.store.folders.RunFolder.unpack`); a retry on the same node then resumes from its local
checkpoint.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable


from .execution import Execution
from .registry import FILES_ENV
from ..store.folders import RunFolder
from .runner import Outcome, RunJob, failure_record, prepare, run_job

__all__ = ["Outcome", "RayExecutor", "SequentialExecutor", "import_ray"]

RAY_MISSING = ("--executor ray needs Ray, an optional extra: pip install -e '.[distributed]' "
               "(or pip install 'ray[default]')")
MARKER_PREFIX = ".driver-"  # <results_dir>/.driver-<token>: the driver's marker for the shared-filesystem check


class SequentialExecutor:
    """The runs one after another in this process (``--executor sequential``)."""

    name = "sequential"

    def __init__(self, results_dir: Path, device, progress=None, if_locked: str = "wait",
                 note: Callable[[str], None] = print, save_model: bool = True, execution: Execution | None = None):
        self.results_dir, self.device = Path(results_dir), device
        self.progress, self.if_locked, self.note, self.save_model = progress, if_locked, note, save_model
        self.execution = execution or Execution()

    def execute(self, prepared: list, on_outcome: Callable[[Outcome], None]) -> list[Outcome]:
        """Run every prepared run; ``on_outcome`` is called as each ends. Ctrl-C raises
        :class:`~benchmark.pipeline.training.Interrupted` (the run's checkpoint saved)."""
        from .machine import placement

        outs = []
        for p in prepared:
            o = run_job(RunJob(p, self.results_dir, self.device, placement(self.device, self.name), self.if_locked,
                               self.save_model, self.progress, self.note, execution=self.execution))
            outs.append(o)
            on_outcome(o)
        return outs


# ------------------------------------------------------------------------------------------------ Ray
def import_ray():
    """The ``ray`` module; ImportError with :data:`RAY_MISSING` when it is not installed."""
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_MISSING) from None
    return ray


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


def local_results_dir(origin: str) -> Path:
    """Where a task runs when it cannot see the driver's results directory (``origin``: driver host and results
    directory): a folder of this node, the same for every task and every command with that origin, so a retry or a
    re-run on this node resumes from its checkpoint, and shared artefacts are computed once per node."""
    h = hashlib.sha256(origin.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "fewshot-benchmark-ray" / h


def ray_task(cfg, results_dir: str, token: str, origin: str, data_dir, device_name: str, cpus: int, gpus: float,
             if_locked: str, progress_lines: bool, shared: bool | None, save_model: bool = True,
             execution: Execution | None = None) -> dict:
    """The body of one Ray task: set PyTorch's threads to the run's CPUs, prepare ``cfg`` and run it with
    :func:`~benchmark.pipeline.runner.run_job`, and return its outcome, with the run folder's files when the driver's results directory is not
    visible here (``shared``: None detects it by the driver's marker file ``.driver-<token>``)."""
    import torch

    from .machine import placement
    from .machine import tune_cpu

    tune_cpu()
    torch.set_num_threads(max(1, int(cpus)))
    if shared is None:
        marker = Path(results_dir) / f"{MARKER_PREFIX}{token}"
        shared = marker.is_file()
    here = Path(results_dir) if shared else local_results_dir(origin)
    device = torch.device(device_name)
    try:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - called outside Ray (tests)
        node_id = None
    where = placement(device, "ray", node=socket.gethostname(), ray_node_id=node_id, cpus=torch.get_num_threads(),
                      gpu_fraction=gpus or None, shared_results_dir=shared)
    progress = LineProgress(cfg.run_id) if progress_lines else None
    note = lambda t: print(t, file=sys.stderr, flush=True)  # noqa: E731 - forwarded to the driver by Ray
    o = run_job(RunJob(prepare(cfg, data_dir), here, device, where, if_locked, save_model, progress, note,
                       execution=execution or Execution()))  # determinism set up in run_job, before CUDA work
    out = {"outcome": o, "files": None}
    if not shared and o.status in ("done", "failed"):
        local = RunFolder(here, cfg.run_id)
        out["files"] = local.pack(finished=o.status == "done")
        if o.status == "done":  # the driver keeps it now; a failed run's partial folder stays here, to resume from
            shutil.rmtree(local.path, ignore_errors=True)
    return out


class RayExecutor:
    """Each run as a Ray task (``--executor ray``); see the module's docstring."""

    name = "ray"

    def __init__(self, results_dir: Path, device, address: str = "", cpus_per_run: int = 1,
                 gpus_per_run: float = 0.0, max_retries: int = 3, if_locked: str = "wait",
                 progress_lines: bool = True, shared: bool | None = None, note: Callable[[str], None] = print,
                 save_model: bool = True, execution: Execution | None = None):
        self.results_dir, self.device = Path(results_dir), device
        self.execution = execution or Execution()
        self.address, self.cpus, self.gpus, self.max_retries = address, cpus_per_run, gpus_per_run, max_retries
        self.if_locked, self.progress_lines, self.shared, self.note = if_locked, progress_lines, shared, note
        self.save_model = save_model

    def _init(self, ray) -> bool:
        """Connect to Ray unless this process already is; True when this call did (and so shuts it down)."""
        if ray.is_initialized():
            return False
        import logging

        kw = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=self.progress_lines)
        if self.address:
            ray.init(address=self.address, **kw)
        else:  # a local instance on this machine; its workers import this code from where the driver does
            root = str(Path(__file__).resolve().parents[1])
            path = os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
            env = {"PYTHONPATH": path}
            if os.environ.get(FILES_ENV):  # --method-file: the workers load the same method files
                env[FILES_ENV] = os.environ[FILES_ENV]
            ray.init(runtime_env={"env_vars": env}, **kw)
        return True

    def execute(self, prepared: list, on_outcome: Callable[[Outcome], None]) -> list[Outcome]:
        """Submit every prepared run as a task, and hand each outcome to ``on_outcome`` as it arrives. Ctrl-C
        cancels the tasks (each saves its checkpoint, as a Ctrl-C in one process does) and raises
        :class:`~benchmark.pipeline.training.Interrupted`."""
        from .training import Interrupted

        ray = import_ray()
        started = self._init(ray)
        token = uuid.uuid4().hex
        origin = f"{socket.gethostname()}:{self.results_dir.resolve()}"
        marker = self.results_dir / f"{MARKER_PREFIX}{token}"
        self.results_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text("the driver of a benchmark.run --executor ray command; removed when it ends\n")
        try:
            task = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus or 0, max_retries=self.max_retries,
                              retry_exceptions=False)(ray_task)
            device_name = "cuda" if self.gpus else "cpu"
            refs = {}
            for p in prepared:
                ref = task.options(name=p.cfg.run_id).remote(
                    p.cfg, str(self.results_dir.resolve()), token, origin, p.data_dir, device_name, self.cpus,
                    self.gpus, self.if_locked, self.progress_lines, self.shared, self.save_model, self.execution)
                refs[ref] = p.cfg
            total = ray.cluster_resources()
            self.note(f"{len(refs)} run(s) submitted as Ray tasks ({self.cpus} CPU, {self.gpus or 0:g} GPU each; the "
                      f"cluster has {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs, "
                      f"{len(ray.nodes())} node(s))")
            outs, pending = [], list(refs)
            try:
                while pending:
                    done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                    for ref in done:
                        o = self._collect(ray, ref, refs[ref])
                        outs.append(o)
                        on_outcome(o)
            except KeyboardInterrupt:
                for ref in pending:
                    ray.cancel(ref)  # KeyboardInterrupt in the task: it saves its checkpoint and stops
                if pending:
                    ray.wait(pending, num_returns=len(pending), timeout=60)
                raise Interrupted(f"interrupted; {len(pending)} run(s) cancelled (those that had started saved their "
                                  "checkpoint); run the same command again to resume") from None
            return outs
        finally:
            marker.unlink(missing_ok=True)
            if started:
                ray.shutdown()

    def _collect(self, ray, ref, cfg) -> Outcome:
        """The outcome of a finished task; its run folder written here when the task sent it; a task that could not
        be completed (its worker died more than ``max_retries`` times) is recorded as failed."""
        folder = RunFolder(self.results_dir, cfg.run_id)
        try:
            res = ray.get(ref)
        except ray.exceptions.RayError as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            record = failure_record("task_error", f"{type(e).__name__}: {reason}", {"executor": "ray"})
            folder.fail(record, str(e))
            return Outcome(cfg.run_id, "failed", failure=record)
        o = res["outcome"]
        if res["files"] is not None:
            folder.unpack(res["files"], finished=o.status == "done")
        return o

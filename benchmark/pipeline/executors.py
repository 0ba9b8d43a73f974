"""Executors: how the runs of one command are carried out, behind one small interface used by ``benchmark.run``.

* :class:`SequentialExecutor` (the default, ``--executor sequential``): one run after another in this process.
* :class:`RayExecutor` (``--executor ray``): each run is a Ray task (Ray Core, ``ray.remote``) with ``num_cpus``
  (``--cpus-per-run``, also PyTorch's threads in the task), ``num_gpus`` (``--gpus-per-run``, fractions let several
  runs share a GPU) and ``max_retries`` (``--max-retries``: a task whose worker dies is run again, and the retry
  resumes from the run's checkpoint). ``--ray-address ''`` starts a local Ray instance; ``auto`` or ``host:port``
  joins a cluster (an address that does not answer is refused in one line: :func:`check_ray_address`). Ray is an
  optional dependency (``pip install -e '.[distributed]'``).
* :class:`ProcessExecutor` (``--executor processes --workers N``): the runs packed on this machine without Ray, in
  a pool of N worker processes of the standard library (``concurrent.futures``, spawn start method), each with
  ``cores // N`` PyTorch threads and, on CUDA, one of the visible GPUs (round-robin: several workers per GPU).

Every executor fills one :class:`~benchmark.pipeline.runner.RunJob` per run from the command's
:class:`~benchmark.pipeline.runner.JobTemplate` (``dataclasses.replace(job, prepared=...)``) and executes it with the
same function, :func:`benchmark.pipeline.runner.run_job`, which returns its
:class:`~benchmark.pipeline.runner.Outcome`, so a run's records (and its lock) are the same whichever executor ran it;
only the driver (``benchmark.run``) writes the leaderboard and the report. A worker process (a Ray task, a pool
process) receives the small :class:`~benchmark.pipeline.config.RunConfig`, its data folder and a :class:`WorkerJob`
(the template and the worker's settings, all picklable) and prepares the run itself (datasets are cached per worker
process), never large arrays.

Results directory (Ray): when the workers see the driver's results directory (one machine, or a shared filesystem;
told by a marker file the driver writes and the task looks for) they write there directly. Otherwise the task runs
under a local folder of its node and sends the finished (or failed) run folder back as bytes, which the driver writes
atomically (:meth:`~benchmark.store.folders.RunFolder.unpack`); a retry on the same node then resumes from its local
checkpoint. The pool's workers are on the driver's machine and write there directly.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..store.folders import RunFolder
from . import plan as _plan
from .plan import ProcessSettings, RaySettings
from .registry import FILES_ENV
from .runner import JobTemplate, Outcome, RunJob, failure_record, prepare, record_failure, run_job

__all__ = ["ClusterError", "Outcome", "ProcessExecutor", "RayExecutor", "SequentialExecutor", "WorkerJob",
           "check_ray_address", "import_ray"]

RAY_MISSING = ("--executor ray needs Ray, an optional extra: pip install -e '.[distributed]' "
               "(or pip install 'ray[default]')")
MARKER_PREFIX = ".driver-"  # <results_dir>/.driver-<token>: the driver's marker for the shared-filesystem check
#: seconds the runs being trained have to save their checkpoints after Ctrl-C (Ray and the process pool)
INTERRUPT_GRACE_S = 60.0


class ClusterError(RuntimeError):
    """Ray cannot take the runs: its address does not answer, joining takes too long, or GPUs are asked for on a
    cluster without any. Raised before any run is submitted; the command prints it in one line and exits 2."""


def _stderr_note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class SequentialExecutor:
    """The runs one after another in this process (``--executor sequential``): ``template`` is the command's
    :class:`~benchmark.pipeline.runner.JobTemplate`, ``progress`` the bars' factory, ``note`` prints messages."""

    name = "sequential"

    def __init__(self, template: JobTemplate, progress: Callable | None = None,
                 note: Callable[[str], None] = print):
        self.template, self.progress, self.note = template, progress, note

    def execute(self, prepared: list, on_outcome: Callable[[Outcome], None]) -> list[Outcome]:
        """Run every prepared run; ``on_outcome`` is called as each ends. Ctrl-C raises
        :class:`~benchmark.pipeline.training.Interrupted` (the run's checkpoint saved)."""
        from .machine import placement

        job = RunJob(None, self.template, placement(self.template.device, self.name), self.progress, self.note)
        outs = []
        for p in prepared:
            o = run_job(dataclasses.replace(job, prepared=p))
            outs.append(o)
            on_outcome(o)
        return outs


@dataclass(frozen=True)
class WorkerJob:
    """What a worker process needs to carry out runs besides each run's configuration and data folder; picklable.
    ``template``: the command's, with the driver's results folder (absolute) and the worker's device; ``executor``
    ("ray" or "processes", recorded in the placement); ``threads``: PyTorch's threads in the worker;
    ``progress_lines``: print a progress line per run every 15 s (:class:`LineProgress`); ``gpus``: the share of a GPU
    the run has (placement; None on the CPU); Ray only: ``shared`` (the driver's results folder is visible here;
    None: detect it by the marker ``.driver-<token>``), ``token`` and ``origin`` (:func:`local_results_dir`)."""

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


def check_ray_address(address: str, timeout: float | None = None) -> None:
    """:class:`ClusterError` (one line) when ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``) does not accept a TCP
    connection within ``timeout`` seconds (default :data:`~benchmark.pipeline.plan.RAY_PROBE_TIMEOUT_S`); an empty
    address (a local instance) and ``auto`` (Ray finds the running cluster itself, or says there is none) are not
    probed."""
    text = address.strip()
    if not text or text == "auto":
        return
    hostport = text.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"--ray-address {address!r} is not HOST:PORT (or auto, or empty for a local Ray instance)")
    timeout = _plan.RAY_PROBE_TIMEOUT_S if timeout is None else timeout
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise ClusterError(f"--ray-address {address}: the Ray cluster does not answer ({why} within {timeout:g} s); "
                           "start it (ray start --head) or check the address") from None


def ray_task(cfg, data_dir, job: WorkerJob) -> dict:
    """The body of one Ray task: set PyTorch's threads (``job.threads``), prepare ``cfg`` from ``data_dir`` and run
    it with :func:`~benchmark.pipeline.runner.run_job`, and return its outcome, with the run folder's files when the
    driver's results directory is not visible here (``job.shared``: None detects it by the driver's marker file
    ``.driver-<token>``)."""
    import torch

    from .machine import placement, tune_cpu

    tune_cpu()
    torch.set_num_threads(max(1, int(job.threads)))
    shared = job.shared
    if shared is None:
        shared = (job.template.results_dir / f"{MARKER_PREFIX}{job.token}").is_file()
    here = job.template.results_dir if shared else local_results_dir(job.origin)
    try:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - called outside Ray (tests)
        node_id = None
    where = placement(job.template.device, job.executor, node=socket.gethostname(), ray_node_id=node_id,
                      cpus=torch.get_num_threads(), gpu_fraction=job.gpus or None, shared_results_dir=shared)
    template = dataclasses.replace(job.template, results_dir=here)
    o = run_job(RunJob(prepare(cfg, data_dir), template, where, job.progress(cfg.run_id),
                       _stderr_note))  # forwarded to the driver by Ray; determinism set up in run_job
    out = {"outcome": o, "files": None}
    if not shared and o.status in ("done", "failed"):
        local = RunFolder(here, cfg.run_id)
        out["files"] = local.pack(finished=o.status == "done")
        if o.status == "done":  # the driver keeps it now; a failed run's partial folder stays here, to resume from
            shutil.rmtree(local.path, ignore_errors=True)
    return out


class RayExecutor:
    """Each run as a Ray task (``--executor ray``; see the module's docstring): ``template`` is the command's
    :class:`~benchmark.pipeline.runner.JobTemplate`, ``settings`` its :class:`~benchmark.pipeline.plan.RaySettings`,
    ``progress_lines``: each task prints a progress line per run every 15 s; ``note`` prints the driver's messages."""

    name = "ray"

    def __init__(self, template: JobTemplate, settings: RaySettings = RaySettings(), progress_lines: bool = True,
                 note: Callable[[str], None] = print):
        self.template, self.settings, self.progress_lines, self.note = template, settings, progress_lines, note

    def _init(self, ray) -> bool:
        """Connect to Ray unless this process already is; True when this call did (and so shuts it down).
        :class:`ClusterError` when the address does not answer (:func:`check_ray_address`) or joining it takes more
        than :data:`~benchmark.pipeline.plan.RAY_INIT_TIMEOUT_S` seconds."""
        if ray.is_initialized():
            return False
        import logging

        kw = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=self.progress_lines)
        address = self.settings.address
        if address:
            check_ray_address(address)
            kw["address"] = address
        else:  # a local instance on this machine; its workers import this code from where the driver does
            root = str(Path(__file__).resolve().parents[2])
            path = os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
            env = {"PYTHONPATH": path}
            if os.environ.get(FILES_ENV):  # --method-file: the workers load the same method files
                env[FILES_ENV] = os.environ[FILES_ENV]
            kw["runtime_env"] = {"env_vars": env}
            # Started from the main thread: started from a helper thread, the local instance's driver lost its GCS
            # connection after 60 s and the command died (tests/test_plugins.py::test_method_file_reaches_ray_workers)
            ray.init(**kw)
            return True
        limit = _plan.RAY_INIT_TIMEOUT_S
        _within(limit, lambda: ray.init(**kw), f"Ray did not join {address} within {limit:g} s")
        return True

    def _check_gpus(self, ray) -> dict:
        """The cluster's resources; :class:`ClusterError` when runs ask for GPUs and it has none (Ray would keep
        the tasks waiting for a GPU forever)."""
        total = ray.cluster_resources()
        if self.settings.gpus_per_run and not total.get("GPU", 0):
            raise ClusterError(f"--gpus-per-run {self.settings.gpus_per_run:g}: the Ray cluster has no GPU "
                               f"({total.get('CPU', 0):g} CPUs, {len(ray.nodes())} node(s)); use --device cpu, or "
                               "join a cluster with GPUs (--ray-address)")
        return total

    def execute(self, prepared: list, on_outcome: Callable[[Outcome], None]) -> list[Outcome]:
        """Submit every prepared run as a task, and hand each outcome to ``on_outcome`` as it arrives. Ctrl-C
        cancels the tasks (each saves its checkpoint, as a Ctrl-C in one process does) and raises
        :class:`~benchmark.pipeline.training.Interrupted`."""
        import torch

        from .training import Interrupted

        ray = import_ray()
        started = self._init(ray)
        s = self.settings
        results_dir = self.template.results_dir.resolve()
        token = uuid.uuid4().hex
        marker = results_dir / f"{MARKER_PREFIX}{token}"
        try:
            total = self._check_gpus(ray)
            results_dir.mkdir(parents=True, exist_ok=True)
            marker.write_text("the driver of a benchmark.run --executor ray command; removed when it ends\n")
            task = ray.remote(num_cpus=s.cpus_per_run, num_gpus=s.gpus_per_run or 0, max_retries=s.max_retries,
                              retry_exceptions=False)(ray_task)
            template = dataclasses.replace(self.template, results_dir=results_dir,
                                           device=torch.device("cuda" if s.gpus_per_run else "cpu"))
            job = WorkerJob(template, self.name, s.cpus_per_run, self.progress_lines, s.gpus_per_run or None,
                            s.shared, token, f"{socket.gethostname()}:{results_dir}")
            refs = {task.options(name=p.cfg.run_id).remote(p.cfg, p.data_dir, job): p.cfg for p in prepared}
            self.note(f"{len(refs)} run(s) submitted as Ray tasks ({s.cpus_per_run} CPU, {s.gpus_per_run or 0:g} GPU "
                      f"each; the cluster has {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs, "
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
                    ray.wait(pending, num_returns=len(pending), timeout=INTERRUPT_GRACE_S)
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
        folder = RunFolder(self.template.results_dir, cfg.run_id)
        try:
            res = ray.get(ref)
        except ray.exceptions.RayError as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            record = failure_record("task_error", f"{type(e).__name__}: {reason}", {"executor": "ray"})
            return Outcome(cfg.run_id, "failed", failure=record_failure(folder, record, str(e)))
        o = res["outcome"]
        if res["files"] is not None:
            folder.unpack(res["files"], finished=o.status == "done")
        return o


def _within(seconds: float, fn: Callable[[], object], message: str):
    """``fn()``'s value, called in a daemon thread; :class:`ClusterError` (``message``) when it has not returned
    within ``seconds`` (the thread is left behind: the command then ends). Its exception is raised here."""
    box: dict = {}

    def call():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=call, daemon=True, name="ray-init")
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise ClusterError(message)
    if "error" in box:
        err = box["error"]
        if isinstance(err, ConnectionError):
            raise ClusterError(f"{message.split(' within ')[0]}: {str(err).strip().splitlines()[0]}") from None
        raise err
    return box.get("value")


# ------------------------------------------------------------------------------------------------ process pool
_WORKER: dict = {}  # the pool worker's own settings, set by _init_worker: its device


def _init_worker(threads: int, devices: list[str], counter) -> None:
    """A pool worker's start (spawn: a fresh interpreter): Ctrl-C is ignored while no run is being trained (a run
    catches it, see :func:`process_task`), the allocator and PyTorch's threads are set up, and the worker takes the
    next of ``devices`` round-robin (``counter``: the workers started so far), made its current CUDA device."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from .machine import tune_cpu, use_device

    with counter.get_lock():
        index = counter.value
        counter.value += 1
    tune_cpu()
    torch.set_num_threads(max(1, int(threads)))
    _WORKER["device"] = torch.device(devices[index % len(devices)])
    use_device(_WORKER["device"])  # before any CUDA work: the worker's context opens on its own GPU, not on GPU 0


def _interrupt_once(signum, frame):
    """A run's first Ctrl-C stops it (its checkpoint saved); further ones, e.g. the driver's forwarded one after
    the terminal's, are ignored so that they do not cut the checkpoint's saving short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def process_task(cfg, data_dir, job: WorkerJob) -> Outcome:
    """The body of one run in a pool worker (``--executor processes``): prepare ``cfg`` from ``data_dir`` and run it
    with :func:`~benchmark.pipeline.runner.run_job` on the worker's device; its outcome. Ctrl-C (SIGINT) during the
    run stops it with its checkpoint saved (:class:`~benchmark.pipeline.training.Interrupted`)."""
    from .machine import placement

    device = _WORKER.get("device", job.template.device)
    signal.signal(signal.SIGINT, _interrupt_once)
    try:
        where = placement(device, job.executor, gpu_fraction=job.gpus if device.type == "cuda" else None)
        template = dataclasses.replace(job.template, device=device)
        return run_job(RunJob(prepare(cfg, data_dir), template, where, job.progress(cfg.run_id), _stderr_note))
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_devices(device, workers: int) -> tuple[list[str], float | None]:
    """The devices of ``workers`` pool workers, round-robin, and each one's share of a GPU: on CUDA without an
    index, every visible GPU (several workers per GPU when there are more workers than GPUs); ``cuda:N``: that GPU;
    on the CPU, the CPU (share None)."""
    import torch

    if device.type != "cuda":
        return ["cpu"], None
    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if device.index is None else [str(device)]
    gpus = gpus or [str(device)]
    return gpus, min(1.0, len(gpus) / workers)


def cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ProcessExecutor:
    """The runs packed in a pool of worker processes on this machine (``--executor processes``; see the module's
    docstring): ``template`` is the command's :class:`~benchmark.pipeline.runner.JobTemplate`, ``settings`` its
    :class:`~benchmark.pipeline.plan.ProcessSettings`; ``progress_lines``: each worker prints a progress line per run
    every 15 s; ``note`` prints the driver's messages.

    A run that fails is recorded as failed by its worker, as in one process; an exception outside the run (e.g. in
    preparing it) is recorded as a failed task. A worker that dies (killed, out of memory) breaks the pool: the runs
    that had not finished are started again in a new pool (resuming from their checkpoints), and those that were being
    trained when it died count a retry; past ``max_retries`` they are recorded as failed. Ctrl-C (the terminal's,
    which the workers get too, or SIGTERM turned into one by the command) stops the runs being trained, each saving
    its checkpoint, within :data:`INTERRUPT_GRACE_S` seconds, and raises
    :class:`~benchmark.pipeline.training.Interrupted`."""

    name = "processes"

    def __init__(self, template: JobTemplate, settings: ProcessSettings = ProcessSettings(),
                 progress_lines: bool = True, note: Callable[[str], None] = print):
        self.template, self.settings, self.progress_lines, self.note = template, settings, progress_lines, note

    @property
    def threads(self) -> int:
        """PyTorch's threads in each worker: the settings', else the cores divided by the workers (at least 1)."""
        return self.settings.threads or max(1, cores() // self.settings.workers)

    def execute(self, prepared: list, on_outcome: Callable[[Outcome], None]) -> list[Outcome]:
        """Carry out every prepared run in the pool, and hand each outcome to ``on_outcome`` as it arrives."""
        from concurrent.futures.process import BrokenProcessPool

        devices, share = worker_devices(self.template.device, self.settings.workers)
        job = WorkerJob(dataclasses.replace(self.template, results_dir=self.template.results_dir.resolve()),
                        self.name, self.threads, self.progress_lines, share)
        todo = {p.cfg.run_id: p for p in prepared}
        deaths: dict[str, int] = {}
        outs: list[Outcome] = []
        self.note(f"{len(todo)} run(s) in {min(self.settings.workers, len(todo))} worker process(es) "
                  f"({self.threads} thread(s) each, on {', '.join(devices)})")
        while todo:
            running = self._pool(todo, job, devices, outs, on_outcome)
            if not running and not todo:
                break
            for run_id in running:  # the pool broke: a worker died while these were being trained
                deaths[run_id] = deaths.get(run_id, 0) + 1
                if deaths[run_id] > self.settings.max_retries:
                    p = todo.pop(run_id)
                    reason = (f"{BrokenProcessPool.__name__}: the worker process died {deaths[run_id]} time(s) "
                              "while training this run")
                    record = failure_record("task_error", reason, {"executor": self.name})
                    o = Outcome(p.cfg.run_id, "failed", failure=record_failure(
                        RunFolder(self.template.results_dir, p.cfg.run_id), record, reason))
                    outs.append(o)
                    on_outcome(o)
            if todo:
                self.note(f"a worker process died; {len(todo)} run(s) not finished, started again in a new pool "
                          "(from their checkpoints)")
        return outs

    def _pool(self, todo: dict, job: WorkerJob, devices: list[str], outs: list, on_outcome) -> list[str]:
        """One pool over the runs of ``todo`` (removed from it as they end); the run ids that were being trained when
        the pool broke (a worker died), else []."""
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        from .training import Interrupted

        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=min(self.settings.workers, len(todo)), mp_context=ctx,
                                   initializer=_init_worker, initargs=(job.threads, devices, ctx.Value("i", 0)))
        broken, started = False, set()
        try:
            futures = {pool.submit(process_task, p.cfg, p.data_dir, job): run_id for run_id, p in todo.items()}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                started |= {futures[f] for f in pending if f.running()}
                for f in done:
                    run_id = futures[f]
                    try:
                        o = f.result()
                    except BrokenProcessPool:
                        broken = True
                        continue
                    except (Interrupted, KeyboardInterrupt):  # a worker was stopped by Ctrl-C: so is the command
                        raise KeyboardInterrupt from None
                    except Exception as e:  # noqa: BLE001 - outside the run (e.g. preparing it): recorded as failed
                        reason = f"{type(e).__name__}: {e}".strip().splitlines()[0]
                        record = failure_record("task_error", reason, {"executor": self.name})
                        o = Outcome(run_id, "failed", failure=record_failure(
                            RunFolder(self.template.results_dir, run_id), record, reason))
                    todo.pop(run_id)
                    outs.append(o)
                    on_outcome(o)
        except KeyboardInterrupt:
            stopped = self._interrupt(pool, futures if "futures" in locals() else {})
            raise Interrupted(f"interrupted; {stopped} run(s) stopped (their checkpoints saved); run the same "
                              "command again to resume") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return sorted(started & set(todo)) if broken else []

    def _interrupt(self, pool, futures: dict) -> int:
        """Ctrl-C: cancel the runs not started, send SIGINT to the workers (again every second, for a run a worker
        took meanwhile; each run saves its checkpoint on the first) until the started runs end or
        :data:`INTERRUPT_GRACE_S` seconds have passed, then end the workers left. The number of runs stopped."""
        from concurrent.futures import wait

        from .training import Interrupted

        for f in futures:
            f.cancel()
        running = [f for f in futures if not f.done()]
        procs = list(getattr(pool, "_processes", {}).values())  # the pool's worker processes
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        while running and time.monotonic() < deadline:
            for proc in procs:
                if proc.is_alive():
                    try:
                        os.kill(proc.pid, signal.SIGINT)
                    except OSError:
                        pass
            _, left = wait(running, timeout=1.0)
            running = list(left)
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        return sum(1 for f in futures if f.done() and not f.cancelled()
                   and isinstance(f.exception(), (Interrupted, KeyboardInterrupt)))

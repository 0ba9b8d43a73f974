"""The process-pool executor (``--executor processes --workers N``): the runs packed on this machine without Ray, in
a pool of N worker processes of the standard library; see :mod:`benchmark.pipeline.executors`."""
from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Callable

from ...store.folders import RunFolder
from ..plan import ProcessSettings
from ..runner import JobTemplate, Outcome, RunJob, failure_record, prepare, record_failure, run_job
from .worker import INTERRUPT_GRACE_S, WorkerJob, stderr_note

_WORKER: dict = {}  # the pool worker's own settings, set by _init_worker: its device


def _init_worker(threads: int, devices: list[str], counter) -> None:
    """A pool worker's start (spawn: a fresh interpreter): Ctrl-C is ignored while no run is being trained (a run
    catches it, see :func:`process_task`), the allocator and PyTorch's threads are set up, and the worker takes the
    next of ``devices`` round-robin (``counter``: the workers started so far), made its current CUDA device."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from ..machine import tune_cpu, use_device

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
    from ..machine import placement

    device = _WORKER.get("device", job.template.device)
    signal.signal(signal.SIGINT, _interrupt_once)
    try:
        where = placement(device, job.executor, gpu_fraction=job.gpus if device.type == "cuda" else None)
        template = dataclasses.replace(job.template, device=device)
        return run_job(RunJob(prepare(cfg, data_dir), template, where, job.progress(cfg.run_id), stderr_note))
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

        from ..training import Interrupted

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

        from ..training import Interrupted

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

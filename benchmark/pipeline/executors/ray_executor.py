"""The Ray executor (``--executor ray``): each run as a Ray task; see :mod:`benchmark.pipeline.executors` (results
directories shared or sent back, retries). Ray is an optional dependency (``pip install -e '.[distributed]'``)."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Callable

from ...store.folders import RunFolder
from .. import plan as _plan
from ..plan import RaySettings
from ..registry import FILES_ENV
from ..runner import JobTemplate, Outcome, RunJob, failure_record, prepare, record_failure, run_job
from .worker import INTERRUPT_GRACE_S, WorkerJob, stderr_note

RAY_MISSING = ("--executor ray needs Ray, an optional extra: pip install -e '.[distributed]' "
               "(or pip install 'ray[default]')")
MARKER_PREFIX = ".driver-"  # <results_dir>/.driver-<token>: the driver's marker for the shared-filesystem check


class ClusterError(RuntimeError):
    """Ray cannot take the runs: its address does not answer, joining takes too long, or GPUs are asked for on a
    cluster without any. Raised before any run is submitted; the command prints it in one line and exits 2."""


def import_ray():
    """The ``ray`` module; ImportError with :data:`RAY_MISSING` when it is not installed."""
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_MISSING) from None
    return ray


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

    from ..machine import placement, tune_cpu

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
                       stderr_note))  # forwarded to the driver by Ray; determinism set up in run_job
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
            root = str(Path(__file__).resolve().parents[3])
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

        from ..training import Interrupted

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



"""Executors: how the runs of one command are carried out, behind one small interface used by ``benchmark.run``.

* :class:`SequentialExecutor` (the default, ``--executor sequential``; :mod:`.sequential`): one run after another
  in this process.
* :class:`RayExecutor` (``--executor ray``; :mod:`.ray_executor`): each run is a Ray task (Ray Core, ``ray.remote``)
  with ``num_cpus`` (``--cpus-per-run``, also PyTorch's threads in the task), ``num_gpus`` (``--gpus-per-run``,
  fractions let several runs share a GPU) and ``max_retries`` (``--max-retries``: a task whose worker dies is run
  again, and the retry resumes from the run's checkpoint). ``--ray-address ''`` starts a local Ray instance; ``auto``
  or ``host:port`` joins a cluster (an address that does not answer is refused in one line:
  :func:`check_ray_address`). Ray is an optional dependency (``pip install -e '.[distributed]'``).
* :class:`ProcessExecutor` (``--executor processes --workers N``; :mod:`.pool`): the runs packed on this machine
  without Ray, in a pool of N worker processes of the standard library (``concurrent.futures``, spawn start method),
  each with ``cores // N`` PyTorch threads and, on CUDA, one of the visible GPUs (round-robin: several workers per
  GPU).

Every executor fills one :class:`~benchmark.pipeline.runner.RunJob` per run from the command's
:class:`~benchmark.pipeline.runner.JobTemplate` (``dataclasses.replace(job, prepared=...)``) and executes it with the
same function, :func:`benchmark.pipeline.runner.run_job`, which returns its
:class:`~benchmark.pipeline.runner.Outcome`, so a run's records (and its lock) are the same whichever executor ran it;
only the driver (``benchmark.run``) writes the leaderboard and the report. A worker process (a Ray task, a pool
process) receives the small :class:`~benchmark.pipeline.config.RunConfig`, its data folder and a :class:`WorkerJob`
(the template and the worker's settings, all picklable; :mod:`.worker`) and prepares the run itself (datasets are
cached per worker process), never large arrays; a worker's progress lines are
:class:`~benchmark.cli.toolkit.LineProgress`.

Results directory (Ray): when the workers see the driver's results directory (one machine, or a shared filesystem;
told by a marker file the driver writes and the task looks for) they write there directly. Otherwise the task runs
under a local folder of its node and sends the finished (or failed) run folder back as bytes, which the driver writes
atomically (:meth:`~benchmark.store.folders.RunFolder.unpack`); a retry on the same node then resumes from its local
checkpoint. The pool's workers are on the driver's machine and write there directly.
"""
from __future__ import annotations

from ..runner import Outcome
from .pool import ProcessExecutor
from .ray_executor import RAY_MISSING, ClusterError, RayExecutor, check_ray_address, import_ray, local_results_dir
from .sequential import SequentialExecutor
from .worker import WorkerJob

__all__ = ["ClusterError", "Outcome", "ProcessExecutor", "RAY_MISSING", "RayExecutor", "SequentialExecutor",
           "WorkerJob", "check_ray_address", "import_ray", "local_results_dir"]

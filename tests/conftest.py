import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: torch threads per test process: 2 (the machine's cores) in one process; 1 in each of pytest-xdist's workers
#: (``-n 2``), so that two workers on two cores do not oversubscribe them. OMP_NUM_THREADS carries the same count
#: to the commands the tests start.
SUITE_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(SUITE_THREADS)


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): one worker per core this process may use: its CPU affinity, capped by a
    container's CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), which neither the affinity nor
    ``os.cpu_count()`` shows; at most 8 (the suite's 37 files gain little from more)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for quota, period in (("/sys/fs/cgroup/cpu.max", None), ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
                                                             "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            q = Path(quota).read_text().split()
            per = q[1] if period is None else Path(period).read_text().strip()
            if q[0] not in ("max", "-1"):
                cores = min(cores, max(1, -(-int(q[0]) // int(per))))
            break
        except (OSError, IndexError, ValueError):
            continue
    return max(1, min(cores, 8))


@pytest.fixture(autouse=True)
def _suite_threads():
    """Every test starts at the suite's torch threads: a command run in-process with ``--threads 1`` sets the
    process's count and leaves it, and a later test comparing against a shared reference run (``smoke_run``) would
    then train at another thread count and round differently."""
    torch.set_num_threads(SUITE_THREADS)
    yield


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long end-to-end test (whole method checks, worker processes, Ray, "
                                       "signals); CI runs them (python -m pytest -q runs every test), "
                                       "-m 'not slow' leaves them out of a quick local loop")


@pytest.fixture(scope="session")
def omniglot():
    from benchmark.data import load_dataset

    return load_dataset("omniglot")


class SmokeRun:
    """A finished run trained once for the session (see :func:`smoke_run`): ``results`` (its results directory),
    ``summary`` (as :func:`benchmark.pipeline.run` returned it), ``folder`` (its :class:`RunFolder`)."""

    def __init__(self, results: Path, summary: dict, run_id: str):
        from benchmark.store.folders import RunFolder

        self.results, self.summary, self.folder = results, summary, RunFolder(results, run_id)

    def episodes(self) -> list[float]:
        return self.folder.read_test_episodes()["accuracy"].tolist()


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """``smoke_run(cfg, threads=None)``: the run of ``cfg`` (a RunConfig) trained on the CPU once for the whole
    session, at ``threads`` torch threads (1: the reference of an executor's workers, which train on one thread so that
    even the rounding of the convolutions is the same; None: the suite's :data:`SUITE_THREADS`), and shared by every test
    that asks for it. For tests that only read it: a test that changes a record copies the folder first."""
    from benchmark.pipeline import run

    cache = {}

    def get(cfg, threads=None) -> SmokeRun:
        if (cfg, threads) not in cache:
            results = tmp_path_factory.mktemp("smoke-run")
            n = torch.get_num_threads()
            torch.set_num_threads(threads or SUITE_THREADS)
            try:
                summary = run(cfg, results, torch.device("cpu"))
            finally:
                torch.set_num_threads(n)
            cache[cfg, threads] = SmokeRun(results, summary, cfg.run_id)
        return cache[cfg, threads]

    return get

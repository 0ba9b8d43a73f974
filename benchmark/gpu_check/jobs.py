"""The GPU check's jobs: ``benchmark.run`` commands, each in a process group of its own for at most a time limit,
with its whole output kept in the check's logs folder; every job still running is stopped when the check ends
(:meth:`Jobs.stop_all`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

#: the checkout: the jobs' working folder, and first on their PYTHONPATH
ROOT = Path(__file__).resolve().parents[2]
#: seconds a stopped job has to save its checkpoints after Ctrl-C before it is killed
STOP_GRACE_S = 30.0


def python_run(args: list[str], device: str, deterministic: bool = True) -> list[str]:
    """A ``python`` command running ``benchmark.run`` with ``args`` after configuring determinism in its process;
    ``deterministic=False`` also passes ``--no-deterministic``, so that the runs themselves (which configure
    determinism for each run) allow non-deterministic kernels, not only the driver."""
    # Ctrl-C's handler restored first: a check started where SIGINT is ignored (``nohup``, a shell's ``&``) passes
    # that on to its jobs, which could then not save their checkpoints when stopped, only be killed after the grace
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from benchmark.pipeline.machine import configure_determinism, resolve_device; "
            f"configure_determinism(resolve_device({device!r}), deterministic={deterministic!r}); "
            "from benchmark.run import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", code, *args, "--device", device, "--no-report", "--no-progress",
            *([] if deterministic else ["--no-deterministic"])]


def packed(args: list[str], workers: int) -> list[str]:
    """``args`` run by ``workers`` processes of the processes executor (one GPU, several runs on it)."""
    return [*args, "--executor", "processes", "--workers", str(workers)]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _stop(procs: list, grace: float) -> None:
    """Ctrl-C to the process group of each of ``procs`` (its runs save their checkpoints), then, after ``grace``
    seconds, SIGKILL to what is left."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGINT)
        except OSError:
            pass
    end = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()


class Jobs:
    """The check's jobs: each started by :meth:`run_until` in a new process group and registered in ``children``
    while it runs, so that :meth:`stop_all` stops it whenever the check ends; ``logs``: the folder of their whole
    output (``<files>/logs``), None: not kept."""

    def __init__(self, logs: Path | None = None):
        self.logs, self.children, self._lock = logs, set(), threading.Lock()

    def log_path(self, name: str) -> Path | None:
        """``logs/<name>.log``, numbered (``<name>-2.log``, ...) when taken; None when no logs are kept."""
        if self.logs is None:
            return None
        self.logs.mkdir(parents=True, exist_ok=True)
        stem, k = name, 1
        while (self.logs / f"{stem}.log").exists():
            k += 1
            stem = f"{name}-{k}"
        return self.logs / f"{stem}.log"

    def run_until(self, cmd: list[str], timeout: float, name: str = "job", env: dict | None = None
                  ) -> tuple[int | None, str]:
        """Run ``cmd`` (a new process group, registered so that the check stops it whenever it ends) for at most
        ``timeout`` seconds; (exit code, or None when it was stopped: Ctrl-C first, so runs save their checkpoints,
        then killed after :data:`STOP_GRACE_S`; last output line). Its whole output goes to ``logs/<name>.log`` of
        the check's files folder; ``env``: variables added to its environment."""
        log = self.log_path(name)
        sink = open(log, "w") if log is not None else tempfile.TemporaryFile("w+")
        try:
            p = subprocess.Popen(cmd, cwd=ROOT, env={**_env(), **(env or {})}, stdout=sink,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
            with self._lock:
                self.children.add(p)
            try:
                p.wait(timeout=timeout)
                rc = p.returncode
            except subprocess.TimeoutExpired:
                _stop([p], STOP_GRACE_S)
                rc = None
            finally:
                with self._lock:
                    self.children.discard(p)
            sink.flush()
            sink.seek(0)
            text = sink.read() if log is None else log.read_text(errors="replace")
        finally:
            sink.close()
        lines = text.strip().splitlines()
        return rc, (lines[-1] if lines else "")

    def run_together(self, runs: dict, timeout: float) -> dict:
        """The jobs of ``runs`` (key -> (command, log name, environment variables or None)) side by side, each for
        at most ``timeout`` seconds (:meth:`run_until`): key -> (exit code or None, last output line, seconds), in
        the order they ended."""
        outcome: dict = {}

        def one(key) -> None:
            cmd, name, env = runs[key]
            t0 = time.monotonic()
            outcome[key] = (*self.run_until(cmd, timeout, name, env), time.monotonic() - t0)

        threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return outcome

    def stop_all(self, grace: float = STOP_GRACE_S) -> int:
        """Stop every job still running: Ctrl-C to its process group (its runs save their checkpoints), then, after
        ``grace`` seconds, SIGKILL to what is left. Returns the number of jobs stopped."""
        with self._lock:
            procs = [p for p in self.children if p.poll() is None]
        _stop(procs, grace)
        return len(procs)

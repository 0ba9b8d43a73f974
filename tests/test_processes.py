"""--executor processes (issue 28, item 6): the same records as the sequential executor from a spawn pool of worker
processes, a failing run isolated, the leaderboard written; bad values refused in one line. Smoke-sized runs only."""
import importlib.util

import pandas as pd
import pytest
import torch

from benchmark.pipeline import RunConfig
from benchmark.run import main
from benchmark.store.folders import RunFolder

CPU = torch.device("cpu")
TINY = (("train_steps", 6), ("val_every", 3), ("train_ways", 5))


@pytest.mark.parametrize("argv, words", [
    (["--executor", "processes", "--workers", "0"], "--workers must be at least 1"),
    (["--executor", "processes", "--workers", "abc"], "--workers must be a whole number"),
    (["--workers", "2"], "--workers is for --executor processes"),
    (["--executor", "ray", "--gpus-per-run", "1.5"], "whole number of GPUs"),
    (["--executor", "ray", "--gpus-per-run", "0"], "greater than 0"),
    pytest.param(["--executor", "ray", "--ray-address", "127.0.0.1:1"], "does not answer",
                 marks=pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                          reason="the address is tried only when Ray is installed")),
])
def test_bad_values_are_one_line_exit_2(tmp_path, capsys, argv, words):
    assert main(["--methods", "protonet", "--profile", "smoke", "--results-dir", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


def test_processes_give_the_sequential_results(tmp_path, capsys, smoke_run):
    res = tmp_path / "pool"
    argv = ["--methods", "protonet", "--shots", "1", "5", "--profile", "smoke", "--test-episodes", "20",
            "--val-episodes", "5", "--set", "train_steps=6", "val_every=3", "train_ways=5", "--no-progress",
            "--no-report", "--executor", "processes", "--workers", "2", "--threads", "1", "--results-dir", str(res)]
    assert main(argv) == 0
    assert "2 runs done" in capsys.readouterr().err
    board = pd.read_csv(res / "leaderboard.csv")
    assert board["executor"].tolist() == ["processes", "processes"]
    for shots in (1, 5):
        cfg = RunConfig("protonet", shots=shots, profile="smoke", test_episodes=20, val_episodes=5, overrides=TINY)
        ref = smoke_run(cfg, threads=1)  # the sequential executor's run, on the workers' one thread
        got = RunFolder(res, cfg.run_id)
        assert got.read_test_episodes()["accuracy"].tolist() == ref.episodes()
        assert got.read_summary()["test_fingerprint"] == ref.summary["test_fingerprint"]
        assert got.read_summary()["placement"]["cpus"] == 1


def _pool(res, workers=2, max_retries=3):
    from benchmark.pipeline import JobTemplate
    from benchmark.pipeline.executors import ProcessExecutor
    from benchmark.pipeline.plan import ProcessSettings

    return ProcessExecutor(JobTemplate(res, CPU), ProcessSettings(workers=workers, threads=1, max_retries=max_retries),
                           progress_lines=False, note=lambda m: None)


@pytest.fixture
def one_thread():
    """The workers train on one thread (threads=1): the sequential reference too, so that even the rounding of the
    convolutions is the same."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_a_failing_run_is_recorded_and_does_not_sink_the_other(tmp_path, one_thread, smoke_run):
    from benchmark.pipeline import prepare

    cfg = RunConfig("protonet", shots=1, profile="smoke", test_episodes=20, val_episodes=5, overrides=TINY)
    nan = RunConfig("protonet", shots=1, profile="smoke", test_episodes=20, val_episodes=5,
                    overrides=TINY + (("lr", 1e30),))  # the loss becomes NaN at step 2
    res = tmp_path / "pool"
    seen = []
    outs = _pool(res).execute([prepare(cfg), prepare(nan)], seen.append)
    assert sorted((o.run_id, o.status) for o in outs) == sorted([(cfg.run_id, "done"), (nan.run_id, "failed")])
    assert len(seen) == 2  # each outcome handed on as it arrived
    failed = RunFolder(res, nan.run_id)
    assert failed.is_failed() and failed.read_failure()["kind"] == "non_finite_loss"
    assert failed.read_failure()["placement"]["executor"] == "processes"
    ref = smoke_run(cfg, threads=1)
    got = RunFolder(res, cfg.run_id)
    assert got.read_test_episodes()["accuracy"].tolist() == ref.episodes()
    assert got.read_summary()["mean"] == ref.summary["mean"]


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_run_resumes_from_the_checkpoint(tmp_path, one_thread, smoke_run):
    import os
    import signal
    import threading
    import time

    from benchmark.pipeline import prepare

    over = (("train_steps", 30), ("val_every", 10), ("train_ways", 5), ("train_queries", 5))
    cfg = RunConfig("protonet", shots=1, profile="smoke", test_episodes=20, val_episodes=5, overrides=over)
    res = tmp_path / "pool"
    folder = RunFolder(res, cfg.run_id)
    killed = []

    def kill_after_first_checkpoint():
        deadline = time.time() + 120
        while time.time() < deadline and not folder.checkpoint.is_file():
            time.sleep(0.02)
        pid = folder.lock().holder().get("pid")
        if pid:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    watcher = threading.Thread(target=kill_after_first_checkpoint)
    watcher.start()
    outs = _pool(res, workers=1).execute([prepare(cfg)], lambda o: None)
    watcher.join()
    assert killed and [o.status for o in outs] == ["done"]
    s = outs[0].summary
    assert s["placement"]["pid"] != killed[0] and s["resumed_at_steps"] and s["resumed_at_steps"][0] >= 10
    ref = smoke_run(cfg, threads=1)
    assert folder.read_test_episodes()["accuracy"].tolist() == ref.episodes()
    assert s["mean"] == ref.summary["mean"]


@pytest.mark.slow
def test_a_worker_that_keeps_dying_fails_its_run_after_the_retries(tmp_path):
    import os
    import signal
    import threading
    import time

    from benchmark.pipeline import prepare

    over = (("train_steps", 100000), ("val_every", 2), ("train_ways", 5))
    cfg = RunConfig("protonet", shots=1, profile="smoke", test_episodes=5, val_episodes=2, overrides=over)
    res = tmp_path / "pool"
    folder = RunFolder(res, cfg.run_id)
    killed = []

    def kill_each_worker():  # every worker that holds the run's lock, twice
        deadline = time.time() + 180
        while time.time() < deadline and len(killed) < 2:
            pid = folder.lock().holder().get("pid") if folder.checkpoint.is_file() else None
            if pid and pid not in killed:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_each_worker)
    watcher.start()
    outs = _pool(res, workers=1, max_retries=1).execute([prepare(cfg)], lambda o: None)
    watcher.join()
    assert len(killed) == 2 and [o.status for o in outs] == ["failed"]
    rec = folder.read_failure()
    assert rec["kind"] == "task_error" and "died 2 time(s)" in rec["reason"]
    assert rec["placement"]["executor"] == "processes"


@pytest.mark.slow
@pytest.mark.parametrize("how, code", [("ctrl-c", 130), ("sigterm", 143)])
def test_ctrl_c_or_sigterm_stops_the_workers_with_their_checkpoints(tmp_path, how, code):
    """Ctrl-C reaches the driver and its workers (the terminal's process group); SIGTERM (kill, a SLURM pre-emption)
    reaches the driver alone, which stops the workers. Either way: every started run's checkpoint saved, no process
    left behind, the exit code of the signal, one line saying how to resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    res = tmp_path / "res"
    args = ["--methods", "protonet", "--shots", "1", "5", "--profile", "smoke", "--test-episodes", "5",
            "--val-episodes", "2", "--set", "train_steps=100000", "val_every=2", "train_ways=5", "--no-progress",
            "--no-report", "--executor", "processes", "--workers", "2", "--threads", "1", "--results-dir", str(res)]
    p = subprocess.Popen([sys.executable, "-m", "benchmark.run", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and len(list(res.glob("*.partial/checkpoint.pt"))) < 2:
            time.sleep(0.2)
        assert len(list(res.glob("*.partial/checkpoint.pt"))) == 2, "the two runs wrote no checkpoint within 180 s"
        if how == "ctrl-c":
            os.killpg(p.pid, signal.SIGINT)
        else:
            p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == code, err
    assert "resume" in err and "Traceback" not in err
    for ckpt in res.glob("*.partial/checkpoint.pt"):
        assert 0 < torch.load(ckpt, weights_only=False)["state"]["step"] < 100000
    time.sleep(0.5)
    assert not _in_session(p.pid), f"processes left in the command's session: {_in_session(p.pid)}"


def _in_session(sid: int) -> list[int]:
    """The live processes of session ``sid`` (Linux: field 6 of /proc/PID/stat)."""
    from pathlib import Path

    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found

"""A failed run does not sink the sweep (issue 12, item 5), one process at a time (Ray: tests/test_ray.py); several
processes on one results directory (item 6): run locks, the leaderboard, the artefact cache."""
import json
import math
import os
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import torch
from conftest import ROOT

from benchmark.pipeline import Locked, RunConfig, run
from benchmark.run import main
from benchmark.store.files import FileLock
from benchmark.store.folders import RunFolder, failed_runs, finished_runs

CPU = torch.device("cpu")
TINY = ["--profile", "smoke", "--test-episodes", "10", "--val-episodes", "5", "--set", "train_steps=6", "val_every=3",
        "train_ways=5", "--no-progress"]


def test_nan_and_exception_are_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    import methods.protonet as protonet

    original = protonet.ProtoNet.train_step

    def broken(self, episodes, step):
        out = original(self, episodes, step)
        if self.ctx.seed == 0 and step == 3:
            out["loss"] = math.nan  # NaN at the 4th step of one run
        if self.ctx.seed == 1 and step == 4:
            raise RuntimeError("boom in step 4")  # an exception in another
        return out

    monkeypatch.setattr(protonet.ProtoNet, "train_step", broken)
    res, rep = tmp_path / "res", tmp_path / "rep"
    argv = ["--methods", "protonet", "--shots", "1", "--seeds", "0", "1", "2", *TINY, "--results-dir", str(res),
            "--reports-dir", str(rep)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "1 runs done" in err and "2 run(s) failed" in err
    assert len(finished_runs(res)) == 1 and len(failed_runs(res)) == 2
    nan_run, raised = sorted(failed_runs(res), key=lambda f: f.run_id)
    rec = nan_run.read_failure()
    assert rec["kind"] == "non_finite_loss" and rec["step"] == 4 and rec["metrics"]["loss"] == "nan"
    assert rec["last_curve_point"]["step"] == 3 and rec["placement"]["executor"] == "sequential"
    assert "non-finite training loss at step 4" in rec["reason"]
    assert (nan_run.partial / "checkpoint.pt").is_file()  # the last validation's checkpoint stays
    rec = raised.read_failure()
    assert rec["kind"] == "exception" and rec["reason"] == "RuntimeError: boom in step 4" and rec["step"] == 4
    tb = (raised.partial / RunFolder.TRACEBACK).read_text()
    assert "Traceback" in tb and "boom in step 4" in tb
    assert len(pd.read_csv(res / "leaderboard.csv")) == 1
    report = (rep / "latest/report.md").read_text()
    assert f"Failed run {nan_run.run_id} at step 4" in report and f"Failed run {raised.run_id}" in report
    done_before = {p.name: (p / "summary.json").stat().st_mtime_ns for p in finished_runs(res)}

    monkeypatch.setattr(protonet.ProtoNet, "train_step", original)  # fixed: re-running retries only the failed runs
    assert main(argv + ["--no-report"]) == 0
    err = capsys.readouterr().err
    assert err.count("finished before, not re-run") == 1 and "3 runs done" in err
    assert not failed_runs(res) and len(finished_runs(res)) == 3
    assert {p.name: (p / "summary.json").stat().st_mtime_ns for p in finished_runs(res) if p.name in done_before} \
        == done_before


def test_ray_missing_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert main(["--methods", "protonet", "--executor", "ray", "--results-dir", str(tmp_path / "res")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pip install -e '.[distributed]'" in lines[0]


# ------------------------------------------------------------------------------------------------ concurrency
OVER = (("train_steps", 4), ("val_every", 2), ("train_ways", 5))


def test_a_locked_run_is_skipped_or_waited_for(tmp_path):
    cfg = RunConfig("protonet", "omniglot", 5, 1, profile="smoke", test_episodes=5, val_episodes=3, overrides=OVER)
    other = RunFolder(tmp_path, cfg.run_id).lock()  # another process training the run (flock: per open file)
    assert other.acquire(wait=False)
    with pytest.raises(Locked, match="being trained by another process"):
        run(cfg, tmp_path, CPU, if_locked="skip")
    assert not RunFolder(tmp_path, cfg.run_id).partial.exists()
    notes = []
    threading.Timer(0.5, other.release).start()
    s = run(cfg, tmp_path, CPU, if_locked="wait", note=notes.append)
    assert "waiting for it" in notes[0] and RunFolder(tmp_path, cfg.run_id).is_finished() and s["n_episodes"] == 5


def test_artefact_computed_once_when_asked_for_at_the_same_time(tmp_path):
    from benchmark.pipeline.method_context import ArtefactCache

    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.5)
        return torch.arange(3)

    caches = [ArtefactCache(tmp_path, "fp", "conv4", 0, CPU) for _ in range(2)]
    threads = [threading.Thread(target=c, args=("pretrain", {"epochs": 1}, compute)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(c.log[0]["computed_in_this_run"] for c in caches) == [False, True]



def test_a_stopped_computation_keeps_its_snapshot_and_resumes_from_it(tmp_path):
    """``ctx.snapshots``: a computation under the artefact cache saves its progress beside the artefact (atomically,
    while the lock is held); stopped, the next attempt reads it back, with the sampler's counts of the stopped
    attempt added (the artefact's images are an uninterrupted computation's), and the log says where it resumed. The
    partial file goes once the artefact is stored; outside a computation, and without a results directory, saving
    keeps nothing and loading finds nothing."""
    import types

    from benchmark.pipeline import make_context, prepare
    from benchmark.pipeline.method_context import ArtefactCache

    sampler = types.SimpleNamespace(images_drawn=0, batches_drawn=0)
    cache = ArtefactCache(tmp_path, "fp", "conv4", 0, CPU, sampler)
    seen = []

    def compute(stop_at=None):
        saved = cache.snapshots.load()
        seen.append(None if saved is None else saved[0])
        done, total = saved if saved is not None else (0, torch.zeros(2))
        for i in range(done, 5):
            sampler.images_drawn, sampler.batches_drawn = sampler.images_drawn + 8, sampler.batches_drawn + 1
            total = total + i
            if i == stop_at:
                raise KeyboardInterrupt
            if i == 2:
                cache.snapshots.save(i + 1, total)
        return total

    with pytest.raises(KeyboardInterrupt):
        cache("thing", {"k": 1}, lambda: compute(stop_at=3))
    (partial,) = (tmp_path / "cache").glob("thing-*.partial.pt")
    assert not cache.log and partial.name.endswith(".partial.pt")
    sampler.images_drawn = sampler.batches_drawn = 100  # what the process drew before: not the artefact's
    value = cache("thing", {"k": 1}, compute)
    assert seen == [None, 3] and torch.equal(value, torch.full((2,), 10.0))
    assert cache.log[-1]["resumed_from"] == 3 and cache.log[-1]["images"] == 5 * 8
    assert (sampler.images_drawn, sampler.batches_drawn) == (100 + 5 * 8, 100 + 5)  # as if uninterrupted
    assert not partial.exists() and len(list((tmp_path / "cache").glob("thing-*.pt"))) == 1
    assert cache("thing", {"k": 1}, compute) is not None and cache.log[-1]["resumed_from"] is None
    assert seen == [None, 3]  # read from its file, not computed
    cache.snapshots.save(1, torch.ones(1))  # outside a computation: nothing kept
    assert cache.snapshots.load() is None and not list((tmp_path / "cache").glob("*.partial.pt"))
    ctx = make_context(prepare(RunConfig("protonet", "omniglot", 5, 1, profile="smoke")), CPU)  # no results dir
    assert ctx.snapshots.save(1, torch.ones(1)) is None and ctx.snapshots.load() is None

@pytest.mark.slow
def test_two_commands_on_one_results_dir(tmp_path):
    """Two processes run the same runs at once: each run is trained by one of them, the other waits and reads it."""
    args = [sys.executable, "-m", "benchmark.run", "--methods", "protonet", "--shots", "1", "5", *TINY,
            "--results-dir", str(tmp_path / "res"), "--no-report"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    lines = [l for e in errs for l in e.splitlines() if "% over" in l]
    assert len(lines) == 4 and sum("not re-run" not in l for l in lines) == 2  # each run trained exactly once
    board = pd.read_csv(tmp_path / "res/leaderboard.csv")
    assert sorted(board["shots"]) == [1, 5]
    assert not [p for p in (tmp_path / "res").iterdir() if p.name.endswith(".partial")]
    for d in finished_runs(tmp_path / "res"):
        assert json.loads((d / "summary.json").read_text())["placement"]["executor"] == "sequential"


def test_file_lock_is_released_when_its_process_dies(tmp_path):
    lock = tmp_path / "x.lock"
    code = (f"from benchmark.store.files import FileLock; import os; FileLock({str(lock)!r}).acquire(); "
            "os._exit(0)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True,
                   timeout=60)
    mine = FileLock(lock)
    assert mine.acquire(wait=False) and mine.holder()["pid"] == os.getpid()
    mine.release()


def test_a_failure_that_cannot_be_recorded_is_said_not_raised(tmp_path):
    """record_failure, which every executor uses: when the failure record cannot be written (a full disk), the
    record says why and nothing is raised, so the other runs go on."""
    from benchmark.pipeline.runner import failure_record, record_failure
    from benchmark.store.folders import RunFolder

    class Full(RunFolder):
        def fail(self, record, detail=None):
            raise OSError(28, "No space left on device")

    rec = failure_record("exception", "ValueError: x", {"executor": "processes"})
    out = record_failure(Full(tmp_path, "r1"), rec, "tb")
    assert out["unrecorded"].startswith("OSError: [Errno 28] No space left") and out["reason"] == rec["reason"]
    ok = record_failure(RunFolder(tmp_path, "r2"), rec, "tb")
    assert "unrecorded" not in ok and RunFolder(tmp_path, "r2").is_failed()

"""The Ray executor (issue 12): same results as the sequential executor, run folders sent back without a shared
filesystem, a killed worker's retry resuming from the checkpoint, shared artefacts computed once. One local Ray
instance for the module (2 CPUs), smoke-sized runs only."""
import os
import shutil
import signal
import threading
import time

import pandas as pd
import pytest
import torch
from conftest import ROOT

from benchmark.pipeline import JobTemplate, RunConfig, prepare
from benchmark.pipeline.plan import RaySettings
from benchmark.run import main
from benchmark.store.folders import RunFolder, finished_runs

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

CPU = torch.device("cpu")
TINY = (("train_steps", 6), ("val_every", 3), ("train_ways", 5))


@pytest.fixture(scope="module")
def local_ray():
    import logging

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield
    if started:
        ray.shutdown()


@pytest.fixture
def one_thread():
    """Ray tasks run on --cpus-per-run threads (1 here): the sequential reference runs on as many, so that even the
    rounding of the convolutions is the same."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def episodes(res, run_id):
    return RunFolder(res, run_id).read_test_episodes()["accuracy"].tolist()


def test_ray_gives_the_sequential_results(tmp_path, local_ray, one_thread, capsys, smoke_run):
    res = tmp_path / "ray"
    argv = ["--methods", "protonet", "--shots", "1", "5", "--profile", "smoke", "--test-episodes", "20",
            "--val-episodes", "5", "--set", "train_steps=6", "val_every=3", "train_ways=5", "--no-progress",
            "--no-report", "--executor", "ray", "--cpus-per-run", "1", "--results-dir", str(res)]
    assert main(argv) == 0
    assert "2 runs done" in capsys.readouterr().err and not list(res.glob(".driver-*"))
    board = pd.read_csv(res / "leaderboard.csv")
    assert board["executor"].tolist() == ["ray", "ray"] and board["node"].notna().all()
    for shots in (1, 5):
        cfg = RunConfig("protonet", shots=shots, profile="smoke", test_episodes=20, val_episodes=5, overrides=TINY)
        seq = smoke_run(cfg, threads=1)  # the sequential executor's run, on the tasks' one thread
        ref, got = seq.summary, RunFolder(res, cfg.run_id).read_summary()
        assert episodes(res, cfg.run_id) == seq.episodes()
        assert got["test_fingerprint"] == ref["test_fingerprint"] and got["val_fingerprint"] == ref["val_fingerprint"]
        assert got["mean"] == ref["mean"] and got["placement"]["executor"] == "ray" and got["placement"]["cpus"] == 1
        assert got["placement"]["ray_node_id"] and ref["placement"]["executor"] == "sequential"


def test_without_a_shared_filesystem_the_run_folder_comes_back(tmp_path, local_ray, one_thread, smoke_run):
    from benchmark.pipeline.executors import RayExecutor, local_results_dir

    cfg = RunConfig("protonet", shots=1, profile="smoke", test_episodes=20, val_episodes=5, overrides=TINY)
    nan = RunConfig("protonet", shots=1, profile="smoke", test_episodes=20, val_episodes=5,
                    overrides=TINY + (("lr", 1e30),))  # the loss becomes NaN at step 2
    res = tmp_path / "driver"
    outs = RayExecutor(JobTemplate(res, CPU), RaySettings(shared=False), progress_lines=False).execute([prepare(cfg), prepare(nan)],
                                                                              lambda o: None)
    outs = sorted(outs, key=lambda o: o.run_id != cfg.run_id)
    assert [o.status for o in outs] == ["done", "failed"]  # a failed task does not sink the other
    failed = RunFolder(res, nan.run_id)
    assert failed.is_failed() and failed.read_failure()["kind"] == "non_finite_loss"  # sent back too
    assert failed.read_failure()["placement"]["executor"] == "ray"
    folder = RunFolder(res, cfg.run_id)
    assert folder.is_finished() and folder.read_summary()["placement"]["shared_results_dir"] is False
    assert sorted(f.name for f in folder.path.iterdir()) == ["config.json", "curve.csv", "model.pt",
                                                             "summary.json", "test_episodes.csv"]
    assert (folder.path / "model.pt").stat().st_size == folder.read_summary()["model_bytes"]  # the model came too
    ref = smoke_run(cfg, threads=1)
    assert episodes(res, cfg.run_id) == ref.episodes()
    assert ref.summary["mean"] == outs[0].summary["mean"]
    origin = f"{os.uname().nodename}:{res.resolve()}"
    node = local_results_dir(origin)
    assert not RunFolder(node, cfg.run_id).path.exists()  # the node's copy of a finished run is not kept
    assert RunFolder(node, nan.run_id).is_failed()  # a failed run's stays, to resume from on this node
    shutil.rmtree(node)


def test_a_killed_worker_is_retried_and_resumes_from_its_checkpoint(tmp_path, local_ray, one_thread, smoke_run):
    from benchmark.pipeline.executors import RayExecutor

    over = (("train_steps", 60), ("val_every", 10), ("train_ways", 5), ("train_queries", 5))
    cfg = RunConfig("protonet", shots=1, profile="smoke", test_episodes=20, val_episodes=5, overrides=over)
    res = tmp_path / "ray"
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
    outs = RayExecutor(JobTemplate(res, CPU), RaySettings(max_retries=2), progress_lines=False).execute([prepare(cfg)], lambda o: None)
    watcher.join()
    assert killed and [o.status for o in outs] == ["done"]
    s = outs[0].summary
    assert s["placement"]["pid"] != killed[0] and s["resumed_at_steps"] and s["resumed_at_steps"][0] >= 10
    ref = smoke_run(cfg, threads=1)
    assert episodes(res, cfg.run_id) == ref.episodes() and s["mean"] == ref.summary["mean"]
    assert pd.read_csv(folder.path / "curve.csv")["val_acc"].tolist() == \
        pd.read_csv(ref.folder.path / "curve.csv")["val_acc"].tolist()


def test_mtl_pretraining_computed_once_for_variants_started_together(tmp_path, local_ray):
    from benchmark.pipeline.executors import RayExecutor

    cfgs = [RunConfig(m, shots=1, profile="smoke", test_episodes=5, val_episodes=5) for m in ("mtl", "mtl-noht")]
    outs = RayExecutor(JobTemplate(tmp_path, CPU), progress_lines=False).execute([prepare(c) for c in cfgs], lambda o: None)
    assert [o.status for o in outs] == ["done", "done"]
    pids = {o.summary["placement"]["pid"] for o in outs}
    uses = [u for o in outs for u in o.summary["cache"]]
    assert len(uses) == 2 and len({u["file"] for u in uses}) == 1
    assert sorted(u["computed_in_this_run"] for u in uses) == [False, True]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1 and len(finished_runs(tmp_path)) == 2
    assert len(pids) == 2  # on two workers at once (2 CPUs, 1 per run)

"""--executor processes (issue 28, item 6): the same records as the sequential executor from a spawn pool of worker
processes, a failing run isolated, the leaderboard written; bad values refused in one line. Smoke-sized runs only."""
import pandas as pd
import pytest
import torch

from benchmark.pipeline import RunConfig, run
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
    (["--executor", "ray", "--ray-address", "127.0.0.1:1"], "does not answer"),
])
def test_bad_values_are_one_line_exit_2(tmp_path, capsys, argv, words):
    assert main(["--methods", "protonet", "--profile", "smoke", "--results-dir", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


def test_processes_give_the_sequential_results(tmp_path, capsys):
    res = tmp_path / "pool"
    argv = ["--methods", "protonet", "--shots", "1", "5", "--profile", "smoke", "--test-episodes", "20",
            "--val-episodes", "5", "--set", "train_steps=6", "val_every=3", "train_ways=5", "--no-progress",
            "--no-report", "--executor", "processes", "--workers", "2", "--threads", "1", "--results-dir", str(res)]
    assert main(argv) == 0
    assert "2 runs done" in capsys.readouterr().err
    board = pd.read_csv(res / "leaderboard.csv")
    assert board["executor"].tolist() == ["processes", "processes"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for shots in (1, 5):
            cfg = RunConfig("protonet", shots=shots, profile="smoke", test_episodes=20, val_episodes=5, overrides=TINY)
            ref = run(cfg, tmp_path / "seq", CPU)
            got = RunFolder(res, cfg.run_id)
            assert got.read_test_episodes()["accuracy"].tolist() == \
                RunFolder(tmp_path / "seq", cfg.run_id).read_test_episodes()["accuracy"].tolist()
            assert got.read_summary()["test_fingerprint"] == ref["test_fingerprint"]
            assert got.read_summary()["placement"]["cpus"] == 1
    finally:
        torch.set_num_threads(n)

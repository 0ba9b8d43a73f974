import json

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.pipeline import Interrupted, RunConfig, run
from benchmark.store.folders import RunFolder, finished_runs
from benchmark.store.leaderboard import runs_leaderboard as leaderboard
from benchmark.store.leaderboard import write_runs_leaderboard as write_leaderboard
from benchmark.store.statistics import mean_ci95

CPU = torch.device("cpu")


def test_protonet_learns_on_smoke_profile(tmp_path):
    cfg = RunConfig("protonet", "omniglot", 5, 5, profile="smoke", test_episodes=100)
    s = run(cfg, tmp_path, CPU)
    assert s["mean"] > 80.0, s["mean"]  # chance is 20%
    d = tmp_path / cfg.run_id
    eps = pd.read_csv(d / "test_episodes.csv")
    assert len(eps) == 100 and s["n_episodes"] == 100
    m, ci = mean_ci95(eps["accuracy"].to_numpy())
    assert s["mean"] == pytest.approx(100 * m) and s["ci95"] == pytest.approx(100 * ci)
    curve = pd.read_csv(d / "curve.csv")
    assert list(curve["step"]) == list(range(20, 61, 20)) and curve["episodes"].is_monotonic_increasing
    assert s["best_val_acc"] == pytest.approx(curve["val_acc"].max())
    # budget: 60 smoke episodes of the paper's 20,000 (ProtoNet, Snell et al.)
    assert s["paper_train_episodes"] == 20000 and s["budget_fraction"] == pytest.approx(60 / 20000)
    assert s["trainable_params"] == 4 * 64 * 2 + 64 * 9 + 64 + 3 * (64 * 64 * 9 + 64)
    for key in ("test_fingerprint", "val_fingerprint", "dataset_fingerprint", "code_version", "environment"):
        assert s[key]
    assert s["method_facts"]["family"] == "metric" and s["method_facts"]["variant_of"] is None  # for the report
    assert s["backbone_facts"] == {"name": "conv4", "kind": "conv4", "width": 64}
    config = json.loads((d / "config.json").read_text())
    assert config["hyperparameters"]["train_ways"] == 20 and config["train_episode_shape"] == [20, 5, 5]
    assert not (tmp_path / f"{cfg.run_id}.partial").exists()


def test_ci_formula():
    acc = np.array([1.0, 0.8, 0.6, 1.0])
    m, ci = mean_ci95(acc)
    assert m == pytest.approx(0.85) and ci == pytest.approx(1.96 * np.std(acc, ddof=1) / 2)


def test_resume_gives_the_uninterrupted_result(tmp_path):
    over = (("train_steps", 12), ("val_every", 4), ("train_ways", 5), ("train_queries", 5))
    cfg = RunConfig("protonet", "omniglot", 5, 1, profile="smoke", test_episodes=30, val_episodes=10, overrides=over)
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    full = run(cfg, a_dir, CPU)
    with pytest.raises(Interrupted):
        run(cfg, b_dir, CPU, stop_after=6)  # mid-way between two validations
    part = b_dir / f"{cfg.run_id}.partial"
    assert (part / "checkpoint.pt").is_file() and not finished_runs(b_dir)
    with pytest.raises(Interrupted):
        run(cfg, b_dir, CPU, stop_after=3)  # a second interruption, right after the resume
    resumed = run(cfg, b_dir, CPU)
    ea = pd.read_csv(a_dir / cfg.run_id / "test_episodes.csv")["accuracy"]
    eb = pd.read_csv(b_dir / cfg.run_id / "test_episodes.csv")["accuracy"]
    assert ea.tolist() == eb.tolist()
    ca = pd.read_csv(a_dir / cfg.run_id / "curve.csv")
    cb = pd.read_csv(b_dir / cfg.run_id / "curve.csv")
    assert ca["val_acc"].tolist() == cb["val_acc"].tolist() and ca["train_loss"].tolist() == cb["train_loss"].tolist()
    assert full["mean"] == resumed["mean"] and full["train_episodes"] == resumed["train_episodes"] == 12
    assert not part.exists()


def test_checkpoint_with_the_old_metric_keys_resumes(tmp_path, smoke_run):
    """A checkpoint written before ``acc_sum``/``acc_n`` were renamed ``metric_sums``/``metric_count`` resumes to the
    uninterrupted result (it stops between two validations, so the sums carry into the next curve point)."""
    over = (("train_steps", 8), ("val_every", 4), ("train_ways", 5), ("train_queries", 5))
    cfg = RunConfig("protonet", "omniglot", 5, 1, profile="smoke", test_episodes=10, val_episodes=5, overrides=over)
    full = smoke_run(cfg)
    with pytest.raises(Interrupted):
        run(cfg, tmp_path / "b", CPU, stop_after=6)
    path = tmp_path / "b" / f"{cfg.run_id}.partial" / "checkpoint.pt"
    ck = torch.load(path, weights_only=False)
    state = ck["state"]
    assert state["metric_count"] == 2 and set(state["metric_sums"]) >= {"loss", "acc"}
    state["acc_sum"], state["acc_n"] = state.pop("metric_sums"), state.pop("metric_count")  # as the old code wrote
    torch.save(ck, path)
    resumed = run(cfg, tmp_path / "b", CPU)
    ca, cb = (pd.read_csv(d / cfg.run_id / "curve.csv") for d in (full.results, tmp_path / "b"))
    assert ca["train_loss"].tolist() == cb["train_loss"].tolist() and ca["train_acc"].tolist() == cb["train_acc"].tolist()
    assert full.summary["mean"] == resumed["mean"]


def test_finished_runs_are_skipped_and_leaderboard_rebuilt(tmp_path):
    over = (("train_steps", 4), ("val_every", 2), ("train_ways", 5))
    cfgs = [RunConfig("protonet", "omniglot", 5, 1, profile="smoke", test_episodes=10, val_episodes=5, seed=s,
                      overrides=over) for s in (0, 1)]
    first = [run(c, tmp_path, CPU) for c in cfgs]
    again = run(cfgs[0], tmp_path, CPU)
    assert again == first[0]  # read back, not re-run
    (tmp_path / "junk.partial").mkdir()
    board = write_leaderboard(tmp_path)
    assert len(board) == 2 and set(board["seed"]) == {0, 1}
    assert board["test_fingerprint"].nunique() == 1  # test episodes do not depend on the training seed
    assert pd.read_csv(tmp_path / "leaderboard.csv")["run_id"].tolist() == board["run_id"].tolist()
    assert leaderboard(tmp_path / "nothing").empty


def test_a_prepared_run_is_neither_prepared_nor_resolved_again(tmp_path, monkeypatch):
    import dataclasses

    import benchmark.pipeline.runner as runner
    from benchmark.pipeline import registry

    over = (("train_steps", 2), ("val_every", 1), ("train_ways", 5))
    cfg = RunConfig("protonet", "omniglot", 5, 1, profile="smoke", test_episodes=5, val_episodes=3, overrides=over)
    prepared = runner.prepare(cfg)

    def fail(*args, **kwargs):
        raise AssertionError("prepared or resolved again")

    for module, name in ((runner, "prepare"), (registry, "get"), (registry, "resolve")):
        monkeypatch.setattr(module, name, fail)
    s = run(prepared, tmp_path, CPU)
    folder = RunFolder(tmp_path, cfg.run_id)
    assert folder.is_finished() and folder.read_summary()["test_fingerprint"] == s["test_fingerprint"]
    assert folder.read_config()["run_id"] == cfg.run_id and len(folder.read_test_episodes()) == 5
    assert folder.read_curve()["step"].tolist() == [1, 2] and not folder.partial.exists()
    with pytest.raises(TypeError, match="first argument"):  # one source of the configuration: the prepared run's
        run(dataclasses.replace(cfg, seed=1), tmp_path, CPU, prepared=prepared)
    with pytest.raises(TypeError, match="no_such_option"):
        run(prepared, tmp_path / "other", CPU, no_such_option=1)


def test_an_interruption_says_where_it_stopped(tmp_path, monkeypatch):
    """Stopped while the method is built (MTL's pretraining happens there; its progress is kept and resumes) the run
    says so, instead of claiming it was testing; stopped while testing, it says its checkpoint stays."""
    import benchmark.pipeline.runner as runner

    cfg = RunConfig("protonet", "omniglot", 5, 1, profile="smoke", test_episodes=4, val_episodes=2,
                    overrides=(("train_steps", 2), ("val_every", 2)))

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "build_method", stop)
    with pytest.raises(Interrupted, match="while setting up .*progress is kept and resumes .*again to resume it"):
        run(cfg, tmp_path, CPU)
    monkeypatch.undo()
    monkeypatch.setattr(runner, "evaluate", stop)
    with pytest.raises(Interrupted, match="while testing .*checkpoint stays"):
        run(cfg, tmp_path / "b", CPU)

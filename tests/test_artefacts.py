"""Trained models as artefacts: model.pt, load_run, Episode.from_tensors and python -m benchmark.evaluate."""
import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark import Episode, load_run
from benchmark.data import load_dataset
from benchmark.evaluate import main as evaluate_main
from benchmark.kit.episodes import EpisodeSet
from benchmark.pipeline import RunConfig, run
from benchmark.pipeline.training import evaluate
from benchmark.store.folders import EvaluationFolder, RunFolder, evaluation_folders

TINY = (("train_steps", 2), ("val_every", 1))


def _cfg(method, **kw):
    return RunConfig(method, "omniglot", 5, 1, profile="smoke", test_episodes=4, val_episodes=2, overrides=TINY, **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """ProtoNet and MAML, trained for 2 steps each, with their saved models."""
    results = tmp_path_factory.mktemp("results")
    for m in ("protonet", "maml"):
        run(_cfg(m), results, torch.device("cpu"))
    return results


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("method", ["protonet", "maml"])
def test_saved_model_reloads_with_identical_predictions(trained, method):
    folder = RunFolder(trained, _cfg(method).run_id)
    summary = folder.read_summary()
    assert folder.model.is_file() and summary["model_bytes"] == folder.model.stat().st_size
    payload = torch.load(folder.model, weights_only=True)  # plain containers and tensors only
    assert payload["method"] == method and payload["image_shape"] == [1, 28, 28] and payload["backbone"] == "conv4"
    assert payload["hyperparameters"]["train_steps"] == 2 and payload["split"] == "vinyals"
    state = torch.random.get_rng_state()
    model = load_run(folder.path)
    assert torch.equal(state, torch.random.get_rng_state())  # loading leaves global random state alone
    assert model.model_info["run_id"] == summary["run_id"] and "state_dict" not in model.model_info
    # re-testing on the run's own test episodes reproduces its recorded per-episode accuracies exactly
    test_set = EpisodeSet(load_dataset("omniglot"), "test", 5, 1, 15, 0, 4, stream="test")
    assert test_set.fingerprint == summary["test_fingerprint"]
    acc, _ = evaluate(model, test_set, torch.device("cpu"))
    np.testing.assert_array_equal(acc, folder.read_test_episodes()["accuracy"].to_numpy())
    # the API path: an episode from plain tensors, support shuffled, gives the same logits
    ep = test_set[1]
    perm = torch.randperm(len(ep.support_y), generator=torch.Generator().manual_seed(0))
    with torch.set_grad_enabled(model.adapts_at_test):
        mine = model.predict(Episode.from_tensors(ep.support_x[perm], ep.support_y[perm], ep.query_x))
        ref = model.predict(ep)
    torch.testing.assert_close(mine, ref)
    assert mine.shape == (75, 5)


def test_from_tensors_checks_labels():
    x = torch.zeros(4, 1, 28, 28)
    with pytest.raises(ValueError, match="same number"):
        Episode.from_tensors(x, torch.tensor([0, 0, 0, 1]), x)
    with pytest.raises(ValueError, match="one shape"):
        Episode.from_tensors(x, torch.tensor([0, 1, 0, 1]), torch.zeros(3, 1, 32, 32))
    ep = Episode.from_tensors(x, torch.tensor([1, 0, 1, 0]), x)
    assert (ep.ways, ep.shots, ep.support_y.tolist()) == (2, 2, [0, 0, 1, 1])


def test_no_save_model(tmp_path):
    cfg = _cfg("protonet")
    s = run(cfg, tmp_path, torch.device("cpu"), save_model=False)
    assert s["model_bytes"] is None and not RunFolder(tmp_path, cfg.run_id).model.exists()
    assert evaluate_main(["--results-dir", str(tmp_path), "--no-progress"]) == 2


def test_evaluate_other_ways_and_split(trained, capsys):
    folder = RunFolder(trained, _cfg("protonet").run_id)
    before = _digest(folder.path)
    argv = ["--runs", str(folder.path), "--ways", "20", "--shots", "1", "2", "--test-episodes", "3", "--no-progress"]
    assert evaluate_main(argv) == 0
    assert evaluate_main(["--runs", str(folder.path), "--split", "lake", "--test-episodes", "3",
                          "--no-progress"]) == 0
    evals = {f.eval_id: f.read_record() for f in evaluation_folders(folder.path)}
    assert len(evals) == 3
    by_setting = {(r["split"], r["ways"], r["shots"]): r for r in evals.values()}
    assert set(by_setting) == {("vinyals", 20, 1), ("vinyals", 20, 2), ("lake", 5, 1)}
    r = by_setting[("vinyals", 20, 1)]
    assert r["run_id"] == folder.run_id and r["n_episodes"] == 3 and r["trained"]["ways"] == 5
    assert r["test_classes_seen_in_training"] == 0
    assert by_setting[("lake", 5, 1)]["test_classes_seen_in_training"] > 0  # Vinyals training meets Lake's test
    assert len(EvaluationFolder(folder.path, r["eval_id"]).read_test_episodes()) == 3
    assert "warning" in capsys.readouterr().err
    assert _digest(folder.path) == before  # the training run's records are untouched
    # the same episodes again: skipped, nothing rewritten
    stamp = (folder.path / "evaluations" / r["eval_id"] / "evaluation.json").stat().st_mtime_ns
    assert evaluate_main(argv) == 0
    assert (folder.path / "evaluations" / r["eval_id"] / "evaluation.json").stat().st_mtime_ns == stamp
    assert "0 evaluations done, 2 skipped" in capsys.readouterr().err


def test_evaluate_refusals(trained, tmp_path, capsys):
    from test_datasets import _fake_cifar100

    maml = RunFolder(trained, _cfg("maml").run_id).path
    assert evaluate_main(["--runs", str(maml), "--ways", "20", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot be tested 20-way without retraining" in err
    _fake_cifar100(tmp_path)
    assert evaluate_main(["--runs", str(maml), "--dataset", "cifar-fs", "--data-dir", str(tmp_path),
                          "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "1-channel 28x28" in err and "3-channel 32x32" in err
    assert evaluate_main(["--runs", str(tmp_path), "--no-progress"]) == 2
    assert not (maml / "evaluations").exists()  # everything is checked before anything is written


def test_report_cross_evaluation_pairs_only_same_episodes(trained, tmp_path):
    from benchmark.report import build

    proto, maml = (RunFolder(trained, _cfg(m).run_id).path for m in ("protonet", "maml"))
    for argv in (["--runs", str(proto), "--ways", "20", "--shots", "1", "2", "--test-episodes", "3"],
                 ["--runs", str(proto), "--split", "lake", "--test-episodes", "3"],
                 ["--runs", str(proto), str(maml), "--test-episodes", "3"]):  # 3 of the runs' own 4 episodes: new set
        assert evaluate_main(argv + ["--no-progress"]) == 0
    lake = _cfg("protonet", split="lake")
    run(lake, trained, torch.device("cpu"))
    res = build(trained, tmp_path / "rep")
    board = res.leaderboard.set_index(["method", "split"])
    assert ("protonet", "lake") in board.index and ("protonet", "vinyals") in board.index
    assert pd.isna(board.loc[("protonet", "lake"), "published"])  # published figures are for the Vinyals split
    assert not pd.isna(board.loc[("protonet", "vinyals"), "published"])
    cross = pd.read_csv(tmp_path / "rep" / "cross_evaluation.csv", keep_default_na=False)
    assert "cross_evaluation.csv" in (tmp_path / "rep" / "report.md").read_text()
    for fp, g in cross.groupby("test_fingerprint"):
        rows = set(g["row"])
        for tied in g["tied_with"]:
            assert not tied or set(tied.split("; ")) <= rows  # paired only with rows on the same episodes
    own = cross[cross["n_episodes"] == 4]
    assert set(own["kind"]) == {"own test"} and len(own) == 2 and len(set(own["test_fingerprint"])) == 1
    three = cross[(cross["n_episodes"] == 3) & (cross["ways"] == 5) & (cross["split"] == "vinyals")]
    assert len(three) == 2 and set(three["kind"]) == {"evaluation"}
    assert set(three["test_fingerprint"]) != set(own["test_fingerprint"])
    lake_col = cross[cross["split"] == "lake"]
    assert {"evaluation", "own test"} >= set(lake_col["kind"]) and lake_col["column"].str.contains("lake split").all()
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "7. Cross-evaluation" in md and "8. Provenance" in md and "/evaluations/omniglot-20w1s-" in md


def test_recorded_floats_read_back_exactly(tmp_path):
    """Per-episode accuracies (float32 fractions k/q, as ``evaluate`` computes them) and float64 ones written to a
    record and read back through the store are the same numbers: before pandas 3.1 the default CSV parser missed
    45 of these 152 values by one unit in the last place (measured with pandas 3.0.6), which broke "re-testing
    reproduces the recorded per-episode accuracies exactly" there."""
    import pandas as pd

    from benchmark.store.files import atomic_write_csv, read_csv

    values = [v for k in range(76) for v in (torch.tensor(k / 75, dtype=torch.float32).item(), k / 75)]
    values += [torch.tensor(k / q, dtype=torch.float32).item() for q in (5, 25, 50, 80, 100) for k in range(q + 1)]
    atomic_write_csv(tmp_path / "t.csv", pd.DataFrame({"accuracy": values}))
    assert read_csv(tmp_path / "t.csv")["accuracy"].tolist() == values

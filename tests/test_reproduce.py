"""Reproduction bundles (benchmark.reproduce): a finished run copied with its manifest re-tests exactly; a changed
record is reported; bad input is one line and exit code 2; the shipped bundle re-tests exactly and the README's
table is the bundle's."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmark import reproduce
from benchmark.pipeline import RunConfig, run

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "reproduce" / "omniglot"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    res = tmp_path_factory.mktemp("res")
    cfg = RunConfig("protonet", "omniglot", 5, 1, profile="smoke", test_episodes=12, val_episodes=2,
                    overrides=(("train_steps", 3), ("val_every", 3)))
    run(cfg, res, torch.device("cpu"))
    return res / cfg.run_id


def test_add_verify_and_table(finished, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    assert reproduce.main(["add", str(finished), "--bundle", str(bundle), "--command", "python -m benchmark.run X",
                           "--wall-seconds", "12"]) == 0
    shipped = bundle / finished.name
    assert sorted(p.name for p in shipped.iterdir()) == sorted(reproduce.RECORDS + (reproduce.MANIFEST,))
    m = json.loads((shipped / reproduce.MANIFEST).read_text())
    assert m["command"] == "python -m benchmark.run X" and m["wall_seconds"] == 12.0 and m["commit"] == json.loads((finished / "summary.json").read_text())["code_version"]
    assert m["threads"] == torch.get_num_threads() and m["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    capsys.readouterr()
    assert reproduce.main(["verify", "--bundle", str(bundle)]) == 0
    assert "all 12 test episodes identical" in capsys.readouterr().out
    # one recorded episode changed by one test query: verify fails and says so
    t = pd.read_csv(shipped / "test_episodes.csv")
    t.loc[3, "accuracy"] = t.loc[3, "accuracy"] + 1 / 75 if t.loc[3, "accuracy"] < 1 else t.loc[3, "accuracy"] - 1 / 75
    t.to_csv(shipped / "test_episodes.csv", index=False)
    assert reproduce.main(["verify", "--bundle", str(bundle)]) == 1
    assert "1 of 12 episodes differ" in capsys.readouterr().out
    # --first N re-tests episodes 0 .. N-1 only: the same episodes, so 3 pass and 5 reach the changed one
    assert reproduce.main(["verify", "--bundle", str(bundle), "--first", "3"]) == 0
    assert "the first 3 test episodes identical" in capsys.readouterr().out
    assert reproduce.main(["verify", "--bundle", str(bundle), "--first", "5"]) == 1
    assert "1 of 5 episodes differ" in capsys.readouterr().out
    text = reproduce.table(bundle)
    assert "| protonet | omniglot 5-way 1-shot |" in text and "| 98.8 |" in text  # the paper's Table 1 figure


def test_bad_input_is_one_line(finished, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(finished, partial)
    (partial / "summary.json").unlink()
    for argv in (["add", str(partial), "--command", "x", "--bundle", str(tmp_path / "b")],
                 ["verify", "--bundle", str(tmp_path / "none")],
                 ["verify", "--bundle", str(tmp_path), "--threads", "0"],
                 ["verify", "--bundle", str(tmp_path), "--first", "0"],
                 ["add", str(finished), "--command", "x", "--bundle", str(tmp_path / "b"), "--wall-seconds", "-1"]):
        capsys.readouterr()
        assert reproduce.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    (tmp_path / "README.md").write_text("no block\n")
    with pytest.raises(reproduce.UsageError):
        reproduce.write_block(tmp_path / "README.md", "x")


def test_block_rewrite(tmp_path):
    f = tmp_path / "R.md"
    f.write_text(f"a\n{reproduce.BEGIN}\nold\n{reproduce.END}\nb\n")
    assert reproduce.write_block(f, "new\n") and f.read_text() == f"a\n{reproduce.BEGIN}\nnew\n{reproduce.END}\nb\n"
    assert not reproduce.write_block(f, "new\n")


@pytest.mark.skipif(not BUNDLE.is_dir(), reason="no shipped bundle in this checkout")
def test_the_shipped_bundle_retests_exactly_and_the_docs_table_is_its_own(capsys):
    """Every shipped paper-budget run: full paper budget, the main job's test fingerprints, and its model re-tests to
    the last digit on its recorded episodes (the cheapest model's first 100 here; the command checks them all)."""
    runs = reproduce.bundle_runs(BUNDLE)
    assert runs
    for d in runs:
        s = json.loads((d / "summary.json").read_text())
        assert s["budget_fraction"] == 1.0 and s["profile"] == "paper"
        assert s["test_fingerprint"][:12] in ("493920220c04", "2b9fd94e26ae")
        assert (d / reproduce.MANIFEST).is_file()
    cheapest = min(runs, key=lambda d: json.loads((d / "summary.json").read_text())["ms_per_test_episode"])
    r = reproduce.verify_run(cheapest, first=100)  # the command checks all of them; episode i is the same either way
    assert r["fingerprint_ok"] and r["differ"] == 0 and r["episodes"] == 100 and r["n_recorded"] == 600, r
    docs = (ROOT / "docs" / "reproduction.md").read_text()
    block = docs.split(reproduce.BEGIN, 1)[1].split(reproduce.END, 1)[0]
    assert block == "\n" + reproduce.table(BUNDLE), "python -m benchmark.reproduce table --readme docs/reproduction.md"

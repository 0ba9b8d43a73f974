"""The report generator, on a synthetic results directory with known per-episode accuracies (no training).

The expected CI, paired tests, Holm correction and ranks are computed here independently of benchmark.report.stats.
"""
import base64
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from PIL import Image
from scipy import stats

from benchmark.report import REPORT_LEADERBOARD_COLUMNS, build, build_report, main

N_EP = 40
FP = {"5w1s": "a" * 64, "5w5s": "b" * 64, "mini": "c" * 64}


def _acc(seed, effect, base):
    """Per-episode accuracies (fractions, multiples of 1/75 as with 5 ways x 15 queries)."""
    rng = np.random.default_rng(seed)
    a = np.clip(base + effect + rng.normal(0, 0.03, len(base)), 0, 1)
    return np.round(a * 75) / 75


def write_run(root: Path, method, family, dataset="omniglot", ways=5, shots=1, seed=0, acc=None, fp=None,
              backbone="conv4", curve=((100, 60.0), (200, 85.0), (300, 92.0)), cache=(), suffix="", queries=15,
              summary_extra=None, hyper=None, overrides=()):
    """A finished run folder as benchmark.run writes it; ``summary_extra`` adds summary fields (e.g. recorded
    facts, budget), ``hyper`` the config's recorded hyperparameters. Without them: a run from before those fields."""
    run_id = f"{method}-{dataset}-{ways}w{shots}s-{backbone}-smoke-s{seed}{suffix}"
    d = root / run_id
    d.mkdir(parents=True)
    acc = np.asarray(acc)
    summary = {
        "run_id": run_id, "method": method, "family": family, "dataset": dataset, "ways": ways, "shots": shots,
        "backbone": backbone, "profile": "smoke", "seed": seed, "mean": 100 * acc.mean(), "ci95": 0.0,
        "n_episodes": len(acc), "queries": queries, "train_steps": curve[-1][0], "train_episodes": curve[-1][0],
        "train_seconds": curve[-1][0] / 10, "val_seconds": 1.0, "ms_per_train_episode": 100.0,
        "ms_per_test_episode": 20.0 + seed, "best_step": curve[-1][0], "best_val_acc": curve[-1][1],
        "peak_memory_mb": 500.0 + seed, "memory_kind": "process_rss", "trainable_params": 111936,
        "adapted_params": 0 if family == "metric" else 111936, "device": "cpu",
        "environment": {"python": "3.11", "torch": "2.x", "numpy": "2.x", "device_name": "test cpu"},
        "code_version": "0123456789abcdef0123", "dataset_fingerprint": "d" * 64, "val_fingerprint": "e" * 64,
        "test_fingerprint": fp, "cache": list(cache), "finished_at": f"2026-01-01T00:00:0{seed}Z",
    }
    summary.update(summary_extra or {})
    (d / "summary.json").write_text(json.dumps(summary))
    config = {"method": method, "queries": queries, "overrides": [list(o) for o in overrides]}
    if hyper is not None:
        config["hyperparameters"] = hyper
    (d / "config.json").write_text(json.dumps(config))
    pd.DataFrame({"episode": range(len(acc)), "accuracy": acc, "adapt_seconds": 0.02}).to_csv(
        d / "test_episodes.csv", index=False)
    off = -1.0 if seed == 0 else 1.0  # two seeds average to the given curve
    pd.DataFrame([{"step": s, "episodes": s, "train_seconds": s / 10, "val_acc": v + off, "val_ci95": 2.0}
                  for s, v in curve]).to_csv(d / "curve.csv", index=False)
    return run_id


EFFECTS = {"protonet": ("metric", 0.0), "matching": ("metric", -0.004), "maml": ("initialization", -0.08)}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("res")
    base = np.random.default_rng(123).uniform(0.55, 0.95, N_EP)
    acc = {}
    for i, (m, (fam, eff)) in enumerate(EFFECTS.items()):
        for seed in (0, 1):
            a = _acc(100 * i + seed, eff, base)
            acc[(m, seed)] = a
            write_run(root, m, fam, seed=seed, acc=a, fp=FP["5w1s"],
                      curve=((100, 60.0), (200, 85.0), (300, 92.0)) if m == "protonet" else
                      ((100, 40.0), (200, 55.0), (300, 70.0)),
                      cache=[{"name": "pretrain", "file": "cache/pretrain-x.pt", "seconds": 42.0,
                              "computed_in_this_run": seed == 0}] if m == "maml" else ())
    for m in ("protonet", "maml"):
        write_run(root, m, EFFECTS[m][0], shots=5, acc=_acc(7, EFFECTS[m][1], base), fp=FP["5w5s"])
    for m in ("mtl", "mtl-noht"):
        write_run(root, m, "initialization", dataset="miniimagenet", backbone="resnet12", acc=_acc(9, -0.3, base),
                  fp=FP["mini"])
    (root / "protonet-omniglot-5w1s-conv4-smoke-s9.partial").mkdir()
    out = tmp_path_factory.mktemp("rep") / "latest"
    path = build_report(root, out)
    return root, out, path, acc


def _holm(p):
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adj, run = [0.0] * m, 0.0
    for k, i in enumerate(order):
        run = max(run, min(1.0, (m - k) * p[i]))
        adj[i] = run
    return adj


def test_leaderboard_ci_seed_sd_and_schema(synthetic):
    root, out, path, acc = synthetic
    board = pd.read_csv(out / "leaderboard.csv")
    assert list(board.columns) == REPORT_LEADERBOARD_COLUMNS
    assert len(board) == 3 + 2 + 2  # method x setting, aggregated over seeds
    for m in EFFECTS:
        row = board[(board["method"] == m) & (board["shots"] == 1)].iloc[0]
        avg = 100 * (acc[(m, 0)] + acc[(m, 1)]) / 2
        assert row["mean"] == pytest.approx(avg.mean(), abs=1e-3)
        assert row["ci95"] == pytest.approx(1.96 * avg.std(ddof=1) / math.sqrt(N_EP), abs=1e-3)
        seed_means = [100 * acc[(m, s)].mean() for s in (0, 1)]
        assert row["seed_sd"] == pytest.approx(np.std(seed_means, ddof=1), abs=1e-3)
        assert row["n_seeds"] == 2 and row["n_episodes"] == N_EP and row["test_fingerprint"] == FP["5w1s"]


def test_paired_tests_holm_and_ranks(synthetic):
    root, out, path, acc = synthetic
    avg = {m: (acc[(m, 0)] + acc[(m, 1)]) / 2 * 100 for m in EFFECTS}
    names = list(EFFECTS)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    p = [stats.ttest_rel(avg[a], avg[b]).pvalue for a, b in pairs]
    ph = _holm(p)
    got = pd.read_csv(out / "paired.csv")
    got = got[(got["shots"] == 1) & (got["dataset"] == "omniglot")]
    assert len(got) == 3
    for (a, b), pv, phv in zip(pairs, p, ph):
        r = got[((got["a"] == a) & (got["b"] == b)) | ((got["a"] == b) & (got["b"] == a))].iloc[0]
        assert r["p"] == pytest.approx(pv, rel=1e-6, abs=1e-12)
        assert r["p_holm"] == pytest.approx(phv, rel=1e-6, abs=1e-12)
        assert bool(r["significant"]) == (phv < 0.05)
    # the synthetic effects: protonet ~ matching, both significantly above maml
    sig = {frozenset(pr): phv < 0.05 for pr, phv in zip(pairs, ph)}
    assert not sig[frozenset(("protonet", "matching"))] and sig[frozenset(("protonet", "maml"))] \
        and sig[frozenset(("matching", "maml"))]
    expected = {m: 1 + sum(1 for o in names if o != m and sig[frozenset((m, o))] and avg[o].mean() > avg[m].mean())
                for m in names}
    assert expected == {"protonet": 1, "matching": 1, "maml": 3}
    board = pd.read_csv(out / "leaderboard.csv")
    b1 = board[(board["shots"] == 1) & (board["dataset"] == "omniglot")].set_index("method")["rank"].to_dict()
    assert b1 == expected


def test_published_comparison_protocol_and_ablation(synthetic):
    root, out, path, acc = synthetic
    board = pd.read_csv(out / "leaderboard.csv").set_index(["method", "dataset", "shots"])
    pn = board.loc[("protonet", "omniglot", 1)]
    assert pn["published"] == 98.8 and "ProtoNets" in pn["published_source"]
    assert pn["difference"] == pytest.approx(pn["mean"] - 98.8, abs=1e-3)
    assert not pn["published_comparable"] and "test episodes: paper 1000, ours 40" in pn["protocol_differences"]
    mt = board.loc[("matching", "omniglot", 1)]
    assert mt["published"] == 98.1 and mt["published_comparable"]  # conv4, 64 filters; nothing else recorded
    mm = board.loc[("maml", "omniglot", 1)]
    assert "queries: paper 1 per class, ours 15" in mm["protocol_differences"]
    noht = board.loc[("mtl-noht", "miniimagenet", 1)]
    assert noht["published"] == 60.2 and "without HT" in noht["published_source"] and noht["variant_of"] == "mtl"
    assert board.loc[("mtl", "miniimagenet", 1)]["published"] == 61.2
    md = path.read_text()
    assert "| 98.80 [" in md and "†" in md and "mtl-noht (variant of mtl)" in md
    assert "omniglot 5-way 1-shot" in md and "ProtoNets paper (Snell et al. 2017) Table 1" in md


def test_episode_counts_cost_and_files(synthetic):
    root, out, path, acc = synthetic
    counts = pd.read_csv(out / "episode_counts.csv")
    pn = counts[(counts["method"] == "protonet") & (counts["shots"] == 1)].set_index("target")
    assert pn.loc["50%", "train_episodes"] == 100 and pn.loc["80%", "train_episodes"] == 200
    assert pn.loc["90%", "train_episodes"] == 300 and not pn.loc["95%", "reached"]
    assert pn.loc["95% of final", "threshold"] == pytest.approx(0.95 * 92.0)
    md = path.read_text()
    assert "not reached (best 92.0%)" in md
    assert "pretrain" in md and "42.0 s" in md  # shared artefact shown once
    for section in ("Survey Table 1 mirror", "Metric-based methods", "Paired statistics", "Convergence",
                    "Episode counts", "Cost", "Provenance"):
        assert section in md
    pngs = sorted(p.name for p in out.glob("convergence-*.png"))
    assert len(pngs) == 2 * 3 and all(f"]({n})" in md for n in pngs)
    assert "1 unfinished run(s) ignored" in md


def test_html_is_self_contained(synthetic):
    root, out, path, acc = synthetic
    html = (out / "report.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == 6 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).verify()
    assert "http://" not in html and "https://" not in html and "<script" not in html and "<link" not in html
    assert "<table" in html and "protonet" in html


def _chromium():
    for c in ("chromium", "chromium-browser"):
        if shutil.which(c):
            return shutil.which(c)
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


def test_html_renders_in_headless_chromium(synthetic, tmp_path):
    exe = _chromium()
    if exe is None:
        msg = "chromium is not installed (apt-get install -y chromium; .ci/run installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    root, out, path, acc = synthetic
    shot = tmp_path / "shot.png"
    r = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
                        (out / "report.html").resolve().as_uri()], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2000, 1280)
    non_white = (img < 235).any(axis=2).mean()
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    assert non_white > 0.03 and colours > 50, (non_white, colours)


def _run_main(args, capsys):
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr()


def test_mismatched_fingerprints_refused(synthetic, tmp_path, capsys):
    root, *_ = synthetic
    res = tmp_path / "res"
    shutil.copytree(root, res, ignore=lambda d, names: [n for n in names if "5w5s" in n or "miniimagenet" in n])
    write_run(res, "relation", "metric", seed=0, acc=_acc(5, 0.0, np.full(30, 0.8)), fp="f" * 64)
    rc, cap = _run_main(["--results-dir", res, "--reports-dir", tmp_path / "rep"], capsys)
    assert rc == 2
    err = [l for l in cap.err.strip().splitlines() if l.startswith("error")]
    assert len(err) == 1 and "fingerprint" in err[0] and "Traceback" not in cap.err
    md = (tmp_path / "rep/latest/report.md").read_text()
    assert "**Refused:**" in md and "relation" in md and "different episodes" in md
    paired = pd.read_csv(tmp_path / "rep/latest/paired.csv")
    assert not ((paired["a"] == "relation") | (paired["b"] == "relation")).any()


def test_thresholds_option_and_run_ids(synthetic, tmp_path, capsys):
    root, *_ = synthetic
    res = tmp_path / "res"  # one omniglot and one miniImageNet setting
    shutil.copytree(root, res, ignore=lambda d, names: [n for n in names if n.startswith(("maml", "matching"))
                                                        or "5w5s" in n])
    rc, cap = _run_main(["--results-dir", res, "--reports-dir", tmp_path, "--name", "t", "--thresholds", "70",
                         "omniglot:55,91"], capsys)
    assert rc == 0, cap.err
    counts = pd.read_csv(tmp_path / "t/episode_counts.csv")
    assert set(counts[counts["dataset"] == "omniglot"]["target"]) == {"55%", "91%", "95% of final"}
    assert set(counts[counts["dataset"] == "miniimagenet"]["target"]) == {"70%", "95% of final"}
    ids = [p.name for p in res.iterdir() if p.name.startswith("protonet-") and not p.name.endswith(".partial")]
    build_report(res, tmp_path / "sub", run_ids=ids)
    assert set(pd.read_csv(tmp_path / "sub/leaderboard.csv")["method"]) == {"protonet"}


@pytest.mark.parametrize("case", ["missing", "empty", "only_partial", "incomplete", "bad_thresholds"])
def test_errors_are_one_line_exit_2(tmp_path, capsys, case):
    res = tmp_path / "res"
    extra = []
    if case != "missing":
        res.mkdir()
    if case == "only_partial":
        (res / "protonet-omniglot-5w1s-conv4-smoke-s0.partial").mkdir()
    if case == "incomplete":
        rid = write_run(res, "protonet", "metric", acc=np.full(5, 0.8), fp="a" * 64)
        (res / rid / "test_episodes.csv").unlink()
    if case == "bad_thresholds":
        write_run(res, "protonet", "metric", acc=np.full(5, 0.8), fp="a" * 64)
        extra = ["--thresholds", "150"]
    rc, cap = _run_main(["--results-dir", res, "--reports-dir", tmp_path / "rep", *extra], capsys)
    lines = cap.err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert {"missing": "does not exist", "empty": "no finished runs", "only_partial": "unfinished",
            "incomplete": "incomplete", "bad_thresholds": "(0, 100]"}[case] in lines[0]


def test_cli_subprocess_no_traceback(tmp_path):
    (tmp_path / "res").mkdir()
    r = subprocess.run([sys.executable, "-m", "benchmark.report", "--results-dir", str(tmp_path / "res")],
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no finished runs" in r.stderr


# ------------------------------------------------------------------------------------------------ records only
def facts(family, idea="", paper="", variant_of=None, metric_facts=None, backbone=None, adapts_at_test=False):
    """Recorded facts as benchmark.pipeline.facts.record_facts writes them (backbone: the recorded backbone_facts)."""
    return {"method_facts": {"family": family, "idea": idea, "paper": paper, "variant_of": variant_of,
                             "adapts_at_test": adapts_at_test, "metric_facts": metric_facts},
            "backbone_facts": backbone or {"name": "conv4", "kind": "conv4", "width": 64}}


def test_record_facts_from_the_registry_and_backbone_table():
    from benchmark.pipeline import registry
    from benchmark.pipeline.facts import record_facts

    f = record_facts(registry.get("matching-nofce"), "conv4-32")
    mf = f["method_facts"]
    assert set(mf) == {"family", "idea", "paper", "variant_of", "adapts_at_test", "metric_facts", "origin"}
    assert mf["origin"] == {"kind": "builtin"}
    assert mf["family"] == "metric" and mf["variant_of"] == "matching" and "Vinyals" in mf["paper"]
    assert mf["adapts_at_test"] is False and mf["metric_facts"]["query embedding"] == "the same CNN (f = g)"
    assert f["backbone_facts"] == {"name": "conv4-32", "kind": "conv4", "width": 32}
    f = record_facts(registry.get("maml"), "resnet12-narrow")
    assert f["method_facts"]["adapts_at_test"] is True and f["method_facts"]["metric_facts"] is None
    assert f["backbone_facts"] == {"name": "resnet12-narrow", "kind": "resnet12", "widths": [32, 64, 128, 256]}
    json.dumps(f)  # goes into summary.json as it is


def test_report_package_imports_neither_methods_nor_backbones(tmp_path):
    """Statically (no import of methods, backbones or facts in any module of the package) and at run time (a report
    built in a fresh interpreter leaves them out of sys.modules)."""
    import ast

    pkg = ROOT / "benchmark" / "report"
    modules = sorted(pkg.glob("*.py"))
    assert {"__init__.py", "__main__.py", "records.py", "reference.py", "render.py", "stats.py"} <= \
        {m.name for m in modules}
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = "." * node.level + (node.module or "")
                names = [base] + [f"{base}.{a.name}" if node.module else f"{base}{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                parts = n.lstrip(".").split(".")
                assert parts[0] != "methods" and "backbones" not in parts and "facts" not in parts \
                    and parts[0] != "torch", f"{path.name}:{node.lineno} imports {n}"
    res = tmp_path / "res"
    write_run(res, "matching-nofce", "metric", acc=np.full(10, 0.8), fp="a" * 64, hyper={"fce": False},
              summary_extra=facts("metric", variant_of="matching"))
    write_run(res, "maml", "initialization", acc=np.full(10, 0.7), fp="a" * 64)
    code = ("import sys; from benchmark.report import build_report; "
            f"build_report({str(res)!r}, {str(tmp_path / 'rep')!r}); "
            "print(sorted(m for m in sys.modules if m == 'methods' or m.startswith(('methods.', 'torch')) "
            "or m in ('benchmark.kit.backbones', 'benchmark.pipeline.facts')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "rep" / "report.md").is_file()


def test_report_describes_methods_and_backbones_by_recorded_facts(tmp_path):
    """Facts come from the records, not from today's code: a method the registry does not know, a variant whose
    name does not say so, and a backbone whose recorded width differs from what its name means today."""
    res = tmp_path / "res"
    mf = {"support embedding": "sparse codes", "query embedding": "sparse codes", "distance": "L1",
          "distinctive": "recorded, not registered"}
    write_run(res, "newnet", "metric", acc=np.full(10, 0.9), fp="a" * 64,
              summary_extra=facts("metric", "a new idea", "Someone et al. 2031", metric_facts=mf,
                                  backbone={"name": "conv4", "kind": "conv4", "width": 32}))
    write_run(res, "bignet", "metric", acc=np.full(10, 0.8), fp="a" * 64,
              summary_extra=facts("metric", "a bigger new idea", "Someone et al. 2031", variant_of="newnet"))
    write_run(res, "protonet", "metric", acc=np.full(10, 0.95), fp="a" * 64,
              summary_extra=facts("metric", backbone={"name": "conv4", "kind": "conv4", "width": 32}))
    res_b = build(res, tmp_path / "rep")
    board = pd.read_csv(tmp_path / "rep/leaderboard.csv").set_index("method")
    assert board.loc["bignet", "variant_of"] == "newnet" and pd.isna(board.loc["newnet", "variant_of"])
    pn = board.loc["protonet"]
    assert pn["published"] == 98.8 and not pn["published_comparable"]
    assert "backbone: paper conv4 with 64 filters, ours conv4 (32 filters)" in pn["protocol_differences"]
    md = (tmp_path / "rep/report.md").read_text()
    table2 = md.split('id="table2"')[1].split('id="paired"')[0]
    assert "| newnet | Someone et al. 2031 | conv4 | sparse codes | sparse codes | L1 | recorded, not registered |" \
        in table2
    assert "bignet (variant of newnet)" in table2 and "a bigger new idea" in md
    assert "Registered methods without runs" not in md
    assert not any("predate" in n for n in res_b.notes)
    # variants sit beneath their main method in Table 1
    table1 = md.split('id="table1"')[1].split('id="table2"')[0]
    assert table1.index("| newnet |") < table1.index("| bignet (variant of newnet) |")


def test_old_runs_without_recorded_facts_still_report(tmp_path, capsys):
    res = tmp_path / "res"
    write_run(res, "mtl", "initialization", dataset="miniimagenet", backbone="resnet12", acc=np.full(10, 0.6),
              fp="c" * 64)
    write_run(res, "mtl-noht", "initialization", dataset="miniimagenet", backbone="resnet12", acc=np.full(10, 0.6),
              fp="c" * 64)
    write_run(res, "matching", "metric", acc=np.full(10, 0.8), fp="a" * 64)
    write_run(res, "relation", "metric", backbone="conv4-32", acc=np.full(10, 0.8), fp="a" * 64, suffix="x")
    write_run(res, "protonet", "metric", acc=np.full(10, 0.9), fp="a" * 64,
              summary_extra=facts("metric", "recorded idea", "Snell et al."))
    rc, cap = _run_main(["--results-dir", res, "--reports-dir", tmp_path / "rep"], capsys)
    assert rc == 0, cap.err
    note = [l for l in cap.err.splitlines() if "predate" in l]
    assert len(note) == 1 and note[0].startswith("note: 4 runs predate recorded method facts;")
    md = (tmp_path / "rep/latest/report.md").read_text()
    assert "4 runs predate recorded method facts" in md
    board = pd.read_csv(tmp_path / "rep/latest/leaderboard.csv").set_index(["method", "backbone"])
    noht = board.loc[("mtl-noht", "resnet12")]
    assert noht["family"] == "initialization" and noht["variant_of"] == "mtl"  # inferred from the name
    assert noht["published"] == 60.2  # resnet12 as named when it ran; MTL's protocol has 1 query per class
    assert noht["protocol_differences"] == "queries: paper 1 per class, ours 15"
    assert board.loc[("matching", "conv4")]["family"] == "metric"
    assert board.loc[("matching", "conv4")]["published_comparable"]  # conv4: 64 filters when it ran
    rel = board.loc[("relation", "conv4-32")]
    assert "backbone: paper conv4 with 64 filters, ours conv4-32 (32 filters)" in rel["protocol_differences"]
    assert pd.isna(board.loc[("protonet", "conv4")]["budget_fraction"])
    table2 = md.split('id="table2"')[1].split('id="paired"')[0]
    assert "| matching [1] | — | conv4 | — | — | — | — |" in table2  # no recorded facts, no paper; the survey note
    assert "| protonet | Snell et al. |" in table2


# ------------------------------------------------------------------------------------------------ budget
OLD_COLUMNS = [  # the report leaderboard's columns before the budget columns: never reordered
    "method", "variant_of", "family", "overrides", "dataset", "ways", "shots", "queries", "backbone", "profile",
    "mean", "ci95", "n_episodes", "n_seeds", "seeds", "seed_sd", "rank",
    "published", "published_ci95", "published_source", "published_comparable", "protocol_differences", "difference",
    "train_episodes", "train_seconds", "ms_per_train_episode", "ms_per_test_episode", "peak_memory_mb", "memory_kind",
    "trainable_params", "adapted_params", "shared_seconds",
    "device", "test_fingerprint", "dataset_fingerprint", "code_version", "run_ids",
]


def test_budget_fraction_columns_and_cells(tmp_path):
    from benchmark.store.leaderboard import RUNS_LEADERBOARD_COLUMNS as LEADERBOARD_COLUMNS
    from benchmark.store.leaderboard import runs_leaderboard as leaderboard

    res = tmp_path / "res"
    for seed, frac in ((0, 0.015), (1, 0.025)):
        write_run(res, "protonet", "metric", seed=seed, acc=np.full(10, 0.9), fp="a" * 64,
                  summary_extra={"paper_train_episodes": 20000, "budget_fraction": frac})
    write_run(res, "maml", "initialization", acc=np.full(10, 0.8), fp="a" * 64)  # an older run: no budget fields
    build_report(res, tmp_path / "rep")
    board = pd.read_csv(tmp_path / "rep/leaderboard.csv").set_index("method")
    assert REPORT_LEADERBOARD_COLUMNS == OLD_COLUMNS + ["paper_train_episodes", "budget_fraction", "split",
                                                        "precision", "deterministic", "eval_seed",
                                                        "peak_memory_increase_mb", "flops_per_train_episode",
                                                        "transductive"]
    assert board.loc["protonet", "paper_train_episodes"] == 20000
    assert board.loc["protonet", "budget_fraction"] == pytest.approx(0.02)
    assert pd.isna(board.loc["maml", "paper_train_episodes"]) and pd.isna(board.loc["maml", "budget_fraction"])
    md = (tmp_path / "rep/report.md").read_text()
    row = next(l for l in md.splitlines() if l.startswith("| metric-based | protonet |"))
    assert "| 2.0% |" in row  # the budget sub-column
    assert "%" not in next(l for l in md.splitlines() if "| maml |" in l).split("not run")[-1]
    assert "Not comparable with published figures: 2.0%" in md  # the banner
    # the per-run leaderboard of the results store: columns appended at the end (budget, where a run ran, how)
    assert LEADERBOARD_COLUMNS[-10:] == ["code_version", "budget_fraction", "executor", "node", "precision",
                                         "deterministic", "eval_seed", "flops_per_train_episode", "transductive",
                                         "origin"]
    runs = leaderboard(res).set_index(["method", "seed"])
    assert runs.loc[("protonet", 1), "budget_fraction"] == 0.025 and pd.isna(runs.loc[("maml", 0), "budget_fraction"])
    assert runs["executor"].isna().all()  # runs recorded without a placement (older runs)


# ------------------------------------------------------------------------------------------------ like for like
def test_matching_fce_compared_like_for_like(tmp_path):
    """Matching Networks' Omniglot figures are without FCE, the miniImageNet ones with FCE."""
    res = tmp_path / "res"
    hp = {"train_steps": 300, "fce": True, "fce_steps": 5}
    for ds, fp in (("omniglot", "a" * 64), ("miniimagenet", "c" * 64)):
        write_run(res, "matching", "metric", dataset=ds, acc=np.full(10, 0.8), fp=fp, hyper=hp,
                  summary_extra=facts("metric"))
        write_run(res, "matching-nofce", "metric", dataset=ds, acc=np.full(10, 0.75), fp=fp,
                  hyper={**hp, "fce": False}, summary_extra=facts("metric", variant_of="matching"))
    write_run(res, "matching", "metric", acc=np.full(10, 0.7), fp="a" * 64, hyper={**hp, "fce": False},
              overrides=[("fce", False)], suffix="-fceoff", summary_extra=facts("metric"))
    write_run(res, "mtl-ft", "initialization", dataset="miniimagenet", backbone="resnet12", acc=np.full(10, 0.6),
              fp="c" * 64, hyper={"mode": "ft"},
              summary_extra=facts("initialization", variant_of="mtl",
                                  backbone={"name": "resnet12", "kind": "resnet12", "widths": [64, 160, 320, 640]}))
    build_report(res, tmp_path / "rep")
    board = pd.read_csv(tmp_path / "rep/leaderboard.csv", keep_default_na=False).set_index(
        ["method", "dataset", "overrides"])
    m = board.loc[("matching", "omniglot", "")]
    assert float(m["published"]) == 98.1 and m["published_comparable"] == "False"
    assert m["protocol_differences"] == "fce: published False, ran True"
    off = board.loc[("matching", "omniglot", "fce=False")]
    assert float(off["published"]) == 98.1 and off["published_comparable"] == "True"
    nofce = board.loc[("matching-nofce", "omniglot", "")]
    assert float(nofce["published"]) == 98.1 and nofce["published_comparable"] == "True"
    assert nofce["protocol_differences"] == "" and float(nofce["difference"]) == pytest.approx(75.0 - 98.1)
    assert "Matching Networks" in nofce["published_source"]
    mi = board.loc[("matching", "miniimagenet", "")]
    assert float(mi["published"]) == 43.56 and mi["published_comparable"] == "True"
    assert board.loc[("matching-nofce", "miniimagenet", "")]["published"] == ""  # FCE figure: not like for like
    assert board.loc[("mtl-ft", "miniimagenet", "")]["published"] == ""  # other variants: as before
    md = (tmp_path / "rep/report.md").read_text()
    assert "published with fce=False" in md and "† other protocol: fce: published False, ran True" in md


def test_transductive_and_external_entries_are_marked_and_flops_shown(tmp_path):
    """A transductive run and a run of an external method are marked in the tables (and the leaderboard); the cost
    section shows the harness's FLOPs per training episode; older runs without these fields show neither mark."""
    rng = np.random.default_rng(0)
    acc = lambda p: (rng.random(30) < p).astype(float)  # noqa: E731
    write_run(tmp_path / "res", "protonet", "metric", acc=acc(0.9), fp="f" * 64,
              summary_extra={"flops_per_train_episode": 2.5e9, "transductive": False})
    write_run(tmp_path / "res", "maml", "initialization", acc=acc(0.8), fp="f" * 64,
              summary_extra={"flops_per_train_episode": 1.2e9, "transductive": True})
    write_run(tmp_path / "res", "cosnet", "metric", acc=acc(0.85), fp="f" * 64,
              summary_extra={"method_facts": {"origin": {"kind": "file", "path": "/x/c.py", "sha256": "a" * 64}}})
    write_run(tmp_path / "res", "relation", "metric", acc=acc(0.7), fp="f" * 64)  # before the fields
    res = build(tmp_path / "res", tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    board = res.leaderboard.set_index("method")
    assert bool(board.loc["maml", "transductive"]) and not bool(board.loc["protonet", "transductive"])
    assert board.loc["protonet", "flops_per_train_episode"] == 2.5e9
    assert "maml [transductive]" in md and "cosnet [ext]" in md and "| 2.50 |" in md and "| 1.20 |" in md


def test_wide_tables_keep_sentences_readable_and_figures_on_one_line():
    """In Table 1's HTML a description keeps a readable width (the table scrolls sideways) instead of being squeezed
    to a word per line, and a measured figure is never broken across lines."""
    from benchmark.report.render import _html_table

    cols = pd.MultiIndex.from_tuples([("", "Method"), ("", "Description (this project)"), ("omniglot", "measured")])
    text = "a softmax over negative squared Euclidean distances to class means"
    df = pd.DataFrame([["protonet", text, "96.83 ± 0.35"]], columns=cols)
    t = _html_table(df)
    assert '<td class="txt">a softmax over negative squared' in t and '<td class="nw">96.83 ± 0.35</td>' in t
    from benchmark.report.render import _CSS

    assert "td.txt{min-width:" in _CSS and "td.nw{white-space:nowrap}" in _CSS


def test_family_order_is_the_registrys():
    """The report keeps its own copy of the families' order (it reads records and imports only the store, not the
    pipeline's registry); the copy must stay the registry's."""
    from benchmark.pipeline.registry import FAMILY_ORDER as registry
    from benchmark.report.common import FAMILY_ORDER as report

    assert report == registry


def test_the_report_command_leaves_benchmark_guard_alone(tmp_path, monkeypatch, capsys):
    """The report calls no method, so an unknown BENCHMARK_GUARD is not its bad input (the other commands refuse
    it): its own errors come as before, one line and exit code 2."""
    monkeypatch.setenv("BENCHMARK_GUARD", "maybe")
    assert main(["--results-dir", str(tmp_path / "none"), "--reports-dir", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: results directory {tmp_path / 'none'} does not exist; run python -m benchmark.run first " \
                  "or pass --results-dir\n"

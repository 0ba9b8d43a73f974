"""Provenance that explains differences, and honest uncertainty in the report.

* each run records the CPU instruction set PyTorch uses, the CPU model and the math libraries;
* ``benchmark.store.compare`` (and so the check, the GPU check and the report) names the recorded facts that differ
  between two runs of one configuration whose results differ; records older than the fields still load and report;
* the report: how many seeds each entry has (first paragraph), bold only where every compared entry has >= 3 seeds,
  a one-seed entry's note with its method's measured spread (``benchmark/reference/seed_spread.csv``);
* the seed spread measured from a results directory (``benchmark.store.spread``, ``scripts/seed_spread.py``).
"""
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT
from test_report import _acc, write_run
from test_report_tex import _bold, parse_tables

from benchmark.report import build, main
from benchmark.store.compare import explain, folders_differ, provenance, provenance_differences
from benchmark.store.folders import RunFolder
from benchmark.store.spread import SEED_SPREAD_COLUMNS, seed_spread

N = 40
FA = "a" * 64
BASE = np.random.default_rng(7).uniform(0.55, 0.95, N)
NEW_ENV = {"python": "3.11", "torch": "2.x", "numpy": "2.x", "threads": 2, "device_name": "AMD EPYC (2 logical "
           "cores, 2 threads)", "cpu_capability": "AVX2", "cpu_model": "AMD EPYC", "onednn": "3.12.0",
           "mkl": "2024.2", "blas": "mkl", "lapack": "mkl", "openmp": "201511"}


def _tiny_run(results):
    from benchmark.pipeline import RunConfig, run

    over = (("train_steps", 2), ("val_every", 2), ("train_ways", 5), ("train_queries", 5))
    cfg = RunConfig("protonet", "omniglot", 5, 1, profile="smoke", test_episodes=5, val_episodes=3, overrides=over)
    run(cfg, results, torch.device("cpu"))
    return cfg.run_id


# ------------------------------------------------------------------------------------------------ recorded facts
def test_a_run_records_instruction_set_cpu_and_math_libraries(tmp_path):
    rid = _tiny_run(tmp_path)
    env = json.loads((tmp_path / rid / "summary.json").read_text())["environment"]
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(env["cpu_model"], str) and env["cpu_model"]
    for k in ("onednn", "mkl", "blas", "lapack", "openmp"):  # recorded where PyTorch reports them, null otherwise
        assert k in env and (env[k] is None or isinstance(env[k], str))
    config = torch.__config__.show()
    if "MKL-DNN v" in config or "oneDNN v" in config:
        assert env["onednn"] and env["onednn"] in config
    if "BLAS_INFO=" in config:
        assert f"BLAS_INFO={env['blas']}" in config
    assert env["threads"] == torch.get_num_threads()


def test_math_libraries_read_from_other_builds(monkeypatch):
    """An OpenBLAS build without MKL (as on ARM): MKL recorded as null, BLAS as the build says."""
    from benchmark.pipeline import machine

    fake = ("PyTorch built with:\n  - GCC 11.2\n  - Intel(R) MKL-DNN v3.5.3 (Git Hash abc)\n  - OpenMP 201511 (a.k.a. "
            "OpenMP 4.5)\n  - LAPACK is enabled (usually provided by MKL)\n  - Build settings: BLAS_INFO=open, "
            "BUILD_TYPE=Release, LAPACK_INFO=open, TORCH_VERSION=2.5.1, USE_MKL=OFF,\n")
    monkeypatch.setattr(torch.__config__, "show", lambda: fake)
    machine.math_libraries.cache_clear()
    try:
        assert machine.math_libraries() == {"onednn": "3.5.3", "mkl": None, "blas": "open", "lapack": "open",
                                            "openmp": "201511"}
    finally:
        machine.math_libraries.cache_clear()


def test_cuda_runs_also_record_cuda_and_cudnn():
    """Read without touching a GPU (the versions PyTorch was built with), so checked here on any machine."""
    from benchmark.pipeline.machine import numerics

    cpu, cuda = numerics("cpu"), numerics("cuda:0")
    assert "cuda" not in cpu and "cudnn" not in cpu
    assert cuda["cuda"] == torch.version.cuda and "cudnn" in cuda
    assert {k: v for k, v in cuda.items() if k not in ("cuda", "cudnn")} == cpu


# ------------------------------------------------------------------------------------------------ compare
def test_compare_names_the_differing_fact(tmp_path):
    rid = _tiny_run(tmp_path / "a")
    shutil.copytree(tmp_path / "a" / rid, tmp_path / "b" / rid)
    a, b = RunFolder(tmp_path / "a", rid), RunFolder(tmp_path / "b", rid)
    assert folders_differ(a, b) is None
    # the copy as if run on a machine with another instruction set, with other results
    s = json.loads((b.path / "summary.json").read_text())
    s["environment"]["cpu_capability"] = "OTHER"
    (b.path / "summary.json").write_text(json.dumps(s))
    ep = pd.read_csv(b.path / "test_episodes.csv")
    ep.loc[0, "accuracy"] = 1.0 - ep.loc[0, "accuracy"]
    ep.to_csv(b.path / "test_episodes.csv", index=False)
    why = folders_differ(a, b)
    own = torch.backends.cpu.get_cpu_capability()
    assert why.startswith("per-episode test accuracies differ")
    assert f"the runs differ in CPU instruction set: {own} against OTHER" in why
    assert "threads" not in why and "oneDNN" not in why  # only what differs
    # the command: one line, exit code 1 for different results, 0 for identical, 2 for a folder that is no run
    script = [sys.executable, str(ROOT / "scripts" / "compare_runs.py")]
    r = subprocess.run(script + [str(a.path), str(b.path)], capture_output=True, text=True)
    assert r.returncode == 1 and "CPU instruction set" in r.stdout and len(r.stdout.splitlines()) == 1
    r = subprocess.run(script + [str(a.path), str(a.path)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("identical results; the runs' recorded")
    r = subprocess.run(script + [str(a.path), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "not a finished run" in r.stderr


def test_provenance_of_old_records_without_the_fields():
    old = {"device": "cpu", "code_version": "abc", "environment": {"torch": "2.x", "threads": 2,
                                                                    "device_name": "AMD EPYC (2 logical cores, 2 threads)"}}
    new = {"device": "cpu", "code_version": "abc", "environment": dict(NEW_ENV)}
    p = provenance(old)
    assert p["cpu_model"] == "AMD EPYC" and p["cpu_capability"] is None  # the model from the old device name
    diffs = provenance_differences(old, new)
    assert "CPU instruction set: not recorded against AVX2" in diffs and not any("CPU model" in d for d in diffs)
    assert not any(d.startswith("PyTorch") or d.startswith("CPU threads") for d in diffs)
    same = explain(old, old)
    assert same.startswith("the runs' recorded device, CPU, threads, libraries and code version are the same")
    assert "CPU instruction set" in same and "not recorded" in same  # says what it could not compare
    other = dict(new, environment={**NEW_ENV, "threads": 1})
    assert provenance_differences(new, other) == ["CPU threads: 2 against 1"]


def test_report_names_the_differing_facts_and_old_records_still_report(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    write_run(a, "protonet", "metric", acc=_acc(1, 0.0, BASE), fp=FA)  # an old record: no new fields
    write_run(a, "maml", "initialization", acc=_acc(2, -0.2, BASE), fp=FA, summary_extra={"environment": NEW_ENV})
    res = build(a, tmp_path / "rep")
    prov = res.path.read_text().split('id="provenance"')[1]
    assert "| CPU instruction set | Threads | Math libraries |" in prov
    assert "| AVX2 | 2 | oneDNN 3.12.0, BLAS mkl |" in prov and "| — | — | — |" in prov
    assert "The runs differ in what their numbers depend on" not in prov  # nothing recorded differs
    # a second machine: the same run id with other results on another instruction set and thread count
    shutil.copytree(a, b)
    rid = next(p.name for p in b.iterdir() if p.name.startswith("maml"))
    s = json.loads((b / rid / "summary.json").read_text())
    s["environment"] = {**NEW_ENV, "cpu_capability": "AVX512", "threads": 1}
    (b / rid / "summary.json").write_text(json.dumps(s))
    ep = pd.read_csv(b / rid / "test_episodes.csv")
    ep["accuracy"] = _acc(3, -0.2, BASE)
    ep.to_csv(b / rid / "test_episodes.csv", index=False)
    rc = main(["--results-dir", str(a), str(b), "--reports-dir", str(tmp_path / "cli")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "different records" in err[0]
    assert "CPU instruction set: AVX2 against AVX512; CPU threads: 2 against 1" in err[0]
    # the other machine's runs reported with these: a second seed, and a run of the same entry and seed under
    # another id that finished earlier (left out, with a note saying how its results differ and why)
    shutil.rmtree(b / next(p.name for p in b.iterdir() if p.name.startswith("protonet")))
    dup = rid + "-other"
    shutil.copytree(b / rid, b / dup)
    (b / dup / "summary.json").write_text(json.dumps({**s, "run_id": dup, "finished_at": "2025-12-31T00:00:00Z"}))
    seed1 = rid.replace("-s0", "-s1")
    (b / rid).rename(b / seed1)
    (b / seed1 / "summary.json").write_text(json.dumps({**s, "run_id": seed1, "seed": 1}))
    res = build([a, b], tmp_path / "rep2")
    prov = res.path.read_text().split('id="provenance"')[1]
    assert "The runs differ in what their numbers depend on" in prov
    assert "CPU instruction set: AVX2 (1 run), AVX512 (1 run)" in prov and "CPU threads: 2 (1 run), 1 (1 run)" in prov
    note = next(n for n in res.notes if "ignored" in n)
    assert note.startswith(f"run {dup} ignored: {rid} has the same method")
    assert "different test accuracies" in note and "CPU instruction set: AVX512 against AVX2" in note


# ------------------------------------------------------------------------------------------------ seeds in the report
def _three_methods(root, seeds):
    for i, (m, fam, eff) in enumerate((("protonet", "metric", 0.0), ("matching", "metric", -0.12),
                                       ("maml", "initialization", -0.2))):
        for seed in range(seeds):
            write_run(root, m, fam, seed=seed, acc=_acc(10 * i + 100 * seed, eff, BASE), fp=FA)


@pytest.mark.parametrize("seeds", [1, 3])
def test_bold_needs_three_seeds_per_entry(tmp_path, seeds):
    """protonet is clearly and significantly best; bold only with 3 seeds per entry, else the report says that the
    significance is about the trained models."""
    _three_methods(tmp_path / "res", seeds)
    res = build(tmp_path / "res", tmp_path / "rep")
    md = res.path.read_text()
    tables = parse_tables((tmp_path / "rep" / "tables.tex").read_text())
    bold = {r[0] for t in tables for r in t["rows"] for c in r if _bold(c)}
    board = next(t for t in tables if t["caption"].startswith("Leaderboard"))
    foot = "\n".join(board["foot"])
    paired = md.split('id="paired"')[1].split('id="convergence"')[0]
    first = md.split("\n\n")[1]
    if seeds == 3:
        assert bold == {"protonet"}
        assert "about these trained models" not in foot and "Significance is about the trained models" not in paired
        assert "Every entry has 3 seeds." in first and "leaves out training variance" not in first
    else:
        assert bold == set()
        assert "3 of the 3 entries have 1 seed(s), fewer than 3" in foot and "about these trained models" in foot
        assert ("**Significance is about the trained models here, not the methods**: matching (1 seed), protonet "
                "(1 seed), maml (1 seed) have fewer than 3 seeds.") in paired
        assert "Every entry has 1 seed (one trained model per method and setting)." in first
        assert "a significant difference is about the trained models, not the methods" in first
    assert pd.read_csv(tmp_path / "rep" / "leaderboard.csv").set_index("method").loc["protonet", "rank"] == 1


def test_first_paragraph_with_mixed_seed_counts(tmp_path):
    root = tmp_path / "res"
    _three_methods(root, 1)
    for seed in (1, 2):
        write_run(root, "protonet", "metric", seed=seed, acc=_acc(500 + seed, 0.0, BASE), fp=FA)
    first = build(root, tmp_path / "rep").path.read_text().split("\n\n")[1]
    assert ("Seeds per entry: 3 seeds: protonet (omniglot 5-way 1-shot); 1 seed: matching (omniglot 5-way 1-shot), "
            "maml (omniglot 5-way 1-shot).") in first


def test_one_seed_entry_carries_its_methods_measured_spread(tmp_path, monkeypatch):
    import benchmark.report.entries as entries

    table = pd.DataFrame([{"dataset": "omniglot", "method": "matching", "ways": 5, "shots": 1, "profile": "smoke",
                           "backbone": "conv4", "n_seeds": 3, "seed_sd": 0.8512, "seeds": "0 1 2", "source": "x"},
                          {"dataset": "omniglot", "method": "maml", "ways": 5, "shots": 1, "profile": "quick",
                           "backbone": "conv4", "n_seeds": 3, "seed_sd": 2.0, "seeds": "0 1 2", "source": "x"}],
                         columns=SEED_SPREAD_COLUMNS)
    monkeypatch.setattr(entries, "load_seed_spread", lambda: table)
    _three_methods(tmp_path / "res", 1)
    md = build(tmp_path / "res", tmp_path / "rep").path.read_text()
    note = "matching: one seed, i.e. one trained model; its ± "
    spread = ("The method's measured seed-to-seed sd at this setting and profile is 0.85 points over 3 seeds "
              "(benchmark/reference/seed_spread.csv)")
    paired = md.split('id="paired"')[1].split('id="convergence"')[0]
    assert f"<sub>{note}" in paired and spread in paired
    assert "protonet: one seed" not in md  # no measured spread for it: no note
    assert "maml: one seed" not in md  # measured at another profile only: not its spread
    table1 = md.split('id="table1"')[1].split('id="table2"')[0]
    assert "(1 seed) [" in table1 and spread in table1
    tex = (tmp_path / "rep" / "tables.tex").read_text()
    assert "0.85 points over 3 seeds" in tex
    # the shipped table: measured rows only (at least 3 seeds each, an sd in points, the command that ran them)
    from benchmark.report.reference import load_seed_spread

    shipped = load_seed_spread()
    assert list(shipped.columns) == SEED_SPREAD_COLUMNS
    assert (shipped["n_seeds"] >= 3).all() and shipped["seed_sd"].between(0, 20).all()
    assert shipped["source"].str.contains("--seeds").all()
    assert not shipped.duplicated(["dataset", "method", "ways", "shots", "profile", "backbone"]).any()


# ------------------------------------------------------------------------------------------------ measuring the spread
def test_seed_spread_from_a_results_directory_and_the_script(tmp_path):
    root = tmp_path / "res"
    means = []
    for seed in range(3):
        a = _acc(40 + seed, 0.0, BASE)
        means.append(100 * a.mean())
        write_run(root, "protonet", "metric", seed=seed, acc=a, fp=FA, summary_extra={"environment": NEW_ENV})
    for seed in range(2):  # two seeds only: not measured
        write_run(root, "maml", "initialization", seed=seed, acc=_acc(60 + seed, -0.2, BASE), fp=FA)
    write_run(root, "protonet", "metric", seed=5, acc=_acc(70, 0.0, BASE), fp=FA, overrides=[("lr", 0.1)],
              suffix="-x")  # with an override: left out
    df, notes = seed_spread(root)
    assert list(df.columns) == SEED_SPREAD_COLUMNS and len(df) == 1
    r = df.iloc[0]
    assert (r["method"], r["dataset"], r["ways"], r["shots"], r["profile"], r["backbone"], r["n_seeds"]) == \
        ("protonet", "omniglot", 5, 1, "smoke", "conv4", 3)
    assert r["seed_sd"] == pytest.approx(np.std(means, ddof=1), abs=1e-9) and r["seeds"] == "0 1 2"
    assert "--methods protonet" in r["source"] and "--seeds 0 1 2" in r["source"] and "AVX2" in r["source"]
    assert any("maml" in n and "2 seed(s)" in n for n in notes) and any("1 run(s) with overrides" in n for n in notes)
    # the script merges into a reference table; the report reads it
    script = [sys.executable, str(ROOT / "scripts" / "seed_spread.py")]
    out = tmp_path / "seed_spread.csv"
    out.write_text(",".join(SEED_SPREAD_COLUMNS) + "\nomniglot,maml,5,1,smoke,conv4,3,1.5,0 1 2,earlier\n"
                   "omniglot,protonet,5,1,smoke,conv4,3,9.9,0 1 2,stale\n")
    r = subprocess.run(script + [str(root), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(out).set_index("method")
    assert table.loc["maml", "seed_sd"] == 1.5 and table.loc["protonet", "seed_sd"] == pytest.approx(r_sd := float(
        np.std(means, ddof=1)), abs=1e-4) and r_sd > 0
    # bad input: one line on stderr, exit code 2; nothing measurable: exit code 1
    for args in ([str(root), "--min-seeds", "1"], [str(tmp_path / "missing")], [str(root), "--min-seeds", "x"]):
        r = subprocess.run(script + args, capture_output=True, text=True)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    r = subprocess.run(script + [str(root), "--min-seeds", "4"], capture_output=True, text=True)
    assert r.returncode == 1 and "nothing written" in r.stderr

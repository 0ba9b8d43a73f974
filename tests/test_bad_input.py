"""Bad input for the four commands (issue 30): exit 2, exactly one line on stderr, no traceback, nothing written.
In-process (each command's ``main(argv)``), with a few subprocesses for method files that do not parse."""
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from benchmark import check, evaluate, run
from benchmark.report import cli as report

COMMANDS = {"run": run.main, "evaluate": evaluate.main, "check": check.main, "report": report.main}


def call(command, argv, capsys):
    try:
        code = COMMANDS[command](argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def listing(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def fake_run(res, name="protonet-omniglot-5w1s-conv4-smoke-s0", summary=None):
    d = res / name
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps(summary if summary is not None else {
        "run_id": name, "method": "protonet", "dataset": "omniglot", "ways": 5, "shots": 1, "mean": 50.0,
        "ci95": 1.0, "n_episodes": 1}))
    (d / "config.json").write_text("{}")
    (d / "test_episodes.csv").write_text("episode,accuracy,adapt_seconds\n0,0.5,0.01\n")
    (d / "curve.csv").write_text("step,episodes,train_seconds,val_acc,val_ci95\n1,1,0.1,50,1\n")
    (d / "model.pt").write_bytes(b"")
    return d


VALUES = [  # (command, argv, fragment of the one line)
    ("run", ["--seeds", "x"], "invalid int value"), ("run", ["--ways", "abc"], "invalid int value"),
    ("run", ["--shots", "1.5"], "invalid int value"), ("run", ["--executor", "nosuch"], "invalid choice"),
    ("run", ["--if-locked", "nosuch"], "invalid choice"), ("run", ["--queries"], "expected one argument"),
    ("run", ["--nosuch"], "unrecognized arguments"), ("run", ["--threads", "-1"], "--threads must be at least 1"),
    ("run", ["--threads", "0"], "--threads must be at least 1"), ("run", ["--seeds", "-1"], "--seeds must be 0"),
    ("run", ["--eval-seed", "-3"], "--eval-seed must be 0"), ("run", ["--ways", "0"], "--ways must be at least 1"),
    ("run", ["--shots", "0"], "--shots must be at least 1"), ("run", ["--queries", "0"], "--queries"),
    ("run", ["--test-episodes", "0"], "--test-episodes"), ("run", ["--val-episodes", "-2"], "--val-episodes"),
    ("run", ["--cpus-per-run", "0"], "--cpus-per-run"), ("run", ["--max-retries", "-1"], "--max-retries"),
    ("run", ["--prefetch", "-1"], "--prefetch"), ("run", ["--prefetch", "x"], "--prefetch"),
    ("run", ["--precision", "fp8"], "--precision"), ("run", ["--report-name", ""], "--report-name must name"),
    ("run", ["--report-name", "."], "--report-name must name"), ("run", ["--report-name", ".."], "--report-name"),
    ("run", ["--report-name", "   "], "--report-name"), ("run", ["--methods", "nosuchnet"], "unknown method"),
    ("run", ["--profile", "huge"], "unknown profile"), ("run", ["--backbone", "vgg"], "unknown backbone"),
    ("run", ["--set", "train_steps=abc"], "train_steps"), ("run", ["--dataset", "nosuch"], "unknown dataset"),
    ("run", ["--device", "tpu"], "device"), ("run", ["--method-file", "/nonexistent.py"], "no such file"),
    ("run", ["--method-file"], "expected one argument"),
    ("evaluate", ["--ways", "x"], "invalid int value"), ("evaluate", ["--threads", "-1"], "--threads"),
    ("evaluate", ["--threads", "0"], "--threads"), ("evaluate", ["--eval-seed", "-1"], "--eval-seed"),
    ("evaluate", ["--queries", "0"], "--queries"), ("evaluate", ["--shots", "0"], "--shots"),
    ("evaluate", ["--test-episodes", "-5"], "--test-episodes"), ("evaluate", ["--runs"], "expected at least one"),
    ("evaluate", ["--runs", "/nonexistent/run"], "not a finished run folder"),
    ("evaluate", ["--results-dir", "/nonexistent/res"], "does not exist"),
    ("check", [], "required"), ("check", ["protonet", "--steps", "1"], "--steps"),
    ("check", ["protonet", "--steps", "x"], "invalid int value"), ("check", ["protonet", "--threads", "-1"], "--threads"),
    ("check", ["protonet", "--shots", "0"], "--shots"), ("check", ["protonet", "--test-episodes", "0"], "--test"),
    ("check", ["nosuchnet"], "unknown method"), ("check", ["protonet", "--shots", "100"], "protonet"),
    ("report", ["--alpha", "abc"], "invalid float value"), ("report", ["--alpha", "2"], "--alpha"),
    ("report", ["--name", ""], "--name must name"), ("report", ["--name", ".."], "--name"),
    ("report", ["--thresholds", "abc"], "--thresholds"), ("report", ["--thresholds", "150"], "--thresholds"),
    ("report", ["--results-dir"], "expected at least one"), ("report", ["--nosuch"], "unrecognized"),
]


@pytest.mark.parametrize("command,argv,fragment", VALUES, ids=[f"{c}:{' '.join(a)}" for c, a, _ in VALUES])
def test_bad_values(tmp_path, monkeypatch, capsys, command, argv, fragment):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCHMARK_METHODS", "")  # restored after the test (--method-file cases set it)
    extra = {"run": ["--results-dir", "res", "--reports-dir", "rep"] + ([] if "--profile" in argv else
                                                                      ["--profile", "smoke"]),
             "report": ["--reports-dir", "rep"] + ([] if "--results-dir" in argv else ["--results-dir", "res"])}
    if command == "run" and "--methods" not in argv:
        extra["run"] += ["--methods", "protonet"]
    if command == "report" and argv and argv[-1] == "--results-dir":
        argv, extra["report"] = extra["report"] + argv, []
    code, err = call(command, argv + extra.get(command, []), capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines
    assert listing(tmp_path) == []


CORRUPT = {"junk": "garbage{", "truncated": '{"run_id": "x", "meth', "empty": "", "object": "{}", "list": "[1, 2]",
           "missing keys": '{"run_id": "x", "method": "protonet"}'}


@pytest.mark.parametrize("command", ["run", "evaluate", "report"])
@pytest.mark.parametrize("kind", list(CORRUPT))
def test_corrupt_summary(tmp_path, monkeypatch, capsys, command, kind):
    monkeypatch.chdir(tmp_path)
    d = fake_run(tmp_path / "res")
    (d / "summary.json").write_text(CORRUPT[kind])
    before = listing(tmp_path)
    argv = {"run": ["--methods", "protonet", "--profile", "smoke", "--shots", "1", "--results-dir", "res",
                    "--reports-dir", "rep"],
            "evaluate": ["--results-dir", "res"], "report": ["--results-dir", "res", "--reports-dir", "rep"]}[command]
    code, err = call(command, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "summary.json" in lines[0] and "delete" in lines[0]
    assert listing(tmp_path) == before


@pytest.mark.parametrize("kind", ["junk", "list", "empty"])
def test_corrupt_config_evaluate(tmp_path, monkeypatch, capsys, kind):
    monkeypatch.chdir(tmp_path)
    d = fake_run(tmp_path / "res")
    (d / "config.json").write_text(CORRUPT[kind])
    code, err = call("evaluate", ["--runs", str(d)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "config.json" in lines[0], err


@pytest.mark.parametrize("where", ["file", "readonly"])
@pytest.mark.parametrize("command", ["run", "report"])
def test_reports_dir_unusable(tmp_path, monkeypatch, capsys, where, command):
    monkeypatch.chdir(tmp_path)
    fake_run(tmp_path / "res")
    if where == "file":
        (tmp_path / "rep").write_text("x")
    else:
        (tmp_path / "rep").mkdir()
        monkeypatch.setattr("tempfile.mkstemp", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied")))
    before = listing(tmp_path)
    argv = ["--results-dir", "res", "--reports-dir", "rep"]
    if command == "run":
        argv += ["--methods", "protonet", "--profile", "smoke", "--shots", "1"]
    code, err = call(command, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--reports-dir" in lines[0], err
    assert listing(tmp_path) == before


def test_unknown_thresholds_dataset(tmp_path, monkeypatch, capsys):
    import numpy as np
    from test_report import write_run

    write_run(tmp_path / "res", "protonet", "metric", acc=np.full(5, 0.8), fp="a" * 64)
    code, err = call("report", ["--results-dir", str(tmp_path / "res"), "--reports-dir", str(tmp_path / "rep"),
                                "--thresholds", "nosuch:50"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nosuch" in err
    assert not (tmp_path / "rep").exists()


def test_at_chance():
    import numpy as np

    from benchmark.store.statistics import at_chance

    assert at_chance(np.full(50, 0.2), 5) and at_chance(np.full(50, 0.05), 20)
    assert not at_chance(np.full(50, 0.3), 5) and not at_chance(np.r_[np.full(25, 0.1), np.full(25, 0.3)], 5)


@pytest.mark.parametrize("how", ["--method-file", "env"])
def test_method_file_syntax_error_one_line(tmp_path, how):
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(:\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "benchmark.run", "--methods", "protonet", "--results-dir", str(tmp_path / "res")]
    if how == "env":
        env["BENCHMARK_METHODS"] = str(bad)
    else:
        args += ["--method-file", str(bad)]
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "SyntaxError" in r.stderr, r.stderr
    assert not (tmp_path / "res").exists()

import os
import subprocess
import sys

import pandas as pd
import pytest
from conftest import ROOT


def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "benchmark.run", *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def in_process(capsys, *args):
    """``benchmark.run``'s ``main`` called in this process (what ``python -m benchmark.run`` runs, without the
    seconds of a new interpreter importing PyTorch): (exit code, stderr). One case of each kind below still runs the
    real command, so that the process's own exit code and stderr are tested too."""
    from benchmark import run

    try:
        code = run.main(list(args))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_cli_end_to_end_smoke(tmp_path):
    r = cli("--methods", "protonet", "--shots", "1", "5", "--profile", "smoke", "--test-episodes", "20",
            "--val-episodes", "5", "--set", "train_steps=6", "val_every=3", "train_ways=5", "--no-progress",
            "--results-dir", str(tmp_path / "res"), "--reports-dir", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    board = pd.read_csv(tmp_path / "res/leaderboard.csv")
    assert sorted(board["shots"]) == [1, 5] and (board["n_episodes"] == 20).all()
    report = (tmp_path / "rep/latest/report.md").read_text()
    assert "protonet" in report and "omniglot 5-way 1-shot" in report
    again = cli("--methods", "protonet", "--shots", "1", "5", "--profile", "smoke", "--test-episodes", "20",
                "--val-episodes", "5", "--set", "train_steps=6", "val_every=3", "train_ways=5", "--no-progress",
                "--results-dir", str(tmp_path / "res"), "--reports-dir", str(tmp_path / "rep"))
    assert again.returncode == 0 and "2 runs done" in again.stderr


def test_help_lists_methods_and_profiles():
    r = cli("--help")
    assert r.returncode == 0 and "protonet" in r.stdout and "quick" in r.stdout and "conv4" in r.stdout


def test_catalogue_wraps_descriptions_under_their_column_and_never_breaks_a_path():
    from benchmark.pipeline.method_options import _entry, catalogue_lines

    methods = catalogue_lines()
    methods = methods[1:methods.index("profiles:")]
    assert all(len(line) <= 118 for line in methods), max(methods, key=len)
    i = next(i for i, line in enumerate(methods) if line.startswith("  meta_lstm "))
    assert methods[i + 1].startswith(" " * 35) and methods[i + 1].strip()  # continued beneath the description
    path = "(file /a/very/long/folder/name/that/does/not/fit/on/the/line/of/the/description/mine.py)"
    lines = _entry("mine", "metric", "word " * 30, path)
    assert lines[-1] == " " * 35 + path and all(len(line) <= 118 for line in lines[:-1])
    assert _entry("mine", "", "", "(file /x.py)") == ["  mine" + " " * 29 + "(file /x.py)"]


@pytest.mark.parametrize("command", ["benchmark.run", "benchmark.evaluate", "benchmark.speed"])
def test_help_imports_neither_torch_nor_the_methods(command):
    """--help is built from torch-free tables and the methods' source text, so it starts in a fraction of the time
    importing PyTorch takes (README: the figures)."""
    code = (f"import runpy, sys; sys.argv = ['{command}', '--help']\n"
            f"try:\n    runpy.run_module('{command}', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m == 'methods.base' or m.startswith('methods.')"
            " and m != 'methods')\nprint('IMPORTED', bad)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "IMPORTED []" in r.stdout, r.stdout[-300:]


def test_catalogue_equals_the_registry():
    """The facts --help reads from the source text are the registered classes' own."""
    from benchmark.pipeline import registry

    reg = registry.registry()
    cat = registry.catalogue()
    assert [c["name"] for c in cat] == list(reg)
    for c in cat:
        assert c == {k: getattr(reg[c["name"]], k) or None for k in registry.FACTS}, c["name"]


@pytest.mark.parametrize("args,fragment", [
    (["--methods", "protonet,nosuchnet"], "unknown method 'nosuchnet'; valid: all"),
    (["--dataset", "imagenet-21k"], "unknown dataset"),
    (["--shots", "0"], "--shots must be at least 1"),
    (["--ways", "-1"], "--ways must be at least 1"),
    (["--ways", "2000"], "classes"),
    (["--shots", "19"], "exceed"),
    (["--data-dir", "/nonexistent/omniglot"], "does not exist"),
    (["--profile", "huge"], "unknown profile"),
    (["--backbone", "vgg"], "unknown backbone"),
    (["--set", "no_such_field=1"], "no hyperparameter"),
    (["--split", "nosuch"], "has no split 'nosuch'"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, args, fragment):
    argv = ("--methods", "protonet", *args, "--results-dir", str(tmp_path / "res"))
    if args[0] == "--methods":  # the real command once
        r = cli(*argv)
        code, err = r.returncode, r.stderr
    else:
        code, err = in_process(capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").iterdir())


def test_corrupt_data_dir_exit_2(tmp_path, capsys):
    (tmp_path / "images_background.zip").write_bytes(b"garbage")
    code, err = in_process(capsys, "--methods", "protonet", "--data-dir", str(tmp_path), "--results-dir",
                           str(tmp_path / "res"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "zip" in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_results_dir_exit_2(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    code, err = in_process(capsys, "--methods", "protonet", "--results-dir", str(ro / "res"))
    assert code == 2 and "not writable" in err


def test_results_dir_that_is_a_file_exit_2(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    code, err = in_process(capsys, "--methods", "protonet", "--results-dir", str(f))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is a file, not a folder" in err


@pytest.mark.parametrize("args,fragment", [
    (["--set", "train_steps=abc"], "train_steps must be an integer (got 'abc')"),
    (["--set", "train_steps=-5"], "train_steps must be at least 1 (got -5)"),
    (["--set", "meta_batch=0"], "meta_batch must be at least 1 (got 0)"),
    (["--set", "val_every=2.5"], "val_every must be an integer (got 2.5)"),
    (["--set", "train_ways=0"], "train_ways must be at least 1"),
    (["--set", "lr=0"], "lr must be greater than 0 (got 0)"),
    (["--set", "lr=fast"], "lr must be a number (got 'fast')"),
    (["--methods", "matching", "--set", "fce=yes"], "fce must be True or False (got 'yes')"),
    (["--methods", "meta_lstm", "--set", "forget_bias=4"], "forget_bias must be a tuple of 2 values"),
])
def test_bad_set_values_one_line_exit_2(tmp_path, capsys, args, fragment):
    """--set values are checked against the hyperparameter's declared type, and budgets must be positive."""
    argv = ("--methods", "protonet", *args, "--results-dir", str(tmp_path / "res"))
    if args == ["--set", "train_steps=abc"]:  # the real command once
        r = cli(*argv)
        code, err = r.returncode, r.stderr
    else:
        code, err = in_process(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert not (tmp_path / "res").exists()


def test_set_values_check_types_and_budgets():
    """The check behind --set (in process): every profile default passes it; the API still allows an untrained run
    (train_steps=0) without the command line's positive budgets."""
    import dataclasses

    import methods
    from benchmark.pipeline import registry
    from benchmark.pipeline.config import PROFILES, RunConfig, build_hyper, check_value, parse_overrides

    for cls in registry.registry().values():
        for profile in PROFILES:
            for setting in (methods.Setting("omniglot", 5, 1), methods.Setting("miniimagenet", 5, 5)):
                hp = cls.hyper(profile, setting)
                for f in dataclasses.fields(hp):
                    check_value(cls, type(hp), f.name, getattr(hp, f.name), positive=True)
    proto, meta_lstm, setting = registry.get("protonet"), registry.get("meta_lstm"), methods.Setting("omniglot", 5, 1)
    over = parse_overrides(["train_steps=0", "lr=1", "train_ways=None", "train_queries=5"])
    hp = build_hyper(proto, RunConfig("protonet", profile="smoke", overrides=over), setting)
    assert (hp.train_steps, hp.lr, hp.train_ways, hp.train_queries) == (0, 1, None, 5)
    with pytest.raises(ValueError, match="train_steps must be at least 1"):
        build_hyper(proto, RunConfig("protonet", profile="smoke", overrides=over), setting, positive=True)
    hp = build_hyper(meta_lstm, RunConfig("meta_lstm", overrides=parse_overrides(["input_bias=-3,-2"])), setting)
    assert hp.input_bias == (-3, -2)
    for bad in (["input_bias=(1, 2, 3)"], ["input_bias=(1, 'a')"], ["batch_divided_grad=1"], ["hidden=True"]):
        with pytest.raises(ValueError, match="meta_lstm's hyperparameter"):
            build_hyper(meta_lstm, RunConfig("meta_lstm", overrides=parse_overrides(bad)), setting)


@pytest.mark.slow
def test_sigterm_keeps_checkpoint_exit_143_then_resumes(tmp_path):
    """SIGTERM (kill, a SLURM preemption) stops like Ctrl-C: checkpoint kept, exit 143; the same command resumes."""
    import signal
    import time

    args = ["--methods", "protonet", "--shots", "1", "--profile", "smoke", "--test-episodes", "10", "--val-episodes",
            "2", "--set", "train_steps=100000", "val_every=2", "train_ways=5", "--no-progress", "--no-report",
            "--results-dir", str(tmp_path / "res")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "benchmark.run", *args], cwd=ROOT, env=env,
                         stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "res"
    deadline = time.time() + 120
    while time.time() < deadline and not list(partial.glob("*.partial/checkpoint.pt")):
        time.sleep(0.2)
    assert list(partial.glob("*.partial/checkpoint.pt")), "no checkpoint written within 120 s"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert "resume" in err and "Traceback" not in err
    (ckpt_path,) = partial.glob("*.partial/checkpoint.pt")
    import torch

    step = torch.load(ckpt_path, weights_only=False)["state"]["step"]
    assert 0 < step < 100000

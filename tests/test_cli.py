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
])
def test_bad_input_one_line_exit_2(tmp_path, args, fragment):
    r = cli("--methods", "protonet", *args, "--results-dir", str(tmp_path / "res"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").iterdir())


def test_corrupt_data_dir_exit_2(tmp_path):
    (tmp_path / "images_background.zip").write_bytes(b"garbage")
    r = cli("--methods", "protonet", "--data-dir", str(tmp_path), "--results-dir", str(tmp_path / "res"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "zip" in r.stderr


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_results_dir_exit_2(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    r = cli("--methods", "protonet", "--results-dir", str(ro / "res"))
    assert r.returncode == 2 and "not writable" in r.stderr


def test_results_dir_that_is_a_file_exit_2(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = cli("--methods", "protonet", "--results-dir", str(f))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "not writable" in r.stderr

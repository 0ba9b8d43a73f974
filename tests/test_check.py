"""python -m benchmark.check: every built-in method passes the contract; broken methods fail with the right line."""
import os
import subprocess
import sys

import pytest
from conftest import FIXTURES, ROOT

from benchmark.check import FAILED, PASSED, check_method
from benchmark.pipeline import registry

BROKEN = FIXTURES / "methods" / "broken_methods.py"
UNFAIR = FIXTURES / "methods" / "unfair_methods.py"


@pytest.mark.slow
@pytest.mark.parametrize("name", registry.resolve("all,baselines"))
def test_every_builtin_method_passes(name, tmp_path):
    from benchmark.check import MethodChecker

    # 2 steps (a resume between them) and 2 test episodes: what the checks need to compare runs episode by episode
    checks = check_method(name, steps=2, test_episodes=2, workdir=tmp_path)
    assert [c.name for c in checks] == [n for n, _, _ in MethodChecker.CHECKS]
    bad = [c.line() for c in checks if c.status != PASSED]
    assert not bad, bad


@pytest.fixture
def broken():
    before = os.environ.get(registry.FILES_ENV)
    registry.load_files([BROKEN])
    yield
    if before is None:
        os.environ.pop(registry.FILES_ENV, None)
    else:
        os.environ[registry.FILES_ENV] = before
    registry._REGISTRY = None


@pytest.mark.parametrize("name,failing", [("broken-randn", "global random state"), ("broken-many", "predict_many")])
def test_a_broken_method_fails_the_right_check(broken, tmp_path, name, failing):
    checks = {c.name: c for c in check_method(name, steps=2, test_episodes=4, workdir=tmp_path)}
    assert checks[failing].status == FAILED, checks[failing].line()
    others = [c.line() for n, c in checks.items() if n != failing and c.status == FAILED]
    assert not others, others
    if name == "broken-randn":
        assert "train_step (torch) draws from the global random generator" in checks[failing].detail
    else:
        assert "predict_many differs from predict on episode 0" in checks[failing].detail


@pytest.mark.slow
def test_command_line_exit_codes(tmp_path, capsys):
    from benchmark import check

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(registry.FILES_ENV, None)
    r = subprocess.run([sys.executable, "-m", "benchmark.check", "broken-many", "--method-file", str(BROKEN),
                        "--steps", "2", "--test-episodes", "2"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("broken-many (file ") and "sha256" in lines[0]
    assert any(line.strip().startswith("FAILED   predict_many:") for line in lines)
    assert sum(line.strip().startswith("PASSED") for line in lines) == 12  # the twelve other checks
    # bad input: the command's main in process (the real process's exit code 1 is above)
    assert check.main(["nonesuch"]) == 2 and capsys.readouterr().err.startswith("error: unknown method 'nonesuch'")
    assert check.main(["protonet", "--steps", "1"]) == 2 and "--steps must be 2 or more" in capsys.readouterr().err


@pytest.fixture
def unfair():
    before = os.environ.get(registry.FILES_ENV)
    registry.load_files([UNFAIR])
    yield
    if before is None:
        os.environ.pop(registry.FILES_ENV, None)
    else:
        os.environ[registry.FILES_ENV] = before
    registry._REGISTRY = None


@pytest.mark.parametrize("name,failing,says", [
    ("unfair-labels", "query labels", "predict reads the query labels (episode.query_y) of test episodes"),
    ("unfair-extra", "training budget", "consumes 10 training episodes per step (1 handed over, 9 drawn through "
                                        "ctx.sampler) but tasks_per_step declares 1"),
    ("unfair-ten-steps", "training budget", "takes 10 optimiser steps in one train_step on 1 training episode(s)"),
    ("unfair-test-split", "training split", "reaches beyond its training split through ctx.sampler (the training "
                                            "sampler has no 'ds'"),
    ("unfair-transductive", "transduction", "transductive: a query's logits change by up to"),
])
def test_an_unfair_method_fails_with_one_line_saying_what_it_did(unfair, tmp_path, name, failing, says):
    """Issue 27's five unfair methods passed every check; each now fails the check of what it did."""
    (check,) = check_method(name, steps=2, test_episodes=2, workdir=tmp_path, only=[failing])
    assert check.status == FAILED and check.detail.startswith(says), check.line()
    assert "\n" not in check.line()


def test_speed_counts_training_episodes_as_runs_do(unfair, tmp_path):
    """benchmark.speed divides a step's time and FLOPs by the training episodes the step consumed as the harness
    counts them (meta-batch plus draws through ctx.sampler), as runs do: unfair-extra's 1 + 9 episodes cost what
    ProtoNet's one does per episode, not ten times as much (before the shared count, speed divided by the meta-batch
    alone, so MTL's hard tasks made its figures 12/10 of the runs')."""
    from benchmark.speed import prepare_measurement, time_run

    per = {}
    for name in ("protonet", "unfair-extra"):
        prepared = prepare_measurement(name, profile="smoke", train_ways=5, train_queries=5)
        per[name] = time_run(prepared, steps=1, warmup=1, test_episodes=1, results_dir=tmp_path, flops=True)
    a, b = per["protonet"]["flops_per_train_episode"], per["unfair-extra"]["flops_per_train_episode"]
    assert a > 0 and abs(b / a - 1) < 0.02, (a, b)


@pytest.mark.parametrize("name", ["protonet", "baseline"])
def test_speed_hands_each_step_what_a_run_hands_it(tmp_path, monkeypatch, name):
    """benchmark.speed times ``train_step`` on the meta-batch a run hands it, and says so (``meta_batch``): for a
    method that meta-trains on no episode (the transfer baselines) that is none, where speed used to hand it
    ``hp.meta_batch`` episodes a run never draws and divide the step's time by them."""
    import torch

    from benchmark.pipeline import RunConfig, prepare, run
    from benchmark.speed import time_run

    cls = registry.get(name)
    original, handed = cls.train_step, []

    def spy(self, episodes, step):
        handed.append(len(episodes))
        return original(self, episodes, step)

    monkeypatch.setattr(cls, "train_step", spy)
    over = (("train_steps", 2), ("val_every", 2))
    prepared = prepare(RunConfig(name, "omniglot", 5, 1, profile="smoke", test_episodes=2, val_episodes=2,
                                 overrides=over))
    summary = run(prepared, tmp_path, torch.device("cpu"), save_model=False)
    in_run, handed[:] = sorted(set(handed)), []
    r = time_run(prepared, steps=2, warmup=1, test_episodes=1, results_dir=tmp_path)  # the run's cached pretraining
    assert sorted(set(handed)) == in_run == [r["meta_batch"]]
    assert summary["train_episodes"] == r["meta_batch"] * summary["train_steps"]


def test_a_method_reporting_other_tasks_than_counted_fails_the_training_budget(tmp_path, monkeypatch):
    """A ``tasks`` metric (the old contract) that differs from the harness's count stops a run's step with
    TasksMisreported (a ValueError) and fails the training budget check with its line, caught by its type."""
    from benchmark.pipeline.training import TasksMisreported

    cls = registry.get("protonet")
    original = cls.train_step
    monkeypatch.setattr(cls, "train_step", lambda self, episodes, step: {**original(self, episodes, step), "tasks": 7})
    (check,) = check_method("protonet", steps=2, test_episodes=2, workdir=tmp_path, only=["training budget"])
    assert check.status == FAILED and check.detail.startswith(
        "protonet's train_step reports tasks=7, but the step consumed 1 training episodes (1 handed over, 0 drawn "
        "through ctx.sampler)"), check.line()
    assert issubclass(TasksMisreported, ValueError)

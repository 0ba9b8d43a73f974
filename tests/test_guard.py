"""Identical terms against a determined method: no label within reach while a method predicts, and the rules (no I/O,
no introspection, no harness rooms) enforced around every call into a method, in runs as in the check."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import FIXTURES, ROOT

from benchmark.check import FAILED, PASSED, check_method
from benchmark.kit.episodes import Episode, EpisodeSet, QueryHidden, QueryLabelsHidden
from benchmark.pipeline import guard, registry
from benchmark.pipeline.guard import RuleBreach, watching

CHEATS = FIXTURES / "methods" / "cheating_methods.py"
CPU = torch.device("cpu")


@pytest.fixture
def cheats():
    before = os.environ.get(registry.FILES_ENV)
    registry.load_files([CHEATS])
    yield
    if before is None:
        os.environ.pop(registry.FILES_ENV, None)
    else:
        os.environ[registry.FILES_ENV] = before
    registry._REGISTRY = None


@pytest.fixture(scope="module")
def test_set():
    from benchmark.data import load_dataset

    return EpisodeSet(load_dataset("omniglot"), "test", 5, 1, 3, 0, 4)


def test_a_hidden_episode_leads_back_to_no_label(test_set):
    h = test_set.hidden(0)
    full = test_set[0]
    assert not any(isinstance(v, Episode) for v in vars(h).values())
    assert h.digest() == full.digest() and torch.equal(h.query_x, full.query_x)
    for name, says in (("query_y", "query labels of a validation or test episode are hidden"),
                       ("query_idx", "query labels of a validation or test episode are hidden"),
                       ("_episode", "an evaluation episode has no '_episode'")):
        with pytest.raises(QueryLabelsHidden, match=says):
            getattr(h, name)
    assert torch.equal(test_set.query_labels(0), full.query_y)
    assert not any(isinstance(v, Episode) for v in vars(h.to("meta")).values())


def test_no_frame_holds_a_label_while_the_method_predicts(test_set, monkeypatch):
    """Walks every frame below ``predict_many`` during an evaluation (guard off, to look): no labelled episode and
    no object carrying query labels."""
    from benchmark.pipeline.training import evaluate

    monkeypatch.setenv(guard.GUARD_ENV, "off")
    found = []

    class Spy:
        adapts_at_test, eval_group = False, 2

        def predict_many(self, episodes):
            frame = sys._getframe(1)
            while frame is not None:
                for v in frame.f_locals.values():
                    for item in v if isinstance(v, (list, tuple)) else [v]:
                        if isinstance(item, Episode) or (not isinstance(item, QueryHidden) and
                                                         "query_y" in getattr(item, "__dict__", {})):
                            found.append((frame.f_code.co_name, type(item).__name__))
                frame = frame.f_back
            return [torch.zeros(len(e.query_x), e.ways) for e in episodes]

    acc, _ = evaluate(Spy(), test_set, CPU, prefetch=1)
    assert len(acc) == len(test_set) and not found, found


def test_the_rules_hold_inside_a_watched_call(tmp_path):
    from benchmark.store.files import atomic_torch_save

    with watching(Spy, "train_step"):
        atomic_torch_save(tmp_path / "harness.pt", {})  # the harness's own files: allowed
        import colorsys  # noqa: F401 - a module not imported yet: allowed
        source_line()  # a warning's or traceback's source line: allowed
    for act, rule in [(lambda: open(tmp_path / "x", "w"), "file I/O"),
                      (lambda: torch.load(tmp_path / "harness.pt"), "file I/O"),  # a library, on its behalf
                      (lambda: sys._getframe(), "frame introspection"),
                      (lambda: __import__("gc").get_objects(), "garbage-collector introspection"),
                      (lambda: __import__("benchmark.store.folders"), "harness rooms"),
                      (lambda: subprocess.run(["true"]), "processes")]:
        with pytest.raises(RuleBreach) as e:
            with watching(Spy, "train_step"):
                act()
        assert str(e.value).startswith(f"{rule}: the method ") and "test_guard.py:" in str(e.value)
        assert "\n" not in str(e.value)
    with pytest.raises(RuleBreach):  # caught by the method: raised again when the call ends
        with watching(Spy, "predict"):
            swallowing(tmp_path / "z")
    assert open(tmp_path / "outside", "w")  # nothing is watched outside a call


def test_the_guard_can_be_switched_off_for_a_measurement(tmp_path, monkeypatch):
    monkeypatch.setenv(guard.GUARD_ENV, "off")
    with watching(Spy, "train_step"):
        open(tmp_path / "x", "w").close()
    monkeypatch.setenv(guard.GUARD_ENV, "maybe")
    with pytest.raises(ValueError, match="BENCHMARK_GUARD must be 'on' or 'off'"):
        with watching(Spy, "train_step"):
            pass
    env = {**os.environ, "PYTHONPATH": str(ROOT), guard.GUARD_ENV: "maybe"}
    r = subprocess.run([sys.executable, "-m", "benchmark.check", "protonet"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr == "error: BENCHMARK_GUARD must be 'on' or 'off', not 'maybe'\n"


class Spy:
    """A stand-in method class, defined in this (method-side) file."""


def source_line():
    """Method-side code reading a source line as a warning's display does (a fresh read of this file)."""
    import linecache

    linecache.clearcache()
    return linecache.getline(__file__, 1)


def swallowing(path):
    """Method-side code that catches the guard's error."""
    try:
        open(path, "w")
    except RuntimeError:
        pass


@pytest.mark.parametrize("name,says", [
    ("cheat-hidden-reference", "predict looks behind the test episode it is handed for its labels: an evaluation "
                               "episode has no '_episode'"),
    ("cheat-frames", "frame introspection: the method calls sys._getframe at cheating_methods.py:"),
    ("cheat-loads-data", "harness rooms: the method imports benchmark.data at cheating_methods.py:"),
])
def test_the_check_fails_each_route_to_the_labels_with_one_line(cheats, tmp_path, name, says):
    (check,) = check_method(name, steps=2, test_episodes=2, workdir=tmp_path, only=["query labels"])
    assert check.status == FAILED and check.detail.startswith(says), check.line()
    assert "\n" not in check.line()


def test_label_invariance_catches_a_route_nobody_foresaw(cheats, tmp_path, monkeypatch):
    """With the old hidden episode (a reference to the labelled one) put back, the cheat that reads it is caught by
    the label-invariance check alone: its logits change when the harness's labels are permuted."""
    plain = QueryHidden.__init__

    def leaky(self, episode):
        plain(self, episode)
        self._episode = episode

    monkeypatch.setattr(QueryHidden, "__init__", leaky)
    (check,) = check_method("cheat-hidden-reference", steps=2, test_episodes=2, workdir=tmp_path,
                            only=["label invariance"])
    assert check.status == FAILED, check.line()
    assert check.detail.startswith("the logits change by up to") and "predict reaches the labels" in check.detail


def test_a_method_that_breaks_the_rules_late_fails_the_longer_run(cheats, tmp_path):
    """cheat-late passes the check's short runs and fails a run longer than its good behaviour: failed.json names the
    rule and the method's line, and nothing is scored."""
    from benchmark.pipeline import RunFailed, prepare, run
    from benchmark.pipeline.config import RunConfig

    checks = check_method("cheat-late", steps=2, test_episodes=2, workdir=tmp_path / "check",
                          only=["logits", "label invariance", "training split", "same seed"])
    assert [c.status for c in checks] == [PASSED] * 4, [c.line() for c in checks]
    cfg = RunConfig("cheat-late", "omniglot", 5, 1, profile="smoke", test_episodes=2, val_episodes=2,
                    overrides=(("train_steps", 6), ("val_every", 3)))
    with pytest.raises(RunFailed) as e:
        run(prepare(cfg), tmp_path / "runs", CPU)
    folder = tmp_path / "runs" / "runs" / cfg.run_id
    record = json.loads(next(tmp_path.joinpath("runs").rglob("failed.json")).read_text())
    reason = record["reason"]
    assert reason.startswith("RuleBreach: file I/O: the method opens ") and "omniglot28.npz" in reason, record
    assert "cheating_methods.py:" in reason and "(in train_step)" in reason, record
    assert record["step"] == 4 and "failed" in str(e.value)
    assert not list(tmp_path.joinpath("runs").rglob("episodes.csv")), folder


def test_a_method_file_that_imports_the_harness_s_store_does_not_load(tmp_path):
    plugin = tmp_path / "nosy.py"
    plugin.write_text("from benchmark.store import folders\nfrom methods.protonet import ProtoNet\n\n\n"
                      "class Nosy(ProtoNet):\n    name = 'nosy'\n")
    with pytest.raises(registry.PluginError) as e:
        registry._file_classes(plugin)
    assert "raised on import: RuleBreach: harness rooms: the method imports benchmark.store at nosy.py:1" in str(e.value)


def test_what_a_method_is_handed_holds_no_test_split():
    """The context's sampler (also on a device copy of the pixels) and validation service hold no split but their
    own: no test split's classes reachable from ``ctx``; the sampler's episodes are the same either way."""
    from benchmark.pipeline import prepare
    from benchmark.pipeline.config import RunConfig
    from benchmark.pipeline.method_context import make_context

    prepared = prepare(RunConfig("protonet", "omniglot", 5, 1, profile="smoke"))
    images = prepared.dataset.to_device(CPU)
    plain, on_device = make_context(prepared, CPU), make_context(prepared, CPU, images=images)
    for ctx in (plain, on_device):
        assert list(ctx.sampler._inner.ds.splits) == ["train"]
        assert list(ctx.val_accuracy._ds.splits) == ["val"]
    assert list(on_device.sampler._inner.images.ds.splits) == ["train"]
    assert list(images.ds.splits) == ["train", "val", "test"]  # the harness's own copy is untouched
    a, b = plain.sampler.episode(3, 5, 1, 2), on_device.sampler.episode(3, 5, 1, 2)
    assert a.digest() == b.digest() and torch.equal(a.query_x, b.query_x) and torch.equal(a.support_y, b.support_y)

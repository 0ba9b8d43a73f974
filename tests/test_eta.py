"""Cost-weighted time left (benchmark.pipeline.eta): fake clocks and prepared runs, no training."""
import json
from types import SimpleNamespace

import pytest

from benchmark.pipeline import RunConfig, prepare
from benchmark.pipeline.eta import DEFAULT_MS, MEASURED_MS, RunsETA, costs_for, expected_seconds, format_left, method_ms


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_costly_last_run_is_not_estimated_at_the_mean_of_the_cheap_ones():
    clock = FakeClock(1000.0)
    eta = RunsETA({"a": 60, "b": 60, "c": 60, "reptile": 600}, clock=clock)
    assert eta.remaining_seconds() is None and eta.postfix() == ""
    for t, run in ((1060, "a"), (1120, "b"), (1180, "c")):
        clock.t = t
        assert eta.finished(run) == 60
    # three runs in 180 s: the mean of finished runs would say 60 s for the one left; its cost says 600 s
    assert eta.remaining_seconds() == pytest.approx(600.0)
    assert eta.postfix() == "about 10 min left (cost-weighted)"
    clock.t = 1270  # slower than expected: 270 s for 180 s of expected cost, so 1.5 s per expected second
    assert eta.remaining_seconds() == pytest.approx(900.0)
    eta.finished("reptile")
    assert eta.remaining_seconds() == 0.0 and eta.left_seconds() == 0.0 and eta.total_seconds() == 780.0
    assert eta.finished("reptile") == 0.0  # a second end of the same run counts once
    with pytest.raises(KeyError):
        eta.finished("never-planned")


def test_discarded_runs_count_neither_as_done_nor_as_left():
    clock = FakeClock()
    eta = RunsETA({"a": 100, "b": 100, "skipped": 1000}, clock=clock)
    eta.discard("skipped")
    clock.t = 50
    eta.finished("a")
    assert eta.remaining_seconds() == pytest.approx(50.0)


def test_format_left():
    assert format_left(45) == "about 45 s left (cost-weighted)"
    assert format_left(34 * 60 + 10) == "about 34 min left (cost-weighted)"
    assert format_left(100 * 60) == "about 1 h 40 min left (cost-weighted)"


def test_expected_seconds_from_the_measured_table(omniglot):
    p = prepare(RunConfig("protonet", "omniglot", 5, 1, profile="quick"))
    (train_ms, test_ms), source = method_ms(p)
    assert source == "table" and train_ms == pytest.approx(1000 * 71 / 450) and test_ms == 11.0
    # 450 episodes of 60-way training; 9 validations of 100 episodes and 600 test episodes: the README's run s, 87
    assert expected_seconds(p) == pytest.approx(450 * 71 / 450 + (9 * 100 + 600) * 0.011)
    reptile = prepare(RunConfig("reptile", "omniglot", 5, 5, profile="quick"))
    assert expected_seconds(reptile) > 5 * expected_seconds(p)
    # a variant takes its main method's figures
    assert method_ms(prepare(RunConfig("matching-nofce", "omniglot", 5, 1, profile="quick")))[0] == \
        pytest.approx((1000 * 85 / 2000, 12.0))


def fake_run(method="newmethod", shots=1, image_shape=(1, 28, 28), train_steps=100, val_every=30, tasks=1):
    cfg = RunConfig(method, "omniglot", 5, shots, profile="quick")  # quick: 100 validation, 600 test episodes
    cls = SimpleNamespace(tasks_per_step=lambda hp: tasks * hp.meta_batch, variant_of=None)
    hp = SimpleNamespace(train_steps=train_steps, val_every=val_every, meta_batch=2)
    return SimpleNamespace(cfg=cfg, cls=cls, dataset=SimpleNamespace(image_shape=image_shape), setting=None, hp=hp)


def test_unknown_method_falls_back_to_the_default_and_scales_with_pixels():
    p = fake_run()
    (train_ms, test_ms), source = method_ms(p)
    assert source == "default" and (train_ms, test_ms) == DEFAULT_MS[1]
    # 100 steps x 2 tasks; validations at 30, 60, 90 and the last step (100 is not a multiple of 30)
    assert expected_seconds(p) == pytest.approx((200 * train_ms + (4 * 100 + 600) * test_ms) / 1000)
    big = fake_run(image_shape=(3, 84, 84))  # 27 times the pixels of 28x28x1
    assert expected_seconds(big) == pytest.approx(27 * expected_seconds(p))
    mid = fake_run(method="protonet", shots=3)  # between the 1- and 5-shot figures
    lo, hi = MEASURED_MS["protonet"][1], MEASURED_MS["protonet"][5]
    assert method_ms(mid)[0] == pytest.approx(((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2))


def write_record(results_dir, run_id, **summary):
    d = results_dir / run_id
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"run_id": run_id, "backbone": "conv4", **summary}))


def test_records_of_finished_runs_beat_the_table(tmp_path, omniglot):
    p = prepare(RunConfig("protonet", "omniglot", 5, 1, profile="quick"))
    table = expected_seconds(p, tmp_path)  # nothing recorded yet
    write_record(tmp_path, "r1", method="protonet", dataset="omniglot", shots=1, ms_per_train_episode=10.0,
                 ms_per_test_episode=2.0)
    write_record(tmp_path, "r2", method="protonet", dataset="omniglot", shots=5, ms_per_train_episode=99.0,
                 ms_per_test_episode=99.0)  # other shots: only used when no record has this run's
    write_record(tmp_path, "r3", method="relation", dataset="omniglot", shots=1, ms_per_train_episode=99.0,
                 ms_per_test_episode=99.0)  # another method
    (tmp_path / "r4.partial").mkdir()  # an unfinished run: no figures
    assert method_ms(p, [json.loads((tmp_path / "r1" / "summary.json").read_text())])[1] == "records"
    assert expected_seconds(p, tmp_path) == pytest.approx((450 * 10.0 + 1500 * 2.0) / 1000) != table
    five = prepare(RunConfig("protonet", "omniglot", 5, 5, profile="quick"))
    assert expected_seconds(five, tmp_path) == pytest.approx((250 * 99.0 + 1100 * 99.0) / 1000)
    other_backbone = prepare(RunConfig("protonet", "omniglot", 5, 1, backbone="conv4-32", profile="quick"))
    assert method_ms(other_backbone, [{"method": "protonet", "dataset": "omniglot", "backbone": "conv4", "shots": 1,
                                       "ms_per_train_episode": 1.0, "ms_per_test_episode": 1.0}])[1] == "table"
    costs = costs_for([p, five], tmp_path)
    assert costs == {p.cfg.run_id: pytest.approx(7.5), five.cfg.run_id: pytest.approx(133.65)}

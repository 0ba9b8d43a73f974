import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import methods
from benchmark.kit.backbones import build_backbone, convs
from benchmark.pipeline import RunConfig, make_context, prepare, registry, run
from methods.mtl import MTL, ScaleShift, adapt_linear, add_scale_shift, hard_task_classes

CPU = torch.device("cpu")


@pytest.mark.parametrize("name", ["conv4", "resnet12-narrow"])
def test_identity_scale_shift_reproduces_the_frozen_network_exactly(name):
    torch.manual_seed(0)
    net = build_backbone(name, 1).eval()
    x = torch.randn(3, 1, 28, 28)
    ref = net(x)
    mods = add_scale_shift(net)
    assert len(mods) == len(list(convs(net))) > 0
    assert torch.equal(net(x), ref)
    for _, c in convs(net):
        assert not c.weight.requires_grad and isinstance(c.modulator, ScaleShift)
        assert c.modulator.scale.shape == (c.out_channels, c.in_channels, 1, 1)
        w, b = c.modulator(c.weight, c.bias)
        if c.bias is None:  # ResNet-12: the shift becomes the bias
            assert b is c.modulator.shift
    with torch.no_grad():
        mods[0].shift.add_(0.5)
    assert not torch.allclose(net(x), ref)


def test_closed_form_inner_step_matches_autograd():
    torch.manual_seed(0)
    z, y = torch.randn(10, 7), torch.arange(5).repeat(2)
    w, b = torch.randn(5, 7, requires_grad=True), torch.zeros(5, requires_grad=True)
    gw, gb = torch.autograd.grad(F.cross_entropy(F.linear(z, w, b), y), (w, b))
    w1, b1 = adapt_linear(w, b, z, y, 1, 0.3)
    torch.testing.assert_close(w1, w - 0.3 * gw)
    torch.testing.assert_close(b1, b - 0.3 * gb)
    # second order: gradients flow through the inner step into the features
    zz = z.clone().requires_grad_(True)
    w2, b2 = adapt_linear(w, b, zz, y, 3, 0.3, differentiable=True)
    (g,) = torch.autograd.grad(w2.sum() + b2.sum(), zz)
    assert g.abs().sum() > 0


def test_hard_task_classes_come_from_failure_classes_and_are_deterministic():
    rng = np.random.default_rng(0)
    rankings = [rng.permutation(np.arange(100 * i, 100 * i + 5)) for i in range(10)]  # 10 tasks, disjoint classes
    failures = {int(r[0]) for r in rankings}
    a = hard_task_classes(rankings, 5, 2, seed=0, step=7)
    assert a == hard_task_classes(rankings, 5, 2, seed=0, step=7)
    assert len(a) == 2 and all(len(set(t)) == 5 for t in a)
    assert {c for t in a for c in t} == failures  # every failure class used exactly once
    assert hard_task_classes(rankings, 5, 2, seed=0, step=8) != a  # a new step permutes afresh
    # too few distinct failure classes: extended by each task's next-worst class, never by a best class
    few = [np.array([1, 2, 3, 4, 5]), np.array([1, 6, 7, 8, 9])]
    (t,) = hard_task_classes(few, 5, 1, seed=0, step=0)
    assert set(t) == {1, 2, 3, 6, 7}


@pytest.fixture(scope="module")
def tiny(omniglot):
    """A smoke-profile MTL with a one-iteration pretraining (fast), 5-way 1-shot."""
    prepared = prepare(RunConfig("mtl", "omniglot", 5, 1, profile="smoke", val_episodes=2,
                                 overrides=(("pre_epochs", 1e-5), ("pre_val_episodes", 1), ("inner_steps", 5))))
    torch.manual_seed(0)
    return MTL(prepared.hp, make_context(prepared, CPU))


def test_hard_episodes_sample_fresh_data_from_the_failure_classes(tiny):
    rankings = [np.array([10 * i + k for k in range(5)]) for i in range(5)]
    eps = tiny.hard_episodes(rankings, step=3)
    again = tiny.hard_episodes(rankings, step=3)
    assert len(eps) == tiny.hp.hard_tasks == 1
    assert sorted(eps[0].classes.tolist()) == [0, 10, 20, 30, 40]
    assert eps[0].digest() == again[0].digest()
    assert eps[0].spec.stream == "mtl-hard" and eps[0].index == 3 * tiny.hp.hard_tasks
    ordinary = tiny.ctx.sampler.episode(eps[0].index, 5, 1, 5, classes=eps[0].classes)
    assert ordinary.digest() != eps[0].digest()  # its own stream: fresh samples


def test_meta_training_moves_ss_and_theta_but_not_frozen_weights(tiny):
    frozen = {n: c.weight.detach().clone() for n, c in convs(tiny.encoder)}
    biases = {n: c.bias.detach().clone() for n, c in convs(tiny.encoder)}
    scale = [c.modulator.scale.detach().clone() for _, c in convs(tiny.encoder)]
    shift = [c.modulator.shift.detach().clone() for _, c in convs(tiny.encoder)]
    theta = tiny.theta_w.detach().clone()
    eps = [tiny.ctx.sampler.episode(i, 5, 1, 5) for i in range(5)]
    drawn = tiny.ctx.sampler.episodes_drawn
    out = tiny.train_step(eps, 0)
    # the hard tasks are drawn through the counting sampler: the harness counts them, the step reports none
    assert tiny.ctx.sampler.episodes_drawn - drawn == tiny.hp.hard_tasks and "hard_acc" in out and "tasks" not in out
    for n, c in convs(tiny.encoder):
        assert torch.equal(c.weight, frozen[n]) and torch.equal(c.bias, biases[n])
    assert any(not torch.equal(c.modulator.scale, s) for (_, c), s in zip(convs(tiny.encoder), scale))
    assert any(not torch.equal(c.modulator.shift, s) for (_, c), s in zip(convs(tiny.encoder), shift))
    assert not torch.equal(tiny.theta_w, theta)
    logits = tiny.predict(tiny.ctx.sampler.episode(0, 5, tiny.ctx.setting.shots, 15, stream="test").hidden())
    assert logits.shape == (75, 5) and torch.isfinite(logits).all()
    assert tiny.adapted_parameters() == 5 * 64 + 5


@pytest.mark.parametrize("decay_tasks,halved", [(6, True), (7, False)])
def test_meta_learning_rates_decay_per_task_hard_tasks_included(tiny, decay_tasks, halved):
    """One step of 5 ordinary + 1 hard task is 6 optimiser updates: lr_decay_tasks=6 halves both rates, 7 does not."""
    torch.manual_seed(0)
    m = MTL(tiny.hp.replace(lr_decay_tasks=decay_tasks), tiny.ctx)
    before = [g["lr"] for g in m.optimizer.param_groups]
    out = m.train_step([m.ctx.sampler.episode(i, 5, 1, 5) for i in range(5)], 0)
    assert "tasks" not in out  # the harness counts the episodes (5 handed over, 1 hard task drawn)
    after = [g["lr"] for g in m.optimizer.param_groups]
    assert after == ([lr * m.hp.lr_gamma for lr in before] if halved else before)


@pytest.fixture(scope="module")
def variant_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtl_runs")
    out = {}
    for name in ("mtl", "mtl-noht", "mtl-ft", "pretrain-only"):
        # 20 test episodes: the variants score 56-58% on them (57-60% on 50), chance is 20%, the floor below 45%
        cfg = RunConfig(name, "omniglot", 5, 5, profile="smoke", test_episodes=20, val_episodes=10)
        out[name] = run(cfg, root, CPU)
    return out


def test_pretrained_backbone_is_computed_once_and_reused(variant_runs):
    records = [s["cache"] for s in variant_runs.values()]
    assert all(len(r) == 1 and r[0]["name"] == "mtl-pretrain" for r in records)
    assert [r[0]["computed_in_this_run"] for r in records] == [True, False, False, False]
    assert len({r[0]["file"] for r in records}) == 1 and len({r[0]["seconds"] for r in records}) == 1


@pytest.mark.parametrize("name", ["mtl", "mtl-noht", "mtl-ft", "pretrain-only"])
def test_each_variant_learns_above_chance(variant_runs, name):
    s = variant_runs[name]
    assert s["mean"] > 45.0, s["mean"]  # 5-way: chance is 20%
    hp = MTL.hyper("smoke", methods.Setting("omniglot", 5, 5))
    if name == "mtl":
        assert s["train_episodes"] == hp.train_steps * (hp.meta_batch + hp.hard_tasks)
    elif name == "pretrain-only":
        assert s["train_episodes"] == 0 and s["train_steps"] == 1 and s["trainable_params"] == 0
    else:
        assert s["train_episodes"] == hp.train_steps * hp.meta_batch
    assert registry.get(name).variant_of == (None if name == "mtl" else "mtl")


def test_speed_measures_with_the_runs_artefact_cache(tmp_path, monkeypatch):
    """benchmark.speed builds its method with the runner's context factory: MTL's pretraining is cached under the
    results directory, and a second measurement (or a run with the same key) reuses it instead of pretraining."""
    from benchmark.speed import prepare_measurement, time_run

    def measure():
        prepared = prepare_measurement("mtl", profile="smoke", meta_batch=1, overrides=(
            ("pre_epochs", 1e-5), ("pre_val_episodes", 1), ("inner_steps", 5), ("test_steps", 5), ("hard_tasks", 0)))
        return time_run(prepared, steps=1, warmup=0, test_episodes=1, results_dir=tmp_path)

    first = measure()
    assert len(list((tmp_path / "cache").glob("mtl-pretrain-*.pt"))) == 1
    monkeypatch.setattr(MTL, "_pretrain", lambda self: pytest.fail("pretrained again"))
    second = measure()
    assert second["train_episode"] == first["train_episode"] and second["ms_per_test_episode_median"] > 0


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_stopped_pretraining_resumes_to_the_same_backbone(tmp_path, monkeypatch):
    """The smoke pretraining (60 iterations) validated every 20 and snapshotted every 25 iterations, stopped at
    iteration 55 and run again, resumes from its snapshot at 50 and stores the uninterrupted run's backbone, bit for
    bit: the best of the validations, scored here so that the one at 40 wins, comes from the restored best-so-far
    record; the validation at 60 sees the same RNG state and scores the same; the same images and test episodes. The
    summary's cache log says where it resumed, and the partial file is gone once the artefact is stored."""
    import methods.blocks as blocks
    from benchmark.kit.episodes import TrainingSampler
    from benchmark.pipeline import Interrupted

    epochs = MTL.hyper("smoke", methods.Setting("omniglot", 5, 1)).pre_epochs
    cfg = RunConfig("mtl", "omniglot", 5, 1, profile="smoke", test_episodes=3, val_episodes=2, overrides=(
        ("pre_val_every", epochs / 3), ("train_steps", 1), ("val_every", 1)))
    monkeypatch.setattr(blocks, "SNAPSHOT_EVERY", 25)
    batch, validate = TrainingSampler.batch, MTL._pre_validate
    last, stop, seen = [0], [], []

    def drawing(self, index, size, stream="batches"):
        if stream == "mtl-pretrain":
            if stop and index == stop[0]:
                stop.clear()
                raise KeyboardInterrupt
            last[0] = index
        return batch(self, index, size, stream)

    def scoring(self, net):
        rng = torch.get_rng_state()  # the validation's random classifiers are drawn from it
        seen.append((last[0] + 1, validate(self, net), rng))
        return {20: 0.5, 40: 0.9, 60: 0.7}[last[0] + 1]

    monkeypatch.setattr(TrainingSampler, "batch", drawing)
    monkeypatch.setattr(MTL, "_pre_validate", scoring)
    full = run(cfg, tmp_path / "a", CPU)
    full_seen, seen[:] = list(seen), []
    assert [s[0] for s in full_seen] == [20, 40, 60] and full["cache"][0]["resumed_from"] is None

    stop.append(55)
    with pytest.raises(Interrupted, match="setting up"):
        run(cfg, tmp_path / "b", CPU)
    assert [s[0] for s in seen] == [20, 40]
    assert len(list((tmp_path / "b" / "cache").glob("mtl-pretrain-*.partial.pt"))) == 1
    resumed = run(cfg, tmp_path / "b", CPU)
    assert [s[0] for s in seen] == [20, 40, 60]  # not validated again at 20 and 40
    assert all(a[1] == b[1] and torch.equal(a[2], b[2]) for a, b in zip(full_seen, seen))

    (a,), (b,) = full["cache"], resumed["cache"]
    assert b["resumed_from"] == 50 and b["computed_in_this_run"] and b["file"] == a["file"]
    assert b["images"] == a["images"] == 60 * 64
    stored_a = torch.load(tmp_path / "a" / a["file"], weights_only=False)
    stored_b = torch.load(tmp_path / "b" / b["file"], weights_only=False)
    assert _equal_states(stored_a["value"], stored_b["value"]) and stored_a["images"] == stored_b["images"]
    assert not list((tmp_path / "b" / "cache").glob("*.partial.pt"))
    ea = pd.read_csv(tmp_path / "a" / cfg.run_id / "test_episodes.csv")["accuracy"].tolist()
    assert ea == pd.read_csv(tmp_path / "b" / cfg.run_id / "test_episodes.csv")["accuracy"].tolist()

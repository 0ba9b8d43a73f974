import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import methods
from benchmark.pipeline import RunConfig, make_context, prepare, registry, run
from methods.meta_lstm import MetaLSTM, preprocess

CPU = torch.device("cpu")


def make(omniglot, shots: int, backbone: str = "conv4-32", **changes) -> MetaLSTM:
    prepared = prepare(RunConfig("meta_lstm", "omniglot", 5, shots, backbone, profile="smoke", queries=4,
                                 val_episodes=1, overrides=tuple(changes.items())))
    ctx = make_context(prepared, CPU)
    torch.manual_seed(0)
    return MetaLSTM(prepared.hp, ctx)


def test_registered_with_paper_defaults():
    assert registry.get("meta_lstm") is MetaLSTM and MetaLSTM.family == "optimizer" and MetaLSTM.adapts_at_test
    assert "meta_lstm" in registry.resolve("all")
    one = MetaLSTM.hyper("paper", methods.Setting("miniimagenet", 5, 1))
    five = MetaLSTM.hyper("paper", methods.Setting("miniimagenet", 5, 5))
    assert (one.inner_steps, one.inner_batch, five.inner_steps, five.inner_batch) == (12, 5, 8, 25)
    assert (one.lr, one.grad_clip, one.hidden, one.preprocess_p) == (1e-3, 0.25, 20, 10.0)


def test_preprocessing():
    x = torch.tensor([2.0, -1e-2, 1e-6, -1e-6, 0.0], dtype=torch.float64)
    out = preprocess(x, 10.0)
    assert out.shape == (2, 5)
    torch.testing.assert_close(out[:, 0], torch.tensor([np.log(2.0) / 10, 1.0]))
    torch.testing.assert_close(out[:, 1], torch.tensor([np.log(1e-2) / 10, -1.0]))
    torch.testing.assert_close(out[:, 2], torch.tensor([-1.0, 1e-6 * np.exp(10)]))
    torch.testing.assert_close(out[:, 4], torch.tensor([-1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("batch_divided", [False, True])
def test_gates_fixed_at_one_and_lr_is_plain_sgd(omniglot, batch_divided):
    m = make(omniglot, 1, inner_steps=3, inner_batch=3, batch_divided_grad=batch_divided)
    ep = m.ctx.sampler.episode(0, 5, 1, 2)
    lr = 0.1
    c, _ = m.adapt(ep, meta_graph=False, gate_override=lambda t, c, g: (1.0, lr))

    # hand-written SGD on an ordinary copy of the learner, initialised from c_0, batch-statistics BN
    net = copy.deepcopy(m.learner).train()
    with torch.no_grad():
        for p, v in zip(net.parameters(), m.c0.split([p.numel() for p in net.parameters()])):
            p.copy_(v.view_as(p))
            p.requires_grad_(True)
    batches = m.minibatches(ep)
    assert len(batches) == 3 and all(len(b) == 3 for b in batches)
    for idx in batches:
        idx = torch.as_tensor(idx)
        loss = F.cross_entropy(net(ep.support_x[idx]), ep.support_y[idx])
        grads = torch.autograd.grad(loss, list(net.parameters()))
        with torch.no_grad():
            for p, g in zip(net.parameters(), grads):
                p.sub_(lr * g / (len(idx) if batch_divided else 1))  # the authors' feval divides by the batch
    sgd = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    assert not torch.allclose(sgd, m.c0.detach(), atol=1e-4)  # the updates did move the parameters
    torch.testing.assert_close(c, sgd, rtol=1e-5, atol=1e-6)


def test_minibatches_are_deterministic_and_keyed(omniglot):
    m = make(omniglot, 5, inner_steps=4, inner_batch=7)
    sampler = m.ctx.sampler
    ep0, ep1 = sampler.episode(0, 5, 5, 2), sampler.episode(1, 5, 5, 2)
    a = m.minibatches(ep0)
    torch.manual_seed(123)
    np.random.seed(123)
    b = m.minibatches(sampler.episode(0, 5, 5, 2))
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert all(len(x) == 7 and len(set(x.tolist())) == 7 and x.max() < 25 for x in a)
    assert len({tuple(x.tolist()) for x in a}) > 1  # different steps draw different mini-batches
    assert [x.tolist() for x in a] != [x.tolist() for x in m.minibatches(ep1)]
    full = make(omniglot, 5, inner_steps=2, inner_batch=25).minibatches(ep0)
    assert all(x.tolist() == list(range(25)) for x in full)  # paper's 5-shot batch: the whole support set


@pytest.mark.parametrize("shots", [1, 5])
def test_shapes_training_and_prediction(omniglot, shots):
    m = make(omniglot, shots, inner_steps=2)
    n = sum(p.numel() for p in m.learner.parameters())
    assert m.adapted_parameters() == n == m.c0.numel()
    assert m.trainable_parameters() == n + sum(p.numel() for p in m.lstm.parameters()) + 2 * (m.hp.hidden + 2) + 2
    before = {k: v.detach().clone() for k, v in m.named_parameters() if v.requires_grad}
    out = m.train_step([m.ctx.sampler.episode(0, 5, shots, 3)], 0)
    assert np.isfinite(out["loss"]) and 0.0 <= out["acc"] <= 1.0
    assert 0.9 < out["forget_gate"] < 1.0 and 0.0 < out["input_gate"] < 0.05  # bias initialisation (f ~ 1, i small)
    for k, v in m.named_parameters():
        if v.requires_grad:
            assert not torch.equal(v, before[k]), k  # every meta-parameter, c_0 included, gets a meta-gradient
    full = m.ctx.sampler.episode(0, m.ctx.setting.ways, m.ctx.setting.shots, 15, stream="test")
    ep = full.hidden()
    with torch.enable_grad():
        logits = m.predict(ep)
    assert logits.shape == (5 * 15, 5) and torch.isfinite(logits).all()
    with torch.enable_grad():
        again = m.predict(ep)
    torch.testing.assert_close(logits, again)  # prediction is a pure function of the episode
    # queries are normalised with the support's running statistics: one query's logits do not depend on the others
    sub = copy.copy(full)
    sub.query_x, sub.query_y = full.query_x[:3], full.query_y[:3]
    with torch.enable_grad():
        torch.testing.assert_close(m.predict(sub.hidden()), logits[:3], rtol=1e-4, atol=1e-5)


def test_learns_on_smoke_profile(tmp_path):
    # conv4-32: the paper's learner (and 4x fewer coordinates for the meta-learner than conv4, for the CPU budget)
    base = dict(backbone="conv4-32", profile="smoke", test_episodes=20, val_episodes=3)
    untrained = run(RunConfig("meta_lstm", "omniglot", 5, 1, overrides=(("train_steps", 0),), **base), tmp_path, CPU)
    trained = run(RunConfig("meta_lstm", "omniglot", 5, 1, **base), tmp_path, CPU)
    assert trained["mean"] > 40.0, trained["mean"]  # chance is 20%
    assert trained["mean"] > untrained["mean"] + 5.0, (trained["mean"], untrained["mean"])
    assert trained["adapted_params"] == trained["trainable_params"] - 20 * 24 * 4 - 80 - 2 * 22 - 2


def test_authors_configs_per_shot():
    """train-imagenet-1shot.lua: 75,000 episodes, BN_momentum 0.9; train-imagenet-5shot.lua: 50,000 and 0.95."""
    one = MetaLSTM.hyper("paper", methods.Setting("omniglot", 5, 1))
    five = MetaLSTM.hyper("paper", methods.Setting("omniglot", 5, 5))
    assert (one.train_steps, one.bn_momentum, one.inner_steps) == (75000, 0.9, 12)
    assert (five.train_steps, five.bn_momentum, five.inner_steps, five.inner_batch) == (50000, 0.95, 8, 25)
    assert MetaLSTM.hyper("quick", methods.Setting("omniglot", 5, 5)).bn_momentum == 0.95
    assert MetaLSTM.paper_train_episodes(methods.Setting("omniglot", 5, 5)) == 50000

"""Batched test-time adaptation (``batched_adaptation``): a group of test episodes adapted in one vectorised pass
gives the logits of ``predict`` one episode at a time.

Compared in float64: Reptile's Adam (beta1 = 0) amplifies rounding so much that in float32 the looped path itself
moves by up to ~0.07 in a logit when its initialisation is perturbed by 1e-7 (relative), so float32 cannot tell a
reordered-but-equal computation from a wrong one; in float64 the two paths agree to ~1e-14 (tolerance 1e-9)."""
import dataclasses

import pytest
import torch

from benchmark.kit.episodes import EpisodeSet
from benchmark.pipeline import RunConfig, make_context, prepare

CPU = torch.device("cpu")


def trained64(name, shots, steps=2, **changes):
    prepared = prepare(RunConfig(name, "omniglot", 5, shots, backbone="conv4-strided", profile="smoke",
                                 val_episodes=2, overrides=tuple(changes.items())))
    torch.manual_seed(0)
    ctx = make_context(prepared, CPU)
    m, hp = prepared.cls(prepared.hp, ctx), prepared.hp
    ways, k, q = m.train_shape()
    for step in range(steps):  # a few updates, so the network is not at its initialisation
        m.train_step([ctx.sampler.episode(step * hp.meta_batch + j, ways, k, q) for j in range(hp.meta_batch)], step)
    return m.double()


def episodes64(omniglot, shots, n):
    eps = EpisodeSet(omniglot, "test", 5, shots, 15, 0, n, stream="test")
    return [dataclasses.replace(eps[i], support_x=eps[i].support_x.double(), query_x=eps[i].query_x.double())
            for i in range(n)]


def test_batched_adaptation_default_is_looped_on_the_cpu(omniglot):
    prepared = prepare(RunConfig("reptile", "omniglot", 5, 1, profile="smoke", val_episodes=2))
    m = prepared.cls(prepared.hp, make_context(prepared, CPU))
    assert m.hp.batched_adaptation is False and m.eval_group == 1


@pytest.mark.parametrize("shots,iters", [(1, 4), (5, 3)])
def test_reptile_batched_adaptation_equals_one_at_a_time(omniglot, shots, iters):
    m = trained64("reptile", shots, batched_adaptation=True, eval_iters=iters)
    assert m.eval_group > 1
    eps = episodes64(omniglot, shots, 3)
    many = m.predict_many(eps)
    for ep, b in zip(eps, many):
        a = m.predict(ep)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
        assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.parametrize("shots", [1, 5])
def test_maml_batched_adaptation_equals_one_at_a_time(omniglot, shots):
    m = trained64("maml", shots, batched_adaptation=True)
    assert m.eval_group > 1 and m.hp.test_inner_steps == 3
    eps = episodes64(omniglot, shots, 3)
    many = m.predict_many(eps)
    for ep, b in zip(eps, many):
        a = m.predict(ep)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
        assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.parametrize("shots", [1, 5])
def test_mtl_batched_adaptation_equals_one_at_a_time(omniglot, shots):
    m = trained64("mtl", shots, steps=1, batched_adaptation=True, test_steps=20)
    assert m.eval_group > 1
    eps = episodes64(omniglot, shots, 3)
    many = m.predict_many(eps)
    for ep, b in zip(eps, many):
        a = m.predict(ep)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
        assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.parametrize("shots", [1, 5])
def test_meta_lstm_batched_adaptation_equals_one_at_a_time(omniglot, shots):
    m = trained64("meta_lstm", shots, steps=1, batched_adaptation=True)
    assert m.eval_group > 1 and m.hp.inner_steps == 5
    eps = episodes64(omniglot, shots, 3)
    many = m.predict_many(eps)
    for ep, b in zip(eps, many):
        a = m.predict(ep)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
        assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.parametrize("name", ["mtl", "meta_lstm"])
def test_batched_adaptation_default_is_looped_on_the_cpu_for_every_adapting_method(name):
    prepared = prepare(RunConfig(name, "omniglot", 5, 1, profile="smoke", val_episodes=2))
    m = prepared.cls(prepared.hp, make_context(prepared, CPU))
    assert m.hp.batched_adaptation is False and m.eval_group == 1

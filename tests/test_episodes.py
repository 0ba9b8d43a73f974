import random

import numpy as np
import pytest
import torch

from benchmark.kit.episodes import EpisodeSet, TaskSampler


def _consume_randomness(amount):
    torch.rand(amount)
    np.random.rand(amount)
    [random.random() for _ in range(amount)]


def test_episodes_are_identical_whatever_else_draws_random_numbers(omniglot):
    """Two 'methods' that consume different amounts of global randomness see byte-identical episodes."""
    seen = []
    for amount, global_seed in ((1, 0), (100_000, 12345)):
        torch.manual_seed(global_seed)
        np.random.seed(global_seed)
        eps = []
        for i in range(5):
            _consume_randomness(amount)
            ep = TaskSampler(omniglot, "train", seed=3).episode(i, 5, 1, 15)
            eps.append(b"".join(t.numpy().tobytes() for t in (ep.support_x, ep.support_y, ep.query_x, ep.query_y)))
        seen.append(eps)
    assert seen[0] == seen[1]


def test_another_seed_gives_other_episodes(omniglot):
    a = TaskSampler(omniglot, "train", seed=0).episode(0, 5, 5, 15)
    b = TaskSampler(omniglot, "train", seed=1).episode(0, 5, 5, 15)
    c = TaskSampler(omniglot, "train", seed=0).episode(1, 5, 5, 15)
    assert not np.array_equal(a.classes, b.classes) and not np.array_equal(a.classes, c.classes)
    assert not torch.equal(a.support_x, b.support_x)


def test_episode_structure(omniglot):
    ep = TaskSampler(omniglot, "train", seed=0).episode(7, 20, 5, 5)
    assert ep.support_x.shape == (100, 1, 28, 28) and ep.query_x.shape == (100, 1, 28, 28)
    assert ep.support_y.tolist() == [c for c in range(20) for _ in range(5)]
    assert len(set(ep.classes.tolist())) == 20
    for w in range(20):  # support and query samples of a class never overlap
        assert not set(ep.support_idx[w]) & set(ep.query_idx[w])
    assert 0.0 <= ep.support_x.min() and ep.support_x.max() <= 1.0


def test_eval_sets_are_fixed_and_fingerprinted(omniglot):
    a = EpisodeSet(omniglot, "test", 5, 1, 15, seed=0, n=50, stream="test")
    b = EpisodeSet(omniglot, "test", 5, 1, 15, seed=0, n=50, stream="test")
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert torch.equal(a[49].query_x, b[49].query_x)
    assert EpisodeSet(omniglot, "test", 5, 1, 15, seed=1, n=50, stream="test").fingerprint != a.fingerprint
    assert EpisodeSet(omniglot, "test", 5, 5, 15, seed=0, n=50, stream="test").fingerprint != a.fingerprint
    assert EpisodeSet(omniglot, "test", 5, 1, 15, seed=0, n=51, stream="test").fingerprint != a.fingerprint
    val = EpisodeSet(omniglot, "val", 5, 1, 15, seed=0, n=50, stream="val")
    test_classes = {omniglot.splits["test"].names[c] for ep in a for c in ep.classes}
    val_classes = {omniglot.splits["val"].names[c] for ep in val for c in ep.classes}
    assert test_classes.isdisjoint(val_classes)
    with pytest.raises(IndexError):
        a[50]


def test_impossible_specs_are_refused(omniglot):
    with pytest.raises(ValueError, match="classes"):
        EpisodeSet(omniglot, "val", 689, 1, 1, 0, 1)
    with pytest.raises(ValueError, match="exceed"):
        EpisodeSet(omniglot, "test", 5, 10, 15, 0, 1)
    with pytest.raises(ValueError, match="at least 1"):
        EpisodeSet(omniglot, "test", 5, 0, 15, 0, 1)


def test_given_classes_and_batches_are_pure_functions(omniglot):
    s = TaskSampler(omniglot, "train", seed=0)
    e1 = s.episode(3, 3, 1, 2, stream="hard", classes=[10, 20, 30])
    e2 = s.episode(3, 3, 1, 2, stream="hard", classes=[10, 20, 30])
    assert e1.classes.tolist() == [10, 20, 30] and torch.equal(e1.query_x, e2.query_x)
    x1, y1 = s.batch(5, 64)
    torch.manual_seed(99)
    x2, y2 = s.batch(5, 64)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and y1.max() < 4112
    assert not torch.equal(s.batch(6, 64)[1], y1)

"""Evaluation in groups of episodes (``Method.predict_many``) gives the per-episode results of one at a time."""
import numpy as np
import pytest
import torch

from benchmark.kit.episodes import EpisodeSet
from benchmark.pipeline import RunConfig, evaluate, make_context, prepare, run

CPU = torch.device("cpu")


def trained(omniglot, name, shots=1, steps=6, **changes):
    prepared = prepare(RunConfig(name, "omniglot", 5, shots, profile="smoke", val_episodes=2,
                                 overrides=tuple(changes.items())))
    torch.manual_seed(0)
    ctx = make_context(prepared, CPU)
    m, hp = prepared.cls(prepared.hp, ctx), prepared.hp
    ways, k, q = m.train_shape()
    for step in range(steps):  # a few updates, so the network is not at its initialisation
        m.train_step([ctx.sampler.episode(step * hp.meta_batch + j, ways, k, q) for j in range(hp.meta_batch)], step)
    return m


@pytest.mark.parametrize("name,shots", [("protonet", 1), ("matching", 5), ("matching-nofce", 1), ("relation", 5)])
def test_grouped_evaluation_equals_one_at_a_time(omniglot, name, shots):
    m = trained(omniglot, name, shots)
    assert m.eval_group > 1
    eps = EpisodeSet(omniglot, "test", 5, shots, 15, 0, 12, stream="test")
    acc1, _ = evaluate(m, eps, CPU, group=1)
    acc8, secs = evaluate(m, eps, CPU, group=8)  # groups of 8 and 4: the last group is smaller
    np.testing.assert_array_equal(acc1, acc8)
    assert len(secs) == 12 and (secs > 0).all()
    one = [m.predict(eps[i]) for i in range(4)]
    many = m.predict_many([eps[i] for i in range(4)])
    for a, b in zip(one, many):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_matching_support_side_cosine_beats_the_literal_cosine(tmp_path):
    """The main entry's similarity (support side normalised) against Eq. 2 read literally, same episodes."""
    common = dict(profile="smoke", test_episodes=40, val_episodes=5)
    main = run(RunConfig("matching-nofce", "omniglot", 5, 1, **common), tmp_path, CPU)
    literal = run(RunConfig("matching-nofce", "omniglot", 5, 1, overrides=(("similarity", "cosine"),), **common),
                  tmp_path, CPU)
    assert main["test_fingerprint"] == literal["test_fingerprint"]
    assert main["mean"] > literal["mean"] + 10, (main["mean"], literal["mean"])


def test_group_size_caps_large_images():
    """Omniglot episodes keep the method's group; 84x84 RGB episodes are evaluated one at a time (memory)."""
    from types import SimpleNamespace

    import torch

    from benchmark.pipeline.training import group_size

    def episodes(ways, shots, queries, shape):
        e = SimpleNamespace(support_x=torch.zeros(ways * shots, *shape), query_x=torch.zeros(ways * queries, *shape))
        return [e]

    method = SimpleNamespace(eval_group=20)
    assert group_size(method, episodes(5, 5, 15, (1, 28, 28))) == 20
    assert group_size(method, episodes(5, 1, 15, (3, 84, 84))) == 1
    assert group_size(method, episodes(5, 1, 15, (3, 32, 32))) == 8  # CIFAR: 80 x 3,072 values per episode
    assert group_size(method, episodes(20, 5, 15, (1, 28, 28))) == 6
    assert group_size(method, episodes(5, 1, 15, (3, 84, 84)), group=7) == 1
    assert group_size(SimpleNamespace(eval_group=1), episodes(5, 5, 15, (1, 28, 28))) == 1

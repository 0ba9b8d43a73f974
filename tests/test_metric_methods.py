"""Matching Networks (with and without FCE), Relation Network and TADAM: shapes, invariances, learning."""
import dataclasses

import pytest
import torch

import methods
from benchmark.kit.episodes import EpisodeSet
from benchmark.pipeline import RunConfig, make_context, prepare, registry, run
from methods.relation import RelationModule, class_maps

CPU = torch.device("cpu")
NAMES = ("matching", "matching-nofce", "relation", "tadam")


def make(omniglot, name, ways=5, shots=1, backbone="conv4", seed=0, profile="smoke", **changes):
    prepared = prepare(RunConfig(name, "omniglot", ways, shots, backbone, seed, profile, val_episodes=2,
                                 overrides=tuple(changes.items())))
    torch.manual_seed(seed)
    return prepared.cls(prepared.hp, make_context(prepared, CPU))


def episode(omniglot, ways, shots, queries=2, index=0, split="test"):
    return EpisodeSet(omniglot, split, ways, shots, queries, 0, index + 1, stream="t")[index]


def permuted(ep, perm):
    return dataclasses.replace(ep, support_x=ep.support_x[perm], support_y=ep.support_y[perm])


def test_registry_and_survey_facts():
    reg = registry.registry()
    assert {"matching", "relation", "tadam"} <= set(registry.resolve("all"))
    assert "matching-nofce" not in registry.resolve("all") and "matching-nofce" in registry.resolve("variants")
    assert reg["matching-nofce"].variant_of == "matching"
    for n in NAMES:
        c = reg[n]
        assert c.family == "metric" and c.idea and c.paper and c.__doc__
        assert set(c.metric_facts) == {"support embedding", "query embedding", "distance", "distinctive"}
        for profile in ("smoke", "quick", "paper"):
            assert c.hyper(profile, methods.Setting("omniglot", 5, 1)).train_steps > 0
    assert reg["matching"].hyper("paper", methods.Setting("omniglot", 5, 1)).fce is True
    assert reg["matching-nofce"].hyper("paper", methods.Setting("omniglot", 5, 1)).fce is False
    q = {(w, s): reg["relation"].hyper("paper", methods.Setting("omniglot", w, s)).train_queries
         for w in (5, 20) for s in (1, 5)}
    assert q == {(5, 1): 19, (5, 5): 15, (20, 1): 10, (20, 5): 5}


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes_and_a_training_step(omniglot, name):
    m = make(omniglot, name)
    for ways, shots in ((5, 1), (5, 5), (20, 1), (20, 5)):
        ep = episode(omniglot, ways, shots)
        out = m.predict(ep)
        assert out.shape == (ways * 2, ways) and torch.isfinite(out).all()
    before = [p.detach().clone() for p in m.parameters()]
    tr = m.ctx.sampler.episode(0, 5, 1, 3)
    metrics = m.train_step([tr], 0)
    assert all(isinstance(v, float) for v in metrics.values())
    assert any(not torch.equal(a, p) for a, p in zip(before, m.parameters()))


def test_matching_returns_log_probabilities(omniglot):
    for name in ("matching", "matching-nofce"):
        out = make(omniglot, name).predict(episode(omniglot, 5, 5))
        assert torch.allclose(out.exp().sum(1), torch.ones(out.shape[0]), atol=1e-5)


def test_matching_without_fce_ignores_support_order(omniglot):
    m = make(omniglot, "matching-nofce")
    ep = episode(omniglot, 5, 5, queries=3)
    perm = torch.randperm(ep.support_x.shape[0], generator=torch.Generator().manual_seed(1))
    a, b = m.predict(ep), m.predict(permuted(ep, perm))
    assert torch.allclose(a, b, atol=1e-5)
    # with FCE the bidirectional LSTM reads the support set as a sequence: order matters there
    f = make(omniglot, "matching")
    assert not torch.allclose(f.predict(ep), f.predict(permuted(ep, perm)), atol=1e-5)


def test_relation_kshot_sum_is_order_invariant(omniglot):
    z = torch.randn(10, 4, 3, 3)
    y = torch.arange(5).repeat_interleave(2)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(class_maps(z, y, 5), class_maps(z[perm], y[perm], 5), atol=1e-6)
    assert torch.allclose(class_maps(z, y, 5)[1], z[2] + z[3])
    m = make(omniglot, "relation")
    ep = episode(omniglot, 5, 5, queries=3)
    perm25 = torch.randperm(25, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(m.predict(ep), m.predict(permuted(ep, perm25)), atol=1e-5)


@pytest.mark.parametrize("size", [1, 3, 5, 7])
def test_relation_module_adapts_to_the_feature_map_size(size):
    g = RelationModule(2 * 8, width=16).eval()
    r = g(torch.randn(6, 16, size, size))
    assert r.shape == (6,) and ((r > 0) & (r < 1)).all()


@pytest.mark.parametrize("backbone,shape", [("conv4", (64, 3, 3)), ("conv4-relation", (64, 7, 7)),
                                            ("resnet12-narrow", (256, 1, 1))])
def test_relation_runs_on_shared_backbones(omniglot, backbone, shape):
    m = make(omniglot, "relation", backbone=backbone)
    assert m.ctx.feature_shape(m.encoder) == shape
    assert m.predict(episode(omniglot, 5, 1)).shape == (10, 5)


def test_tadam_with_zero_film_multipliers_is_the_unconditioned_network(omniglot):
    m = make(omniglot, "tadam").eval()
    ep = episode(omniglot, 5, 5, queries=3)
    with torch.no_grad():
        assert torch.equal(m.logits(ep, condition=True), m.logits(ep, condition=False))
        for p in m.ten:
            p.gamma0.fill_(10.0)
            p.beta0.fill_(10.0)
        a, b = m.logits(ep, condition=True), m.logits(ep, condition=False)
        assert (a - b).abs().max() > 0.1 * b.abs().max()
    assert len(m.ten) == len(m.encoder.film_channels) == 4


def test_tadam_runs_on_resnet12_with_twelve_film_sites(omniglot):
    m = make(omniglot, "tadam", backbone="resnet12-narrow")
    assert len(m.ten) == 12
    assert m.predict(episode(omniglot, 5, 1)).shape == (10, 5)


def test_tadam_auxiliary_coin_is_a_pure_function_of_seed_and_step(omniglot):
    a, b = make(omniglot, "tadam", train_steps=200), make(omniglot, "tadam", train_steps=200)
    flips = [a.is_aux_step(t) for t in range(200)]
    assert flips == [b.is_aux_step(t) for t in range(200)]
    assert all(flips[:10])  # p = 0.9 ** 0 = 1 for the first T/20 steps
    assert a.aux_probability(0) == 1.0 and a.aux_probability(199) == pytest.approx(0.9 ** 19)
    assert 0.2 < sum(flips) / 200 < 0.8
    c = make(omniglot, "tadam", train_steps=200, seed=1)
    assert flips != [c.is_aux_step(t) for t in range(200)]
    # an auxiliary step trains the backbone and the all-class head, not the TEN
    head = a.head.weight.detach().clone()
    out = a.train_step([a.ctx.sampler.episode(0, 5, 1, 2)], 0)
    assert out["aux"] == 1.0 and not torch.equal(head, a.head.weight)
    assert a.head.out_features == a.ctx.sampler.n_classes


@pytest.mark.parametrize("name,shots", [("matching", 1), ("matching-nofce", 5), ("relation", 5), ("tadam", 1)])
def test_learns_above_chance_on_smoke_profile(tmp_path, name, shots):
    s = run(RunConfig(name, "omniglot", 5, shots, profile="smoke", test_episodes=40, val_episodes=5), tmp_path, CPU)
    assert s["mean"] > 45.0, s["mean"]  # chance is 20%; 40 episodes x 75 queries put the 95% CI within +-3 points


def test_tadam_metric_is_the_authors_final_one_by_default(omniglot):
    """Unsquared Euclidean distance times a fixed 7.5 (ElementAI/TADAM, commit 1a2146b); the squared, learned-scale
    reading of Sec. 2.1 stays available."""
    ep = episode(omniglot, 5, 1, queries=3)
    m = make(omniglot, "tadam", film=False)
    assert not m.alpha.requires_grad and float(m.alpha) == 7.5
    assert all(p is not m.alpha for g in m.optimizer.param_groups for p in g["params"])
    m.eval()
    with torch.no_grad():
        z = m.encoder(torch.cat([ep.support_x, ep.query_x]))
        protos = torch.stack([z[:5][ep.support_y == k].mean(0) for k in range(5)])
        torch.testing.assert_close(m.predict(ep), -7.5 * torch.cdist(z[5:], protos), rtol=1e-4, atol=1e-4)
    sq = make(omniglot, "tadam", film=False, distance="sq_euclidean", alpha_init=1.0, alpha_trainable=True)
    assert sq.alpha.requires_grad
    sq.eval()
    with torch.no_grad():
        z = sq.encoder(torch.cat([ep.support_x, ep.query_x]))
        protos = torch.stack([z[:5][ep.support_y == k].mean(0) for k in range(5)])
        torch.testing.assert_close(sq.predict(ep), -torch.cdist(z[5:], protos) ** 2, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="distance"):
        make(omniglot, "tadam", distance="cosine")


def test_the_distance_and_support_pooling_ablations(omniglot):
    """protonet-euclidean scores by minus the plain distance, relation-mean averages a class's support maps: both
    variants of their paper's entry (which keeps the paper's choice), same weights -> the predicted transform."""
    assert {"protonet-euclidean", "relation-mean"} <= set(registry.resolve("variants"))
    assert not {"protonet-euclidean", "relation-mean"} & set(registry.resolve("all"))
    ep = episode(omniglot, 5, 5)
    main, variant = make(omniglot, "protonet"), make(omniglot, "protonet-euclidean")
    assert type(variant).variant_of == "protonet"
    variant.load_state_dict(main.state_dict())
    main.eval(), variant.eval()
    with torch.no_grad():
        sq, plain = main.predict(ep), variant.predict(ep)
    torch.testing.assert_close(plain, -(-sq).clamp_min(1e-12).sqrt())
    z = torch.randn(10, 3, 2, 2)
    y = torch.tensor([0, 1] * 5)
    torch.testing.assert_close(class_maps(z, y, 2, mean=True), class_maps(z, y, 2) / 5)
    assert type(make(omniglot, "relation-mean")).mean_support and not type(make(omniglot, "relation")).mean_support
    one = episode(omniglot, 5, 1)
    r, rm = make(omniglot, "relation"), make(omniglot, "relation-mean")
    rm.load_state_dict(r.state_dict())
    r.eval(), rm.eval()
    with torch.no_grad():
        assert torch.equal(r.predict(one), rm.predict(one))  # one shot: the sum is the mean
        assert not torch.equal(r.predict(ep), rm.predict(ep))

"""MAML and Reptile: exact meta-gradients, equal looped/vectorised paths, Reptile's update rule, learning."""
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from benchmark.kit.episodes import TaskSampler
from benchmark.pipeline import RunConfig, registry, run
from methods.base import Context, Setting
from methods.maml import MAML
from methods.reptile import Reptile

CPU = torch.device("cpu")


def tiny_ctx(sampler=None, ways=3, image=(1, 12, 12)):
    # conv4-strided on 12x12 inputs: 6x6, 3x3, 2x2, 1x1 maps, 64 features
    return Context(setting=Setting("omniglot", ways, 2), image_shape=image, backbone_name="conv4-strided",
                   sampler=sampler, eval_seed=None, device=CPU, seed=0, profile="smoke")


def random_tasks(n, ways=3, shots=2, queries=3, image=(1, 12, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        out.append(SimpleNamespace(
            support_x=torch.randn(ways * shots, *image, generator=g, dtype=torch.float64),
            support_y=torch.arange(ways).repeat_interleave(shots),
            query_x=torch.randn(ways * queries, *image, generator=g, dtype=torch.float64),
            query_y=torch.arange(ways).repeat_interleave(queries)))
    return out


def maml(**changes):
    torch.manual_seed(0)
    hp = MAML.hyper("smoke", Setting("omniglot", 3, 2)).replace(**{"inner_lr": 0.3, "inner_steps": 2, **changes})
    m = MAML(hp, tiny_ctx()).double()
    return m


def meta_grad(m, tasks):
    m.meta_gradient(tasks)
    return torch.cat([p.grad.flatten() for p in m.net.parameters()])


def meta_loss_by_plain_sgd(m, tasks, flat):
    """The MAML objective computed independently: first-order autograd only, parameters given as a flat vector."""
    names = [k for k, _ in m.net.named_parameters()]
    shapes = [p.shape for p in m.net.parameters()]
    total = 0.0
    for t in tasks:
        chunks = torch.split(flat, [s.numel() for s in shapes])
        params = {k: c.view(s).clone().requires_grad_(True) for k, c, s in zip(names, chunks, shapes)}
        for _ in range(m.hp.inner_steps):
            loss = F.cross_entropy(torch.func.functional_call(m.net, params, (t.support_x,)), t.support_y)
            g = torch.autograd.grad(loss, list(params.values()))
            params = {k: (p - m.hp.inner_lr * gi).detach().requires_grad_(True)
                      for (k, p), gi in zip(params.items(), g)}
        with torch.no_grad():
            total += F.cross_entropy(torch.func.functional_call(m.net, params, (t.query_x,)), t.query_y).item()
    return total / len(tasks)


def test_maml_second_order_meta_gradient_matches_finite_differences():
    tasks = random_tasks(2)
    so = maml(vectorize=False)
    g_so = meta_grad(so, tasks)
    g_fo = meta_grad(maml(vectorize=False, first_order=True), tasks)
    theta = torch.cat([p.detach().flatten() for p in so.net.parameters()])
    gen = torch.Generator().manual_seed(1)
    eps = 1e-5
    for _ in range(3):
        d = torch.randn(theta.shape, generator=gen, dtype=torch.float64)
        d /= d.norm()
        fd = (meta_loss_by_plain_sgd(so, tasks, theta + eps * d) - meta_loss_by_plain_sgd(so, tasks, theta - eps * d)
              ) / (2 * eps)
        assert (g_so @ d).item() == pytest.approx(fd, rel=1e-5, abs=1e-9)
        # the first-order approximation misses the second-order term along the same directions
        assert abs((g_fo @ d).item() - fd) > 1e-3 * abs(fd) + 1e-8
    assert not torch.allclose(g_so, g_fo, rtol=1e-3, atol=1e-8)


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_vectorised_and_looped_meta_gradients_agree(first_order):
    tasks = random_tasks(3, seed=2)
    g_loop = meta_grad(maml(vectorize=False, first_order=first_order), tasks)
    g_vec = meta_grad(maml(vectorize=True, first_order=first_order), tasks)
    assert torch.allclose(g_loop, g_vec, rtol=1e-9, atol=1e-12)


def test_maml_first_order_is_the_query_gradient_at_the_adapted_weights():
    tasks = random_tasks(1, seed=3)
    m = maml(vectorize=True, first_order=True)
    g = meta_grad(m, tasks)
    fast = m.adapt(m.params(), tasks[0].support_x, tasks[0].support_y, m.hp.inner_steps, create_graph=False)
    fast = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
    loss = F.cross_entropy(m.forward_with(fast, tasks[0].query_x), tasks[0].query_y)
    expected = torch.cat([x.flatten() for x in torch.autograd.grad(loss, list(fast.values()))])
    assert torch.allclose(g, expected, rtol=1e-9, atol=1e-12)


def test_reptile_sgd_one_step_meta_step_one_is_one_sgd_step(omniglot):
    sampler = TaskSampler(omniglot, "train", 0)
    hp = Reptile.hyper("smoke", Setting("omniglot", 5, 1)).replace(
        inner_optimizer="sgd", inner_iters=1, inner_batch=50, meta_step=1.0, meta_step_final=1.0, meta_batch=1,
        inner_lr=0.1)
    torch.manual_seed(0)
    m = Reptile(hp, Context(Setting("omniglot", 5, 1), omniglot.image_shape, "conv4", sampler, None, CPU, 0,
                            "smoke")).double()
    ep = sampler.episode(0, 5, hp.train_shots, hp.train_queries)
    ep.support_x = ep.support_x.double()
    before = {k: p.detach().clone() for k, p in m.net.named_parameters()}
    loss = F.cross_entropy(m.net(ep.support_x), ep.support_y)  # the whole 50-image support set is the batch
    grads = dict(zip(before, torch.autograd.grad(loss, list(m.net.parameters()))))
    m.train_step([ep], 0)
    for k, p in m.net.named_parameters():
        assert torch.allclose(p.detach(), before[k] - 0.1 * grads[k], rtol=1e-9, atol=1e-12), k
    # and the meta step size scales the move: half a step with meta_step 0.5
    m2 = Reptile(hp.replace(meta_step=0.5, meta_step_final=0.5), m.ctx).double()
    m2.net.load_state_dict({k: v for k, v in before.items()})
    m2.train_step([ep], 0)
    for k, p in m2.net.named_parameters():
        assert torch.allclose(p.detach(), before[k] - 0.05 * grads[k], rtol=1e-9, atol=1e-12), k


def test_reptile_minibatches_are_keyed_and_cover_the_support_set():
    a = Reptile.batch_indices(50, 10, 5, (0, "reptile", 3, 1))
    assert [x.tolist() for x in a] == [x.tolist() for x in Reptile.batch_indices(50, 10, 5, (0, "reptile", 3, 1))]
    assert sorted(int(i) for b in a for i in b) == list(range(50))  # one pass: every example exactly once
    assert [x.tolist() for x in a] != [x.tolist() for x in Reptile.batch_indices(50, 10, 5, (0, "reptile", 3, 2))]
    b = Reptile.batch_indices(25, 5, 50, ("e",))
    assert len(b) == 50 and all(len(x) == 5 for x in b)
    assert all(sorted(int(i) for x in b[5 * j:5 * j + 5] for i in x) == list(range(25)) for j in range(10))


def test_reptile_non_transductive_prediction_batches_each_query_with_the_support_set(omniglot):
    sampler = TaskSampler(omniglot, "train", 0)
    torch.manual_seed(0)
    hp = Reptile.hyper("smoke", Setting("omniglot", 5, 1)).replace(eval_iters=2)
    m = Reptile(hp, Context(Setting("omniglot", 5, 1), omniglot.image_shape, "conv4", sampler, None, CPU, 0, "smoke"))
    ep = sampler.episode(0, 5, 1, 3)
    params = m.adapt(ep)
    with torch.no_grad():
        got = m.classify(params, ep.support_x, ep.query_x)
        want = torch.stack([torch.func.functional_call(m.net, params, (torch.cat([ep.support_x, q[None]]),))[-1]
                            for q in ep.query_x])
        trans = torch.func.functional_call(m.net, params, (ep.query_x,))
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, trans, atol=1e-3)  # batch statistics differ: transduction changes the logits
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.predict(ep)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # prediction leaves the model as it was


def test_registry_family_and_adapted_parameters():
    reg = registry.registry()
    assert reg["maml"].family == reg["reptile"].family == "initialization"
    assert {"maml", "reptile"} <= set(registry.main_methods())
    m = maml()
    assert m.adapted_parameters() == m.trainable_parameters() == sum(p.numel() for p in m.net.parameters())


@pytest.mark.parametrize("name", ["maml", "reptile"])
def test_learns_above_chance_on_smoke_profile(tmp_path, name):
    cfg = RunConfig(name, "omniglot", 5, 1, profile="smoke", test_episodes=20, val_episodes=5)
    s = run(cfg, tmp_path, CPU)
    assert s["mean"] > 45.0, s["mean"]  # chance is 20%
    assert s["adapted_params"] == s["trainable_params"] > 0
    hp = json.loads((tmp_path / cfg.run_id / "config.json").read_text())["hyperparameters"]
    if name == "reptile":
        assert hp["transductive"] is False and hp["train_shots"] == 10
    else:
        assert hp["first_order"] is False and hp["vectorize"] is False


def test_maml_counts_the_same_flops_vectorised_or_looped(tmp_path):
    """A training episode's FLOPs are a property of the method, not of how its meta-batch runs: vmap turns MAML's
    per-task weights into one grouped convolution, whose weight gradient PyTorch's FLOP formula counted ``groups``
    times over (6x the looped count at the paper profile); the harness's counter
    (:func:`benchmark.pipeline.training.flop_counter`) counts both the same, and a plain grouped convolution as its
    groups' convolutions."""
    from benchmark.pipeline.training import flop_counter
    from benchmark.speed import prepare_measurement, time_run

    counts = [time_run(prepare_measurement("maml", shots=1, profile="smoke", overrides=(("vectorize", v),)), "cpu",
                       1, 1, 2, tmp_path, eval_group=0, flops=True)["flops_per_train_episode"] for v in (True, False)]
    assert counts[0] == counts[1] > 0, counts
    x, w = torch.randn(5, 4 * 8, 14, 14, requires_grad=True), torch.randn(4 * 8, 8, 3, 3, requires_grad=True)
    with flop_counter() as grouped:
        torch.autograd.grad(F.conv2d(x, w, padding=1, groups=4).sum(), [x, w])
    xs, ws = x[:, :8].detach().requires_grad_(), w[:8].detach().requires_grad_()  # one group, alone
    with flop_counter() as one:
        torch.autograd.grad(F.conv2d(xs, ws, padding=1).sum(), [xs, ws])
    forward = 2 * 5 * 8 * 8 * 9 * 14 * 14  # 2 x batch x out channels x in channels x kernel x output pixels
    assert one.get_total_flops() == 3 * forward and grouped.get_total_flops() == 4 * 3 * forward

"""Baseline and Baseline++ (Chen et al., ICLR 2019): harness runs, the shared pretraining, the test-time classifier
(deterministic, batched = one at a time, the official recipe), resume, saved models, groups and the report."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import methods
from benchmark import load_run
from benchmark.kit.episodes import EpisodeSet
from benchmark.pipeline import Interrupted, RunConfig, evaluate, registry, run
from benchmark.store.folders import RunFolder
from methods.baseline import Baseline, BaselinePlusPlus, cosine_logits, cosine_scale, sgd_update

CPU = torch.device("cpu")
NAMES = ("baseline", "baseline++")
TEST_EPISODES = 30  # each fine-tunes a new classifier for 100 epochs; 30 clear the floors below by 3.8 points or more


def _cfg(name, shots, **kw):
    return RunConfig(name, "omniglot", 5, shots, profile="smoke", test_episodes=TEST_EPISODES, val_episodes=5, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Smoke runs of both methods, 1-shot then 5-shot, in one results directory (one pretraining per method)."""
    root = tmp_path_factory.mktemp("baseline_runs")
    out = {(name, shots): run(_cfg(name, shots), root, CPU) for name in NAMES for shots in (1, 5)}
    return root, out


@pytest.mark.parametrize("name", NAMES)
def test_smoke_runs_learn_above_chance(runs, name):
    _, out = runs
    for shots, floor in ((1, 30.0), (5, 40.0)):  # 5-way: chance is 20%
        s = out[(name, shots)]
        assert s["mean"] > floor, (name, shots, s["mean"])
        assert s["family"] == "transfer" and s["method_facts"]["variant_of"] is None
        # nothing is meta-trained: one no-op step, a frozen backbone, a new classifier of ways x (64 + 1) per episode
        assert s["train_steps"] == 1 and s["train_episodes"] == 0 and s["trainable_params"] == 0
        assert s["adapted_params"] == 5 * (64 + 1)
        assert s["paper_train_episodes"] == 0 and s["budget_fraction"] is None
    assert out[(name, 5)]["mean"] > out[(name, 1)]["mean"]


def test_pretraining_is_computed_once_for_both_shots(runs):
    _, out = runs
    files = {}
    for name in NAMES:
        recs = [out[(name, shots)]["cache"] for shots in (1, 5)]
        assert all(len(r) == 1 and r[0]["name"] == "baseline-pretrain" for r in recs)
        assert [r[0]["computed_in_this_run"] for r in recs] == [True, False]
        assert recs[0][0]["file"] == recs[1][0]["file"] and recs[0][0]["seconds"] == recs[1][0]["seconds"]
        files[name] = recs[0][0]["file"]
    assert files["baseline"] != files["baseline++"]  # each head pretrains its own backbone


@pytest.fixture(scope="module")
def loaded(runs):
    root, _ = runs
    return {name: load_run(RunFolder(root, _cfg(name, 5).run_id).path) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_saved_model_reloads_without_pretraining_and_predicts_the_same(runs, name, monkeypatch):
    root, out = runs
    monkeypatch.setattr(Baseline, "_pretrain", lambda self: pytest.fail("a restored model pretrained"))
    monkeypatch.setattr(Baseline, "_pretrained", lambda self: pytest.fail("a restored model read the cache"))
    folder = RunFolder(root, _cfg(name, 5).run_id)
    state = torch.random.get_rng_state()
    model = load_run(folder.path)
    assert torch.equal(state, torch.random.get_rng_state())
    assert type(model).__name__ == ("BaselinePlusPlus" if name == "baseline++" else "Baseline")
    test_set = EpisodeSet(_omniglot(), "test", 5, 5, 15, 0, TEST_EPISODES, stream="test")
    assert test_set.fingerprint == out[(name, 5)]["test_fingerprint"]
    acc, _ = evaluate(model, test_set, CPU)
    np.testing.assert_array_equal(acc, folder.read_test_episodes()["accuracy"].to_numpy())


def _omniglot():
    from benchmark.data import load_dataset

    return load_dataset("omniglot")


@pytest.mark.parametrize("name", NAMES)
def test_test_time_classifier_is_deterministic_and_ignores_global_rng(loaded, name):
    model = loaded[name]
    ep = EpisodeSet(_omniglot(), "test", 5, 1, 15, 0, 3, stream="test")[2]
    torch.manual_seed(1)
    a = model.predict(ep)
    torch.manual_seed(2)
    b = model.predict(ep)
    torch.manual_seed(2)
    torch.rand(7)
    state2 = torch.random.get_rng_state()
    model.predict(ep)
    assert torch.equal(a, b) and a.shape == (75, 5) and torch.isfinite(a).all()
    assert torch.equal(state2, torch.random.get_rng_state())  # predict draws nothing from the global RNG
    with torch.no_grad():  # works when the caller disabled autograd too (the classifier is trained inside)
        torch.testing.assert_close(model.predict(ep), a)


@pytest.mark.parametrize("name", NAMES)
def test_predict_many_equals_predict(loaded, name):
    model = loaded[name]
    ds = _omniglot()
    one = [EpisodeSet(ds, "test", 5, 1, 15, 0, 5, stream="test")[i] for i in range(5)]
    five = [EpisodeSet(ds, "test", 5, 5, 15, 0, 5, stream="test")[i] for i in range(3)]
    mixed = [one[0], five[0], one[1], five[1], one[2], five[2], one[3], one[4]]  # two shapes in one call
    many = model.predict_many(mixed)
    for ep, lg in zip(mixed, many):
        torch.testing.assert_close(lg, model.predict(ep), rtol=1e-4, atol=1e-4)
    eps = EpisodeSet(ds, "test", 5, 5, 15, 0, 12, stream="test")
    acc1, _ = evaluate(model, eps, CPU, group=1)
    acc8, _ = evaluate(model, eps, CPU, group=8)
    np.testing.assert_array_equal(acc1, acc8)


def test_sgd_update_is_torch_sgd_with_momentum_dampening_and_weight_decay():
    torch.manual_seed(0)
    p0 = [torch.randn(5, 7), torch.randn(5)]
    mine = [p.clone() for p in p0]
    ref = [p.clone().requires_grad_(True) for p in p0]
    opt = torch.optim.SGD(ref, lr=0.01, momentum=0.9, dampening=0.9, weight_decay=0.001)
    bufs = [None, None]
    for _ in range(5):
        grads = (torch.randn(5, 7), torch.randn(5))
        sgd_update(mine, grads, bufs, 0.01, 0.9, 0.9, 0.001)
        for p, g in zip(ref, grads):
            p.grad = g.clone()
        opt.step()
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_finetune_is_the_official_loop(loaded, name):
    """The batched lockstep fine-tuning gives the classifier of the official code's per-episode loop
    (baselinefinetune.py: nn.Linear / distLinear, torch.optim.SGD, batches of 4 of a permutation per pass), written
    out plainly here with the same initialisation and permutations."""
    model = loaded[name]
    ep = EpisodeSet(_omniglot(), "test", 5, 5, 15, 0, 1, stream="test")[0]
    with torch.no_grad():
        zs, zq = model.encoder(ep.support_x), model.encoder(ep.query_x)
    hp, n = model.hp, len(ep.support_y)
    gen = torch.Generator().manual_seed(model.finetune_seed)
    init = model._head_init(5, gen)
    if model.cosine:
        lin = nn.utils.parametrizations.weight_norm(nn.Linear(64, 5, bias=False), dim=0)
        with torch.no_grad():
            lin.parametrizations.weight.original1.copy_(init[0])  # v
            lin.parametrizations.weight.original0.copy_(init[1].unsqueeze(1))  # g
        scale = cosine_scale(hp, 5)

        def clf(z):
            return scale * lin(z / (z.norm(dim=1, keepdim=True) + 1e-5))
    else:
        lin = nn.Linear(64, 5)
        with torch.no_grad():
            lin.weight.copy_(init[0])
            lin.bias.copy_(init[1])
        clf = lin
    opt = torch.optim.SGD(lin.parameters(), lr=0.01, momentum=0.9, dampening=0.9, weight_decay=0.001)
    for _ in range(hp.finetune_epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, 4):
            idx = perm[i:i + 4]
            opt.zero_grad()
            F.cross_entropy(clf(zs[idx]), ep.support_y[idx]).backward()
            opt.step()
    with torch.no_grad():
        ref = clf(zq)
    torch.testing.assert_close(model.predict(ep), ref, rtol=1e-4, atol=1e-4)
    assert hp.finetune_epochs == 100 and hp.finetune_batch == 4  # 700 updates for 25 support images


def test_cosine_classifier_and_scale_rule():
    torch.manual_seed(0)
    z, v, g = torch.randn(6, 8), torch.randn(3, 8), torch.rand(3) + 0.5
    w = g.unsqueeze(1) * v / v.norm(dim=1, keepdim=True)
    ref = 2.0 * F.normalize(z, dim=1, eps=0) @ w.t()
    torch.testing.assert_close(cosine_logits(z, v, g, 2.0), ref, rtol=1e-4, atol=1e-4)
    # batched form: the same numbers per batch element
    zb, vb, gb = torch.stack([z, z + 1]), torch.stack([v, v * 2]), torch.stack([g, g])
    torch.testing.assert_close(cosine_logits(zb, vb, gb, 2.0)[0], cosine_logits(z, v, g, 2.0))
    hp = BaselinePlusPlus.hyper("paper", methods.Setting("omniglot", 5, 1))
    assert cosine_scale(hp, 5) == cosine_scale(hp, 200) == 2.0 and cosine_scale(hp, 4112) == 10.0
    assert cosine_scale(hp.replace(scale=4.0), 4112) == 4.0


def test_profiles_follow_the_official_code():
    s = methods.Setting("omniglot", 5, 1)
    paper = {ds: Baseline.hyper("paper", methods.Setting(ds, 5, 1)) for ds in ("omniglot", "miniimagenet", "cub")}
    assert [paper[d].pre_epochs for d in ("omniglot", "miniimagenet", "cub")] == [5.0, 400.0, 200.0]
    hp = paper["miniimagenet"]
    assert (hp.pre_batch, hp.pre_lr, hp.finetune_lr, hp.finetune_momentum, hp.finetune_dampening,
            hp.finetune_weight_decay) == (16, 1e-3, 0.01, 0.9, 0.9, 1e-3)
    quick = Baseline.hyper("quick", s)
    assert round(quick.pre_epochs * 82240 / quick.pre_batch) == 8000
    assert Baseline.hyper("smoke", s).finetune_epochs == 100
    assert BaselinePlusPlus.hyper("quick", s) == quick  # the same budget for both heads


def test_resume_equals_uninterrupted(runs, tmp_path):
    """Baseline++ with 4 (no-op) steps, stopped after 1 and resumed, equals the uninterrupted run; the pretraining is
    the cached one of the module's runs (the cache directory is shared)."""
    root, _ = runs
    cfg = _cfg("baseline++", 1, overrides=(("train_steps", 4), ("val_every", 2)))
    full = run(cfg, root, CPU)
    b = tmp_path / "b"
    b.mkdir()
    (b / "cache").symlink_to(root / "cache", target_is_directory=True)
    with pytest.raises(Interrupted):
        run(cfg, b, CPU, stop_after=1)
    assert (b / f"{cfg.run_id}.partial" / "checkpoint.pt").is_file()
    resumed = run(cfg, b, CPU)
    assert resumed["resumed_at_steps"] == [1] and full["resumed_at_steps"] == []
    ea = pd.read_csv(root / cfg.run_id / "test_episodes.csv")["accuracy"]
    eb = pd.read_csv(b / cfg.run_id / "test_episodes.csv")["accuracy"]
    assert ea.tolist() == eb.tolist() and full["mean"] == resumed["mean"]
    assert resumed["cache"] and not any(r["computed_in_this_run"] for r in full["cache"] + resumed["cache"])


def test_groups_names_and_run_ids():
    from benchmark.run import parser

    assert registry.resolve("baselines") == ["baseline", "baseline++"]
    for group in ("all", "variants"):
        assert not {"baseline", "baseline++"} & set(registry.resolve(group))
    assert registry.resolve("all,baselines") == registry.resolve("all") + ["baseline", "baseline++"]
    assert registry.resolve(" Baseline , baseline++ ") == ["baseline", "baseline++"]
    args = parser().parse_args(["--methods", "baseline,baseline++"])
    assert registry.resolve(args.methods) == ["baseline", "baseline++"]
    assert RunConfig("baseline++").run_id == "baseline++-omniglot-5w1s-conv4-quick-s0"
    assert list(registry.registry())[-2:] == ["baseline", "baseline++"]  # the last family
    with pytest.raises(ValueError, match="valid: all, variants, baselines"):
        registry.resolve("baseline+")


def test_report_places_transfer_after_meta_learning_and_finds_published_figures(runs, tmp_path):
    from benchmark.report.build import build_report
    from benchmark.report.records import MethodInfo
    from benchmark.report.reference import load_reference, load_survey, published_figure

    root, _ = runs
    run(RunConfig("protonet", "omniglot", 5, 1, profile="smoke", test_episodes=TEST_EPISODES, val_episodes=5,
                  overrides=(("train_steps", 2), ("val_every", 1))), root, CPU)
    build_report(root, tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    rows = [l for l in md.splitlines() if l.startswith("| metric-based |") or l.startswith("| transfer learning")]
    assert rows and rows[0].startswith("| metric-based |") and "| transfer learning (fine-tuning) |" in md
    board = pd.read_csv(tmp_path / "rep" / "leaderboard.csv")
    assert set(board[board["family"] == "transfer"]["method"]) == {"baseline", "baseline++"}
    ref, survey = load_reference(), load_survey()
    for name, ds, shots, fig in (("baseline", "miniimagenet", 1, 42.11), ("baseline++", "miniimagenet", 5, 66.43),
                                 ("baseline", "cub", 5, 64.16), ("baseline++", "cub", 1, 60.53)):
        info = MethodInfo(name, "transfer", "", "", None, True, None, True, 0)
        pub = published_figure(ref, survey, info, ds, 5, shots)
        assert pub is not None and math.isclose(pub["accuracy"], fig) and "Chen et al." in pub["source"]



def test_a_stopped_pretraining_resumes_to_the_same_backbone(runs, tmp_path, monkeypatch):
    """Baseline's smoke pretraining (100 iterations, Adam), snapshotted every 30 iterations, stopped at iteration 75
    and built again, resumes from its snapshot at 60 and stores the backbone of the module's uninterrupted run bit for
    bit, with the same images counted; the cache's log says where it resumed. (Built as a run builds it, without the
    test episodes: the frozen backbone is the whole result of the pretraining; the runner's message for a stop while
    setting up is tested in test_runner.py.)"""
    import methods.blocks as blocks
    from benchmark.kit.episodes import TrainingSampler
    from benchmark.pipeline import prepare
    from benchmark.pipeline.builder import build_method, method_context

    root, out = runs
    cfg, full = _cfg("baseline", 1), out[("baseline", 1)]
    monkeypatch.setattr(blocks, "SNAPSHOT_EVERY", 30)
    batch, stop = TrainingSampler.batch, [75]

    def stopping(self, index, size, stream="batches"):
        if stream == "baseline-pretrain" and stop and index == stop[0]:
            stop.clear()
            raise KeyboardInterrupt
        return batch(self, index, size, stream)

    monkeypatch.setattr(TrainingSampler, "batch", stopping)
    prepared = prepare(cfg)
    with pytest.raises(KeyboardInterrupt):
        build_method(prepared, method_context(prepared, CPU, tmp_path))
    assert len(list((tmp_path / "cache").glob("baseline-pretrain-*.partial.pt"))) == 1
    ctx = method_context(prepared, CPU, tmp_path)
    build_method(prepared, ctx)
    (a,), (b,) = full["cache"], ctx.cached.log
    assert a["resumed_from"] is None and b["resumed_from"] == 60 and b["file"] == a["file"]
    assert b["images"] == a["images"] == 100 * 16
    sa = torch.load(root / a["file"], weights_only=False)["value"]
    sb = torch.load(tmp_path / b["file"], weights_only=False)["value"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not list((tmp_path / "cache").glob("*.partial.pt"))

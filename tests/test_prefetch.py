"""The background prefetcher (benchmark.pipeline.prefetch): same results with it on or off, errors reach the consumer, and no
thread outlives an early stop."""
import threading
import time

import numpy as np
import pytest
import torch

from benchmark.kit.episodes import EpisodeSet
from benchmark.pipeline import RunConfig, prepare
from benchmark.pipeline.episode_sets import validation_set
from benchmark.pipeline.method_context import make_context
from benchmark.pipeline.prefetch import Prefetcher, default_prefetch, prefetched, transfer
from benchmark.pipeline.training import Checkpointing, Interrupted, Trainer, evaluate, seed_everything

CPU = torch.device("cpu")


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("prefetch") and t.is_alive()]


def train_and_test(cfg: RunConfig, checkpoint, prefetch: int, stop_after=None):
    """What the runner does for a run (build, resume, train, best state, test), with ``prefetch`` given to the
    trainer and the test evaluation. Returns (test accuracies, curve) or raises Interrupted."""
    prepared = prepare(cfg)
    test_set = EpisodeSet(prepared.dataset, "test", cfg.ways, cfg.shots, cfg.queries, cfg.eval_seed, cfg.n_test,
                          stream="test")
    seed_everything(cfg.seed)
    ctx = make_context(prepared, CPU)
    method = prepared.cls(prepared.hp, ctx).to(CPU)
    trainer = Trainer(method, prepared.hp, ctx, validation_set(prepared), Checkpointing(checkpoint), prefetch=prefetch)
    trainer.resume()
    trainer.train(stop_after=stop_after)
    trainer.restore_best()
    acc, _ = evaluate(method, test_set, CPU, prefetch=prefetch)
    return acc, trainer.state["curve"]


SMOKE = {
    "protonet": (("train_steps", 8), ("val_every", 4), ("train_ways", 5), ("train_queries", 5)),
    "maml": (("train_steps", 6), ("val_every", 3), ("meta_batch", 2)),
}


@pytest.mark.parametrize("name", ["protonet", "maml"])
def test_prefetching_changes_no_result_nor_resume(omniglot, tmp_path, name):
    cfg = RunConfig(name, "omniglot", 5, 1, profile="smoke", test_episodes=12, val_episodes=6, overrides=SMOKE[name])
    acc0, curve0 = train_and_test(cfg, tmp_path / "off.pt", prefetch=0)
    acc2, curve2 = train_and_test(cfg, tmp_path / "on.pt", prefetch=2)
    np.testing.assert_array_equal(acc0, acc2)
    drop = ("train_seconds",)  # timings differ, nothing else may
    assert [{k: v for k, v in r.items() if k not in drop} for r in curve0] == \
           [{k: v for k, v in r.items() if k not in drop} for r in curve2]
    assert len(curve0) == 2 and acc0.mean() > 0.2  # it trained and was tested
    # stopped mid-way between validations, resumed with prefetching on: the uninterrupted result
    with pytest.raises(Interrupted):
        train_and_test(cfg, tmp_path / "resumed.pt", prefetch=2, stop_after=SMOKE[name][1][1] + 1)
    assert not prefetch_threads()
    acc_r, curve_r = train_and_test(cfg, tmp_path / "resumed.pt", prefetch=3)
    np.testing.assert_array_equal(acc0, acc_r)
    assert [r["val_acc"] for r in curve_r] == [r["val_acc"] for r in curve0]
    assert [r["train_loss"] for r in curve_r] == [r["train_loss"] for r in curve0]


def test_items_come_in_index_order_and_are_the_items(omniglot):
    def f(i, dev):
        time.sleep(0.01 * (i % 3))  # uneven production times
        return {"i": i, "x": torch.full((2,), float(i), device=dev)}

    with Prefetcher(f, range(5, 15), depth=3, device=CPU) as items:
        got = [items.get(i) for i in range(5, 15)]
        with pytest.raises(StopIteration):
            items.get()
    assert [g["i"] for g in got] == list(range(5, 15))
    assert all(float(g["x"][0]) == g["i"] for g in got)
    assert not prefetch_threads()
    with prefetched(f, range(3), 0, CPU) as inline:  # depth 0: no thread, same items
        assert [g["i"] for g in inline] == [0, 1, 2] and not prefetch_threads()


def test_a_producer_exception_reaches_the_consumer():
    def f(i, dev):
        if i == 3:
            raise ValueError("bad episode 3")
        return torch.tensor([i])

    seen = []
    with pytest.raises(ValueError, match="bad episode 3"):
        with Prefetcher(f, range(10), depth=2, device=CPU) as items:
            for x in items:
                seen.append(int(x))
    assert seen == [0, 1, 2] and not prefetch_threads()


def test_stopping_early_leaves_no_thread():
    produced = []

    def f(i, dev):
        produced.append(i)
        return torch.zeros(3)

    with Prefetcher(f, range(1000), depth=2, device=CPU) as items:
        items.get(0)
        time.sleep(0.2)  # the producer fills the queue and blocks on it
    assert not prefetch_threads()
    assert len(produced) <= 5  # bounded: depth 2 ahead of one consumed item (+1 in hand)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C in the consumer
        with Prefetcher(f, range(1000), depth=2, device=CPU) as items:
            items.get(0)
            raise KeyboardInterrupt
    assert not prefetch_threads()


def test_ctrl_c_in_a_training_step_stops_the_prefetcher(omniglot, tmp_path):
    cfg = RunConfig("protonet", "omniglot", 5, 1, profile="smoke", val_episodes=3, overrides=SMOKE["protonet"])
    prepared = prepare(cfg)
    ctx = make_context(prepared, CPU)
    method = prepared.cls(prepared.hp, ctx)
    real = method.train_step

    def step(episodes, s):
        if s == 2:
            raise KeyboardInterrupt
        return real(episodes, s)

    method.train_step = step
    trainer = Trainer(method, prepared.hp, ctx, validation_set(prepared), Checkpointing(tmp_path / "ck.pt"), prefetch=2)
    with pytest.raises(Interrupted, match="interrupted at step 2"):
        trainer.train()
    assert (tmp_path / "ck.pt").is_file() and not prefetch_threads()


def test_transfer_and_default_depth(omniglot):
    ep = EpisodeSet(omniglot, "test", 5, 1, 2, 0, 1, stream="test")[0]
    assert transfer(ep, CPU) is ep  # already there: unchanged
    moved = transfer([ep, (ep.support_x, 3)], torch.device("meta"))
    assert moved[0].support_x.device.type == "meta" and moved[0].classes is ep.classes
    assert moved[1][0].device.type == "meta" and moved[1][1] == 3
    assert default_prefetch(CPU) == 0 and default_prefetch("cuda:0") == 2
    with pytest.raises(ValueError):
        Prefetcher(lambda i, d: i, range(2), depth=0, device=CPU)

"""python -m benchmark.speed: milliseconds per training episode and per test episode for any registered method.

Builds the method as a run would (profile hyperparameters, --set overrides), then times ``train_step`` on training
episodes of the shape given here (default: the test setting, 5-way, 15 queries per class) and ``predict`` on test
episodes, after warm-up steps. Reports the median and mean over the timed steps, per episode (per task: a step on a
meta-batch of B episodes counts B), and peak memory. Timings are for reading, never asserted by the tests.

Example: python -m benchmark.speed --method protonet --shots 1 5 --train-ways 5 --train-queries 15
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def measure(method: str, dataset: str = "omniglot", ways: int = 5, shots: int = 1, queries: int = 15,
            backbone: str = "conv4", profile: str = "quick", device: str = "cpu", train_ways: int | None = None,
            train_shots: int | None = None, train_queries: int | None = None, meta_batch: int | None = None,
            steps: int = 20, warmup: int = 3, test_episodes: int = 20, overrides=(), data_dir=None) -> dict:
    import methods

    from .episodes import EpisodeSet, TaskSampler
    from .config import RunConfig, prepare
    from .machine import PeakMemory, environment, resolve_device
    from .training import seed_everything

    dev = resolve_device(device)
    cfg = RunConfig(method=method, dataset=dataset, ways=ways, shots=shots, backbone=backbone, profile=profile,
                    queries=queries, overrides=tuple(overrides))
    p = prepare(cfg, data_dir)
    cls, ds, setting, hp = p.cls, p.dataset, p.setting, p.hp
    changes = {k: v for k, v in (("train_ways", train_ways), ("train_shots", train_shots),
                                 ("train_queries", train_queries), ("meta_batch", meta_batch)) if v is not None}
    hp = hp.replace(**changes)
    seed_everything(0)
    sampler = TaskSampler(ds, "train", 0)
    val = EpisodeSet(ds, "val", ways, shots, queries, 0, 5, stream="val")
    ctx = methods.Context(setting=setting, image_shape=ds.image_shape, backbone_name=backbone, sampler=sampler,
                          val_episodes=val, device=dev, seed=0, profile=profile)
    with PeakMemory(dev) as mem:
        m = cls(hp, ctx).to(dev)
        tw, ts, tq = m.train_shape()
        times = []
        for step in range(warmup + steps):
            eps = [sampler.episode(step * hp.meta_batch + j, tw, ts, tq).to(dev) for j in range(hp.meta_batch)]
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            out = m.train_step(eps, step)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if step >= warmup:
                times.append((time.perf_counter() - t0) / int(out.get("tasks", len(eps))))
        test = EpisodeSet(ds, "test", ways, shots, queries, 0, test_episodes + warmup, stream="test")
        ttimes = []
        for i in range(len(test)):
            ep = test[i].to(dev)
            t0 = time.perf_counter()
            with torch.set_grad_enabled(m.adapts_at_test):
                m.predict(ep)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= warmup:
                ttimes.append(time.perf_counter() - t0)
    return {
        "method": method, "dataset": dataset, "ways": ways, "shots": shots, "backbone": backbone,
        "train_episode": [tw, ts, tq], "meta_batch": hp.meta_batch, "device": str(dev),
        "threads": torch.get_num_threads(),
        "ms_per_train_episode_median": 1000 * statistics.median(times),
        "ms_per_train_episode_mean": 1000 * statistics.fmean(times),
        "ms_per_test_episode_median": 1000 * statistics.median(ttimes),
        "peak_memory_mb": round(mem.mb, 1), "device_name": environment(dev)["device_name"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", nargs="+", default=["protonet"], help="method names (or 'all')")
    p.add_argument("--dataset", default="omniglot")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, nargs="+", default=[1])
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--backbone", default="conv4")
    p.add_argument("--profile", default="quick")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--train-ways", type=int, default=None, help="default: the method's profile value")
    p.add_argument("--train-shots", type=int, default=None)
    p.add_argument("--train-queries", type=int, default=None)
    p.add_argument("--meta-batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=20, help="timed training steps (after 3 warm-up steps)")
    p.add_argument("--test-episodes", type=int, default=20)
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    p.add_argument("--json", action="store_true", help="print one JSON object per measurement")
    args = p.parse_args(argv)

    import methods

    from .perf import tune_cpu
    from .config import parse_overrides

    tune_cpu()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        names = methods.resolve(",".join(args.method))
        overrides = parse_overrides(args.set)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name in names:
        for shots in args.shots:
            r = measure(name, args.dataset, args.ways, shots, args.queries, args.backbone, args.profile,
                        args.device, args.train_ways, args.train_shots, args.train_queries, args.meta_batch,
                        args.steps, 3, args.test_episodes, overrides, args.data_dir)
            if args.json:
                print(json.dumps(r))
            else:
                print(f"{name:14s} {args.ways}w{shots}s train episode {r['train_episode']} x{r['meta_batch']}: "
                      f"{r['ms_per_train_episode_median']:.1f} ms/episode (mean {r['ms_per_train_episode_mean']:.1f}),"
                      f" test {r['ms_per_test_episode_median']:.1f} ms/episode, peak {r['peak_memory_mb']:.0f} MB "
                      f"[{r['device']}, {r['threads']} threads]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m benchmark.speed: milliseconds per training episode and per test episode for any registered method.

Builds the method as a run would (profile hyperparameters, --set overrides, the runner's context factory with its
artefact cache under --results-dir, so e.g. MTL's pretraining is computed once and shared with runs), then times
``train_step`` on training episodes of the shape given here (default: the test setting, 5-way, 15 queries per class)
and the evaluation of test episodes, one at a time (``--eval-group 0``: in the method's groups, as runs do), after
warm-up steps, with the runner's own timed step and evaluation loop (:mod:`benchmark.pipeline.training`). Reports the median
and mean over the timed steps, per episode (per task: a step on a meta-batch of B episodes counts B), and peak memory.
Timings are for reading, never asserted by the tests. Bad input prints one line on stderr and exits with code 2
before anything is measured.

Example: python -m benchmark.speed --method protonet --shots 1 5 --train-ways 5 --train-queries 15
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .cli.toolkit import Parser, UsageError, at_least, usage_errors

if TYPE_CHECKING:
    from .pipeline.config import PreparedRun


def prepare_measurement(method: str, dataset: str = "omniglot", ways: int = 5, shots: int = 1, queries: int = 15,
                        backbone: str = "conv4", profile: str = "quick", train_ways: int | None = None,
                        train_shots: int | None = None, train_queries: int | None = None,
                        meta_batch: int | None = None, overrides=(), data_dir=None) -> PreparedRun:
    """The run a measurement builds its method from: seed 0, 5 validation episodes, the profile's hyperparameters
    with ``overrides`` and then the training shape given here; ValueError/DataError on bad input."""
    from .pipeline import prepare
    from .pipeline.config import RunConfig

    shape = {k: v for k, v in (("train_ways", train_ways), ("train_shots", train_shots),
                               ("train_queries", train_queries), ("meta_batch", meta_batch)) if v is not None}
    cfg = RunConfig(method=method, dataset=dataset, ways=ways, shots=shots, backbone=backbone, profile=profile,
                    queries=queries, val_episodes=5, overrides=tuple(overrides) + tuple(shape.items()))
    return prepare(cfg, data_dir, positive=True)


def time_run(prepared: PreparedRun, device: str = "cpu", steps: int = 20, warmup: int = 3, test_episodes: int = 20,
             results_dir: str | Path | None = "results", eval_group: int = 1, precision: str = "fp32",
             prefetch: int = 0, compile: bool = False, flops: bool = False, capture: bool = False) -> dict:
    """Time ``steps`` training steps and ``test_episodes`` test episodes (after ``warmup`` of each) of
    ``prepared``'s method, built as a run builds it (:mod:`benchmark.pipeline.builder`), with
    :func:`~benchmark.pipeline.steps.timed_step` and :func:`~benchmark.pipeline.steps.evaluate` (:func:`time_steps`,
    :func:`time_test`); artefacts are cached under ``results_dir`` as in runs (None: computed, not cached).
    ``eval_group``: test episodes per ``predict_many`` call (1: one at a time; 0: the method's ``eval_group``, as runs
    do). ``precision``: "fp32" or "bf16" (autocast, :func:`~benchmark.pipeline.steps.autocast`). ``prefetch``:
    meta-batches drawn ahead by the training loop's prefetcher (:mod:`benchmark.pipeline.prefetch`; 0: drawn when
    needed, as in the loop without it). ``compile``: :func:`~benchmark.pipeline.steps.compile_method` first (its
    compilation falls in the warm-up steps); ``capture``: compiled with mode reduce-overhead instead (CUDA graphs,
    ``--capture``). ``flops``: also count the floating-point operations of one more training step (forward and
    backward, ``torch.utils.flop_counter``, run eagerly), per training episode (``flops_per_train_episode``,
    :func:`step_flops`). Each step is handed the meta-batch a run hands it
    (:class:`~benchmark.pipeline.steps.MetaBatches`: ``meta_batch`` in the result, 0 for a method that meta-trains
    on no episode, e.g. the transfer baselines, whose figures per training episode are then per step, as a run's
    ``ms_per_train_episode`` is). ``dynamo``: Dynamo's frames compiled during the measurement (0: nothing was
    compiled, whatever was asked)."""
    import torch

    from .pipeline.builder import build_method, method_context
    from .pipeline.machine import PeakMemory, environment, resolve_device, use_device
    from .pipeline.steps import MetaBatches, count_difference, dynamo_counts

    dev, cfg = resolve_device(device), prepared.cfg
    use_device(dev)
    dynamo_before = dynamo_counts()
    ctx = method_context(prepared, dev, results_dir)
    with PeakMemory(dev) as mem:
        m, compiled = build_method(prepared, ctx, compile, capture)
        meta = MetaBatches.of(m, prepared.hp)  # what a run hands each step
        times, walls = time_steps(m, ctx.sampler, meta, dev, steps, warmup, precision, prefetch)
        counted = step_flops(m, ctx.sampler, meta.draw(ctx.sampler, warmup + steps, dev), warmup + steps, dev,
                             precision) if flops else None
        measured_group, ttimes = time_test(m, prepared, dev, test_episodes, warmup, eval_group, precision, prefetch)
    return {
        "method": cfg.method, "dataset": cfg.dataset, "ways": cfg.ways, "shots": cfg.shots, "backbone": cfg.backbone,
        "train_episode": list(meta.shape), "meta_batch": meta.size, "device": str(dev),
        "threads": torch.get_num_threads(), **({"precision": precision} if precision != "fp32" else {}),
        "prefetch": prefetch, "compiled": compiled, "capture": bool(capture and compiled),
        "dynamo": count_difference(dynamo_before, dynamo_counts()), "eval_group": measured_group,
        "ms_per_train_episode_median": 1000 * statistics.median(times),
        "ms_per_train_episode_mean": 1000 * statistics.fmean(times),
        "ms_per_train_episode_wall_median": 1000 * statistics.median(walls),
        "ms_per_test_episode_median": 1000 * statistics.median(ttimes), "flops_per_train_episode": counted,
        "peak_memory_mb": round(mem.mb, 1), "device_name": environment(dev)["device_name"],
    }


def time_steps(method, sampler, meta, device, steps: int, warmup: int, precision: str = "fp32",
               prefetch: int = 0) -> tuple[list[float], list[float]]:
    """Seconds per training episode of ``steps`` training steps after ``warmup`` untimed ones, each handed its
    meta-batch (``meta``: :class:`~benchmark.pipeline.steps.MetaBatches`, drawn ``prefetch`` ahead): the step's own
    time (:func:`~benchmark.pipeline.steps.counted_step`) and the wall clock from one step's end to the next, which
    also holds drawing the meta-batch and moving it to the device, or waiting for the prefetcher (what prefetching
    saves shows there). A step is divided by the training episodes it consumed (at least 1)."""
    import time

    from .pipeline.prefetch import prefetched
    from .pipeline.steps import counted_step

    times, walls = [], []
    indices = range(warmup + steps)
    with prefetched(lambda i, d: meta.draw(sampler, i, d), indices, prefetch, device) as batches:
        t_end = time.perf_counter()
        for step in indices:
            r, _ = counted_step(method, sampler, batches.get(step), step, device, precision)
            t_prev, t_end = t_end, time.perf_counter()
            if step >= warmup:
                times.append(r.seconds / max(r.tasks, 1))
                walls.append((t_end - t_prev) / max(r.tasks, 1))
    return times, walls


def time_test(method, prepared: PreparedRun, device, test_episodes: int, warmup: int, eval_group: int = 1,
              precision: str = "fp32", prefetch: int = 0) -> tuple[int, list[float]]:
    """(the evaluation group measured, seconds per test episode of ``test_episodes`` test episodes): groups of
    ``eval_group`` (0: the method's, as runs evaluate). The warm-up evaluates at least ``warmup`` episodes and a
    whole group of the measured size, so the measured groups meet no shape the warm-up did not."""
    from .pipeline.episode_sets import test_set
    from .pipeline.execution import group_size
    from .pipeline.steps import evaluate

    group = eval_group or None  # 0: as runs evaluate (group_size picks for the method and the device)
    measured_group = group_size(method, test_set(prepared, 1), group, device)
    warm = max(warmup, measured_group)  # the warm-up meets the measured groups' shapes
    test = test_set(prepared, test_episodes + warm)
    evaluate(method, [test[i] for i in range(warm)], device, group=group, precision=precision)  # warm-up
    _, ttimes = evaluate(method, [test[i] for i in range(warm, len(test))], device, group=group, precision=precision,
                         prefetch=prefetch)
    return measured_group, ttimes


def step_flops(method, sampler, episodes, step: int, device, precision: str = "fp32") -> float | None:
    """Floating-point operations of one training step on ``episodes`` (forward and backward), per training episode
    the step consumed, counted as the runs count them (:func:`~benchmark.pipeline.steps.counted_step` with
    ``count_flops``: the meta-batch plus the episodes the method drew through its counting ``sampler``); None when
    the counter cannot follow the step (it then trains as usual) or the step consumed no training episode (a method
    that meta-trains on none, whose runs record no ``flops_per_train_episode`` either)."""
    from .pipeline.steps import counted_step

    try:
        r, _ = counted_step(method, sampler, episodes, step, device, precision, count_flops=True)
    except Exception:  # noqa: BLE001 - a method whose step the counter cannot trace is measured without FLOPs
        return None
    return r.flops / r.tasks if r.flops is not None and r.tasks else None


#: overrides of a ``paper``-profile measurement that shorten what a step's cost does not depend on: MTL's 100
#: pretraining epochs (a meta-step costs the same for a better-pretrained encoder), and the one validation of the
#: shortened pretraining (``pre_val_every`` is 1 epoch, so it validates once, at its end, and keeps that only
#: checkpoint whatever it scores: 2 validation episodes instead of 600 give the same encoder; the 600, with 100
#: fine-tuning steps each, took 18 of the 23 s of an MTL measurement on 1 CPU thread)
PAPER_MEASUREMENT_OVERRIDES: dict[str, tuple] = {"mtl": (("pre_epochs", 0.05), ("pre_val_episodes", 2))}


def paper_projection(prepared: PreparedRun, r: dict) -> dict:
    """The projected cost of ``prepared``'s method under the ``paper`` profile from a :func:`time_run` result ``r``
    (best measured at the paper profile's training shape): its paper training episodes or tasks
    (``Method.paper_train_episodes``) x the median ms per training episode, and the run's test episodes x the median
    ms per test episode (the profile's 600), in hours. Left out: validation passes and pretraining (MTL's, the transfer baselines')."""
    episodes = prepared.cls.paper_train_episodes(prepared.setting)
    return {"paper_train_episodes": episodes,
            "projected_train_hours": episodes * r["ms_per_train_episode_median"] / 3.6e6,
            "projected_test_hours": prepared.cfg.n_test * r["ms_per_test_episode_median"] / 3.6e6}


def sampler_rate(prepared: PreparedRun, device: str = "cpu", episodes: int = 200, warmup: int = 10) -> dict:
    """Training episodes per second the sampler produces for ``prepared``'s training episode shape (``train_ways``,
    ``train_shots``, ``train_queries`` of its hyperparameters, else the test setting's), in this thread: drawing the
    indices, gathering and normalising the pixels (from RAM, or read from disk for datasets whose pixels stay there)
    and moving the episode to ``device``. No method is built."""
    import time

    from .kit.context import train_episode_shape
    from .kit.episodes import TaskSampler
    from .pipeline.machine import resolve_device
    from .pipeline.steps import synchronize

    dev, cfg = resolve_device(device), prepared.cfg
    ways, shots, queries = train_episode_shape(prepared.hp, prepared.setting)
    sampler = TaskSampler(prepared.dataset, "train", cfg.seed)
    for i in range(warmup):
        sampler.episode(i, ways, shots, queries).to(dev)
    times = []
    for i in range(warmup, warmup + episodes):
        t0 = time.perf_counter()
        ep = sampler.episode(i, ways, shots, queries).to(dev)
        synchronize(dev)
        times.append(time.perf_counter() - t0)
    image = ep.support_x.shape[1:]
    return {"dataset": cfg.dataset, "episode": [ways, shots, queries], "image": list(image),
            "images_per_episode": ways * (shots + queries), "device": str(dev),
            "episodes_per_second": len(times) / sum(times), "ms_per_episode_median": 1000 * statistics.median(times)}


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m benchmark.speed", description=__doc__,
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
    p.add_argument("--eval-group", type=int, default=1, help="test episodes per predict_many call; default 1 (one "
                   "at a time); 0: the method's own group, as runs evaluate")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="fp32 (default) or bf16 "
                   "(autocast of the training step and the evaluation)")
    p.add_argument("--prefetch", type=int, default=0, help="meta-batches drawn ahead by a background thread "
                   "(0: none, the default); the wall clock per training episode shows what it saves")
    p.add_argument("--compile", action="store_true", help="torch.compile the method's compilable modules first "
                   "(compilation falls in the 3 warm-up steps)")
    p.add_argument("--capture", action="store_true", help="CUDA: compile them with mode reduce-overhead instead, so "
                   "that their passes replay as captured CUDA graphs (as benchmark.run --capture); refused on the CPU")
    p.add_argument("--no-deterministic", action="store_true", help="CUDA: let cuDNN pick fast, possibly "
                   "non-deterministic kernels (as benchmark.run --no-deterministic); by default a CUDA measurement "
                   "runs under the runs' determinism settings")
    p.add_argument("--sampler", action="store_true", help="measure only the sampler: training episodes per second "
                   "of each method's training episode shape (--train-ways etc. apply), drawn and moved to --device")
    p.add_argument("--results-dir", default="results", help="where shared artefacts are cached (cache/), as runs "
                   "cache them; default: results")
    p.add_argument("--json", action="store_true", help="print one JSON object per measurement")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return usage_errors(lambda: _main(args))


def _main(args) -> int:
    from .data import DataError
    from .pipeline import registry
    from .pipeline.config import parse_overrides
    from .pipeline.machine import configure_determinism, setup_torch  # torch: after the arguments are read

    device = setup_torch(args.device, args.threads)
    if args.capture and device.type != "cuda":
        raise UsageError(f"--capture records CUDA graphs and needs --device cuda (this is {device})")
    determinism = configure_determinism(device, not args.no_deterministic)  # as the runs have it (CPU: nothing)
    at_least("--steps", args.steps)
    at_least("--test-episodes", args.test_episodes)
    at_least("--eval-group", args.eval_group, low=0)
    at_least("--prefetch", args.prefetch, low=0)
    try:
        overrides = parse_overrides(args.set)
        runs = [prepare_measurement(name, args.dataset, args.ways, shots, args.queries, args.backbone, args.profile,
                                    args.train_ways, args.train_shots, args.train_queries, args.meta_batch,
                                    overrides, args.data_dir)
                for name in registry.resolve(",".join(args.method)) for shots in args.shots]
    except (ValueError, DataError) as e:
        raise UsageError(str(e)) from None
    for prepared in runs:
        name, shots = prepared.cfg.method, prepared.cfg.shots
        if args.sampler:
            r = sampler_rate(prepared, args.device, max(args.steps, 1) * 10)
            print(json.dumps(r) if args.json else
                  f"{name:14s} sampler {args.dataset} {'x'.join(map(str, r['image']))}, episode {r['episode']} "
                  f"({r['images_per_episode']} images): {r['episodes_per_second']:.1f} episodes/s "
                  f"(median {r['ms_per_episode_median']:.2f} ms) [{r['device']}]", flush=True)
            continue
        r = time_run(prepared, args.device, args.steps, 3, args.test_episodes, args.results_dir, args.eval_group,
                     args.precision, args.prefetch, args.compile, capture=args.capture)
        r["determinism"] = determinism
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{name:14s} {args.ways}w{shots}s train episode {r['train_episode']} x{r['meta_batch']}: "
                  f"{r['ms_per_train_episode_median']:.1f} ms/episode (mean {r['ms_per_train_episode_mean']:.1f}, "
                  f"wall {r['ms_per_train_episode_wall_median']:.1f}),"
                  f" test {r['ms_per_test_episode_median']:.1f} ms/episode, peak {r['peak_memory_mb']:.0f} MB "
                  f"[{r['device']}, {r['threads']} threads]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The GPU paths of the training loop and the data path, exercised on the CPU (issue 28, items 1-3).

1. Resume loads a checkpoint on the host whatever the run's device (a run on a non-CPU device is simulated with the
   "meta" device, onto which the old ``map_location=device`` moved the RNG states, as CUDA did).
2. Deferred step accounting (CUDA's default: no host synchronisation per step; metrics, step times and the
   non-finite check read at each validation and checkpoint), forced on the CPU: the same curve, metrics, results and
   first non-finite step as the eager path.
3. Episodes gathered from a device-resident copy of the dataset (CUDA's default when it fits), forced on the CPU:
   bit-identical episodes and fingerprints to the host path.
"""
import math

import numpy as np
import pandas as pd
import pytest
import torch

import benchmark.pipeline.training as training
from benchmark.pipeline import Interrupted, RunConfig, RunFailed, run
from benchmark.pipeline.method_context import ArtefactCache

CPU = torch.device("cpu")
META = torch.device("meta")  # a device that is not the CPU, on every machine


# ------------------------------------------------------------------------------------------------ 1. resume
def test_resume_loads_the_checkpoint_on_the_host_whatever_the_device(tmp_path, monkeypatch, smoke_run):
    """Resume as on a GPU: the trainer's device is not the CPU while it loads its checkpoint. The old code loaded
    with ``map_location=self.device`` and ``torch.set_rng_state`` refused the moved state ("RNG state must be a
    torch.ByteTensor"); now the checkpoint is loaded on the host and the resumed run equals the uninterrupted one."""
    over = (("train_steps", 8), ("val_every", 4), ("train_ways", 5), ("train_queries", 5))
    cfg = RunConfig("protonet", "omniglot", 5, 1, profile="smoke", test_episodes=10, val_episodes=5, overrides=over)
    full = smoke_run(cfg)
    with pytest.raises(Interrupted):
        run(cfg, tmp_path / "b", CPU, stop_after=6)
    original = training.Trainer.resume
    seen = []

    def resume_on_another_device(self):
        real, self.device = self.device, META
        try:
            original(self)
        finally:
            self.device = real
        seen.append(self.state["step"])

    monkeypatch.setattr(training.Trainer, "resume", resume_on_another_device)
    resumed = run(cfg, tmp_path / "b", CPU)
    assert seen == [6] and resumed["resumed_at_steps"] == [6]
    eb = pd.read_csv(tmp_path / "b" / cfg.run_id / "test_episodes.csv")["accuracy"]
    assert full.episodes() == eb.tolist() and full.summary["mean"] == resumed["mean"]


def test_cached_artefacts_are_read_back_on_the_host(tmp_path):
    cache = ArtefactCache(tmp_path, "fingerprint", "conv4", 0, META)
    make = lambda: {"rng": torch.get_rng_state(), "w": torch.ones(2)}  # noqa: E731
    first = cache("thing", {"k": 1}, make)
    again = cache("thing", {"k": 1}, make)  # read from its file
    assert [e["computed_in_this_run"] for e in cache.log] == [True, False]
    assert again["rng"].device == CPU and again["w"].device == CPU
    assert torch.equal(again["rng"], first["rng"])


# ------------------------------------------------------------------------------------------------ 2. deferred steps
OVER = (("train_steps", 8), ("val_every", 4), ("train_ways", 5), ("train_queries", 5))


def deferred(monkeypatch, on: bool) -> None:
    """Force the trainer's mode as the runner builds it: deferred (CUDA's default) or eager (the CPU's)."""
    monkeypatch.setattr(training, "sync_every_step_default", lambda device: not on)


def records(results, cfg):
    d = results / cfg.run_id
    curve = pd.read_csv(d / "curve.csv").drop(columns=["train_seconds"])  # timings differ, nothing else may
    return curve, pd.read_csv(d / "test_episodes.csv")["accuracy"].tolist()


def test_deferred_steps_give_the_eager_curve_metrics_results_and_resume(tmp_path, monkeypatch, smoke_run):
    cfg = RunConfig("protonet", "omniglot", 5, 1, profile="smoke", test_episodes=10, val_episodes=5, overrides=OVER)
    shared = smoke_run(cfg)  # eager: the CPU's default
    eager = shared.summary
    deferred(monkeypatch, True)
    late = run(cfg, tmp_path / "deferred", CPU)
    with pytest.raises(Interrupted):  # stopped between two validations: the pending steps go into the checkpoint
        run(cfg, tmp_path / "resumed", CPU, stop_after=6)
    ck = torch.load(tmp_path / "resumed" / f"{cfg.run_id}.partial" / "checkpoint.pt", weights_only=False)
    assert ck["state"]["metric_count"] == 2 and ck["state"]["episodes"] == 6  # meta-batches of 1
    resumed = run(cfg, tmp_path / "resumed", CPU)
    c0, a0 = records(shared.results, cfg)
    assert list(c0["step"]) == [4, 8] and {"train_loss", "train_acc"} <= set(c0.columns)
    for name in ("deferred", "resumed"):
        c, a = records(tmp_path / name, cfg)
        pd.testing.assert_frame_equal(c, c0, check_exact=True)
        assert a == a0
    assert eager["mean"] == late["mean"] == resumed["mean"] and late["train_episodes"] == eager["train_episodes"]
    assert eager["execution"]["sync_every_step"] is True and late["execution"]["sync_every_step"] is False
    assert late["train_seconds"] > 0


def break_protonet(monkeypatch, nan_at: int | None, raise_at: int | None = None, as_tensors: bool = False):
    """ProtoNet whose loss is NaN at step index ``nan_at`` (0-based), which raises at ``raise_at``, and whose
    metrics are scalar tensors when ``as_tensors`` (float64: the same numbers as the floats)."""
    import methods.protonet as protonet

    original = protonet.ProtoNet.train_step

    def broken(self, episodes, step):
        out = original(self, episodes, step)
        if step == nan_at:
            out["loss"] = math.nan
        if step == raise_at:
            raise RuntimeError(f"boom in step {step}")
        if as_tensors:
            out = {k: v if k == "tasks" else torch.tensor(v, dtype=torch.float64) for k, v in out.items()}
        return out

    monkeypatch.setattr(protonet.ProtoNet, "train_step", broken)


@pytest.mark.parametrize("as_tensors,raise_at,stop_after", [(False, None, None), (True, 5, None), (True, None, 5)])
def test_deferred_steps_fail_at_the_first_non_finite_step_keeping_the_last_good_checkpoint(
        tmp_path, monkeypatch, as_tensors, raise_at, stop_after):
    """NaN at the 4th step (validations after steps 3 and 6): eager stops there; deferred finds it at the next
    validation (or at the checkpoint of an interruption, or when a later step raises) and records the same failure:
    step 4, its metrics, the curve point of step 3, and the checkpoint of step 3 untouched."""
    over = (("train_steps", 6), ("val_every", 3), ("train_ways", 5), ("train_queries", 5))
    cfg = RunConfig("protonet", "omniglot", 5, 1, profile="smoke", test_episodes=10, val_episodes=5, overrides=over)
    break_protonet(monkeypatch, nan_at=3, raise_at=raise_at, as_tensors=as_tensors)
    seen = {}
    for mode in (False, True):
        deferred(monkeypatch, mode)
        with pytest.raises(RunFailed) as e:
            run(cfg, tmp_path / str(mode), CPU, stop_after=stop_after)
        ck = torch.load(tmp_path / str(mode) / f"{cfg.run_id}.partial" / "checkpoint.pt", weights_only=False)
        rec = {k: v for k, v in e.value.record.items() if k != "failed_at"}
        rec["last_curve_point"].pop("train_seconds")  # timings differ, nothing else may
        seen[mode] = (rec, ck)
    (eager, ck0), (late, ck1) = seen[False], seen[True]
    assert eager["kind"] == "non_finite_loss" and eager["step"] == 4 and eager["metrics"]["loss"] == "nan"
    assert eager["last_curve_point"]["step"] == 3
    assert late == eager
    drop = lambda curve: [{k: v for k, v in r.items() if k != "train_seconds"} for r in curve]  # noqa: E731
    assert ck1["state"]["step"] == ck0["state"]["step"] == 3
    assert drop(ck1["state"]["curve"]) == drop(ck0["state"]["curve"])
    for k, v in ck0["method"]["module"].items():
        assert torch.equal(v, ck1["method"]["module"][k]), k


def test_host_values_reads_tensors_as_floats_in_order():
    steps = [{"loss": torch.tensor(0.1), "acc": 0.5}, {"loss": torch.tensor(float("nan")), "n": torch.tensor(3)},
             {"loss": torch.tensor(0.25, dtype=torch.float64)}]
    got = training._host_values(steps)
    assert got[0] == {"loss": float(torch.tensor(0.1)), "acc": 0.5} and math.isnan(got[1]["loss"])
    assert got[1]["n"] == 3 and got[2] == {"loss": 0.25}
    assert training.non_finite(got[1]) and not training.non_finite(got[0])


# ------------------------------------------------------------------------------------------------ 3. device episodes
def same_episode(a, b) -> None:
    assert a.digest() == b.digest() and a.index == b.index
    for name in ("support_x", "support_y", "query_x", "query_y"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and x.is_contiguous() == y.is_contiguous(), name
        assert torch.equal(x, y), name  # bit-identical


@pytest.mark.parametrize("shots", [1, 5])
def test_device_gathered_episodes_are_the_host_episodes(omniglot, shots):
    from benchmark.kit.episodes import EpisodeSet, TaskSampler

    images = omniglot.to_device(CPU)  # the device path, forced on the CPU
    assert images.images.dtype == torch.uint8 and tuple(images.images.shape) == omniglot.images.shape
    for split in ("train", "val", "test"):
        host = EpisodeSet(omniglot, split, 5, shots, 3, 0, 4, stream=split)
        dev = host.gathered_by(images)
        assert dev.fingerprint == host.fingerprint and dev.images is images and host.images is None
        for i in range(len(host)):
            same_episode(host[i], dev[i])
    a, b = TaskSampler(omniglot, "train", 3), TaskSampler(omniglot, "train", 3, images)
    for i in range(3):
        same_episode(a.episode(i, 20, shots, 2), b.episode(i, 20, shots, 2))
    same_episode(a.episode(7, 5, shots, 2, stream="x", classes=[4, 1, 9, 2, 0]),
                 b.episode(7, 5, shots, 2, stream="x", classes=[4, 1, 9, 2, 0]))
    (xa, ya), (xb, yb) = a.batch(2, 64), b.batch(2, 64)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and ya.dtype == yb.dtype


def test_device_gathered_images_with_channels_rotations_and_normalisation():
    """RGB pixels normalised by a mean and std that do not round evenly, every rotation: the table gives the host
    path's float of every byte, bit for bit."""
    from benchmark.data import FewShotDataset, Split

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(40, 6, 6, 3), dtype=np.uint8)
    pixels[0] = np.arange(6 * 6 * 3).reshape(6, 6, 3) % 256
    pixels[1] = 255 - pixels[0]
    members = [np.arange(10 * c, 10 * c + 10) for c in range(4)]
    split = Split([f"c{c}" for c in range(4)], members, np.array([0, 1, 2, 3]))
    ds = FewShotDataset("rgb", pixels, {"train": split}, mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.2435, 0.2616))
    classes, samples = np.repeat(np.arange(4), 10), np.tile(np.arange(10), 4)
    host, dev = ds.tensor("train", classes, samples), ds.to_device(CPU).tensor("train", classes, samples)
    assert host.shape == dev.shape == (40, 3, 6, 6) and dev.is_contiguous()
    assert torch.equal(host, dev)
    gray = FewShotDataset("gray", pixels[..., 0], {"train": split}, mean=(0.1307,), std=(0.3081,))
    assert torch.equal(gray.tensor("train", classes, samples), gray.to_device(CPU).tensor("train", classes, samples))


def test_device_gathering_is_cuda_only_and_needs_the_data_to_fit_the_runs_share(omniglot, monkeypatch):
    """The pixels must fit DEVICE_DATA_SHARE of the run's part of the GPU's total memory (K packed workers: 1/K of
    it each); the free memory, which changes with earlier runs and neighbours, is never asked."""
    from types import SimpleNamespace

    from benchmark.pipeline.prefetch import DEVICE_DATA_SHARE, gather_on_device

    assert omniglot.nbytes == 32460 * 28 * 28 and not gather_on_device(omniglot, CPU)
    fits = omniglot.nbytes / DEVICE_DATA_SHARE
    total = {"bytes": fits}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=total["bytes"]))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0, 0))  # never consulted
    assert gather_on_device(omniglot, "cuda") and gather_on_device(omniglot, "cuda", gpu_fraction=1.0)
    assert not gather_on_device(omniglot, "cuda", gpu_fraction=0.5)  # two workers share the GPU
    total["bytes"] = 8 * fits
    assert gather_on_device(omniglot, "cuda", gpu_fraction=1 / 8)
    total["bytes"] = fits - 1
    assert not gather_on_device(omniglot, "cuda")


def test_one_device_copy_of_the_pixels_per_process_across_runs(omniglot, monkeypatch):
    """The device copy is made once per process and dataset (the same fingerprint) and reused by later runs; a run
    on another dataset replaces it (one copy held at a time)."""
    from benchmark.data import FewShotDataset, Split
    from benchmark.pipeline import prefetch

    monkeypatch.setattr(prefetch, "_DEVICE_PIXELS", {})
    copies = []
    original = FewShotDataset.to_device

    def counted(self, device, pixels=None):
        copies.append(pixels is None)
        return original(self, device, pixels)

    monkeypatch.setattr(FewShotDataset, "to_device", counted)
    a, b = prefetch.device_images(omniglot, CPU), prefetch.device_images(omniglot, CPU)
    assert copies == [True, False] and b.images is a.images and b.ds is omniglot
    pixels = np.zeros((4, 2, 2), dtype=np.uint8)
    other = FewShotDataset("other", pixels, {"train": Split(["c"], [np.arange(4)], np.array([0]))})
    c = prefetch.device_images(other, CPU)
    assert copies == [True, False, True] and tuple(c.images.shape) == (4, 2, 2)
    assert list(prefetch._DEVICE_PIXELS) == [(other.fingerprint, "cpu")]


def test_a_run_with_device_gathered_episodes_gives_the_host_results(tmp_path, monkeypatch):
    import benchmark.pipeline.runner as runner

    over = (("train_steps", 4), ("val_every", 2), ("train_ways", 5), ("train_queries", 5))
    cfg = RunConfig("protonet", "omniglot", 5, 1, profile="smoke", test_episodes=10, val_episodes=5, overrides=over)
    host = run(cfg, tmp_path / "host", CPU)
    monkeypatch.setattr(runner, "gather_on_device", lambda ds, device, gpu_fraction=None: True)
    dev = run(cfg, tmp_path / "dev", CPU)
    (c0, a0), (c1, a1) = records(tmp_path / "host", cfg), records(tmp_path / "dev", cfg)
    pd.testing.assert_frame_equal(c0, c1, check_exact=True)
    assert a0 == a1 and host["mean"] == dev["mean"] and host["test_fingerprint"] == dev["test_fingerprint"]
    assert host["execution"]["episodes_on_device"] is False and dev["execution"]["episodes_on_device"] is True
    assert dev["execution"]["prefetch"] == 0


# ------------------------------------------------------------------------------------------------ the GPU image
def test_provenance_does_not_need_torchvision(monkeypatch):
    """The GPU machine's image ships PyTorch, not necessarily torchvision, which nothing here needs: a run's
    environment record says it is absent instead of failing the run."""
    import sys

    from benchmark.pipeline.machine import environment

    assert environment(CPU)["torchvision"]  # the test extra installs it: its version is recorded
    monkeypatch.setitem(sys.modules, "torchvision", None)  # "import torchvision" now raises ImportError
    env = environment(CPU)
    assert env["torchvision"] is None and env["torch"] == torch.__version__


# ------------------------------------------------------------------------------------------------ compiled, counted
class _Compiled(torch.nn.Module):
    """A method-like object whose step runs a compiled module (Dynamo's ``eager`` backend: compiled frames without
    Inductor's minutes), and which records the compiler's stance during each step."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 2)
        self.net.compile(backend="eager")
        self.stances = []

    def train_step(self, episodes, step):
        from torch._dynamo.eval_frame import _stance

        self.stances.append(_stance.stance)
        loss = self.net(torch.ones(3, 4)).pow(2).mean()
        loss.backward()
        return {"loss": float(loss.detach())}


def test_the_flop_counted_step_runs_eagerly_and_compiling_happens_after_it():
    """The first step counts its FLOPs under the compiler's force_eager stance, so Dynamo neither compiles nor
    skips (PyTorch up to 2.11: skips forever) the compiled frames under the counter; the next step compiles them.
    The counts of Dynamo's frames tell which steps compiled anything."""
    torch._dynamo.reset()
    m = _Compiled()
    before = training.dynamo_counts()
    counted = training.timed_step(m, [], 0, CPU, count_flops=True)
    during = training.count_difference(before, training.dynamo_counts())
    training.timed_step(m, [], 1, CPU)
    after = training.count_difference(before, training.dynamo_counts())
    assert m.stances == ["force_eager", "default"]
    assert counted.flops == 2 * (2 * 3 * 4 * 2)  # forward and weight gradient of the linear layer, counted eagerly
    assert during["frames"] == 0 and after["frames"] >= 1 and after["graphs"] >= 1


def test_a_run_records_whether_anything_was_compiled(tmp_path, monkeypatch):
    """``execution.dynamo`` of a run's summary: frames Dynamo compiled during the run (0 for an eager run), not
    just that compiling was asked for (``execution.compile``)."""
    import benchmark.pipeline.builder as builder
    from benchmark.pipeline import Execution

    def compile_eager_backend(method, mode=None):  # the inductor backend would take minutes on this CPU
        mods = method.compile_modules()
        for m in mods.values():
            m.compile(backend="eager")
        return sorted(mods)

    monkeypatch.setattr(builder, "compile_method", compile_eager_backend)
    torch._dynamo.reset()
    over = (("train_steps", 2), ("val_every", 2), ("train_ways", 5), ("train_queries", 2))
    cfg = RunConfig("protonet", "omniglot", 5, 1, profile="smoke", test_episodes=4, val_episodes=2, overrides=over)
    eager = run(cfg, tmp_path / "eager", CPU, save_model=False)
    compiled = run(cfg, tmp_path / "compiled", CPU, save_model=False, execution=Execution(compile=True))
    assert eager["execution"]["dynamo"]["frames"] == 0 and eager["execution"]["compiled"] == []
    assert compiled["execution"]["compiled"] and compiled["execution"]["dynamo"]["frames"] >= 1
    assert compiled["flops_per_train_episode"] == eager["flops_per_train_episode"]  # counted eagerly in both
    assert eager["execution"]["eval_group"] >= 1


# ------------------------------------------------------------------------------------------------ host copies
def _method(name: str, **over):
    from benchmark.pipeline import make_context, prepare

    prepared = prepare(RunConfig(name, "omniglot", 5, 1, "conv4-32", profile="smoke", queries=2, val_episodes=1,
                                 overrides=tuple(over.items())))
    torch.manual_seed(0)
    return prepared.cls(prepared.hp, make_context(prepared, CPU)), prepared


def _copies(monkeypatch, module):
    """Count the calls of ``module``'s index-copy helper (``methods.blocks.device_indices``)."""
    import methods.blocks as blocks

    calls = []

    def counted(a, device):
        calls.append(len(a))
        return blocks.device_indices(a, device)

    monkeypatch.setattr(module, "device_indices", counted)
    return calls


@pytest.mark.parametrize("name", ["reptile", "meta_lstm"])
def test_indices_reach_the_device_once_per_task_and_group_not_per_inner_iteration(name, monkeypatch):
    """Reptile (5 inner iterations per task, 10 per test episode here) and the Meta-LSTM (5 learner updates) copy
    their mini-batch indices to the device once per task in training and once per group of test episodes in a
    batched ``predict_many`` (each copy holding every iteration's indices): one blocking copy per inner iteration
    made each iteration wait for the device on CUDA."""
    import importlib

    from benchmark.pipeline.training import draw_episodes

    module = importlib.import_module(f"methods.{name}")
    method, prepared = _method(name, meta_batch=2, batched_adaptation=True)
    iters = method.hp.inner_iters if name == "reptile" else method.hp.inner_steps
    eval_iters = method.hp.eval_iters if name == "reptile" else method.hp.inner_steps
    calls = _copies(monkeypatch, module)
    episodes = draw_episodes(method.ctx.sampler, 0, 2, method.train_shape(), CPU)
    method.train_step(episodes, 0)
    assert calls == [iters] * len(episodes)  # one copy per task, of every inner iteration's indices
    calls.clear()
    from benchmark.pipeline.episode_sets import test_set

    tests = test_set(prepared, 3)
    method.predict_many([tests[i].hidden() for i in range(3)])
    assert calls == [eval_iters]  # one group of 3 test episodes: one copy


def test_reptile_keeps_its_adam_step_count_on_the_host():
    """Reptile's carried Adam step count is read from its buffer once (after building or loading), then kept on the
    host: a training step does not read a device value to know it. A loaded state is read again."""
    from benchmark.pipeline.training import draw_episodes

    method, _ = _method("reptile", meta_batch=1)
    for step in range(2):
        method.train_step(draw_episodes(method.ctx.sampler, step, 1, method.train_shape(), CPU), step)
    t = method.hp.inner_iters * 2
    assert method._adam_t_host == float(method.adam_t) == t
    state = {k: v.clone() for k, v in method.state_dict().items()}
    state["adam_t"].fill_(3.0)
    method.load_state_dict(state)
    assert method._adam_t_host is None and method._state(fresh=False)["t"] == 3.0 == method._adam_t_host


def test_evaluate_reads_a_groups_accuracies_in_one_copy(monkeypatch):
    """The evaluation loop reads each group's accuracies together, not one ``.item()`` per episode (each a wait for
    the device on CUDA); the values are the ones ``.item()`` gave."""
    from benchmark.pipeline.episode_sets import test_set

    method, prepared = _method("protonet")
    tests = test_set(prepared, 6)
    expected, _ = training.evaluate(method, tests, CPU, group=3)

    def no_item(self):
        raise AssertionError("evaluate read an accuracy with .item()")

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    acc, _ = training.evaluate(method, tests, CPU, group=3)
    assert acc.tolist() == expected.tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["reptile", "meta_lstm"])
def test_no_host_synchronisation_in_a_training_step_or_batched_prediction_on_cuda(name):
    """On a GPU: a training step and a batched ``predict_many`` under ``torch.cuda.set_sync_debug_mode("error")``
    (a synchronising call raises) once the first step has run (reading the carried state once is allowed)."""
    from benchmark.pipeline import make_context, prepare
    from benchmark.pipeline.episode_sets import test_set
    from benchmark.pipeline.training import draw_episodes

    gpu = torch.device("cuda")
    prepared = prepare(RunConfig(name, "omniglot", 5, 1, "conv4-32", profile="smoke", queries=2, val_episodes=1,
                                 overrides=(("meta_batch", 2), ("batched_adaptation", True))))
    method = prepared.cls(prepared.hp, make_context(prepared, gpu)).to(gpu)
    shape = method.train_shape()
    method.train_step(draw_episodes(method.ctx.sampler, 0, 2, shape, gpu), 0)
    episodes = draw_episodes(method.ctx.sampler, 1, 2, shape, gpu)
    tests = [test_set(prepared, 2)[i].to(gpu).hidden() for i in range(2)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        method.train_step(episodes, 1)
        method.predict_many(tests)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ------------------------------------------------------------------------------------------------ the run's device
def test_the_runs_cuda_device_is_made_current_in_runs_and_workers(monkeypatch):
    """``use_device`` makes cuda:N the current device (CUDA events, streams and a worker's context then act on
    it, not on cuda:0); a pool worker does so when it takes its GPU."""
    import signal

    import benchmark.pipeline.executors.pool as pool
    from benchmark.pipeline.machine import use_device

    made = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: made.append(torch.device(d)))
    use_device("cuda:1")
    use_device(CPU)
    use_device("cuda")  # no index: whatever is current (e.g. the one Ray made visible)
    assert made == [torch.device("cuda:1")]

    class Counter:
        value = 3

        def get_lock(self):
            import contextlib
            return contextlib.nullcontext()

    previous, threads = signal.getsignal(signal.SIGINT), torch.get_num_threads()
    try:
        pool._init_worker(1, ["cuda:0", "cuda:1"], Counter())
    finally:
        signal.signal(signal.SIGINT, previous)
        torch.set_num_threads(threads)
        pool._WORKER.pop("device", None)
    assert made == [torch.device("cuda:1"), torch.device("cuda:1")]


def test_deferred_step_times_are_recorded_on_the_runs_device_stream(monkeypatch):
    """On cuda:1 the step's CUDA events are recorded on cuda:1's current stream (not the current device's, cuda:0,
    where they would time nothing of the step)."""
    streams = {}

    class Event:
        def __init__(self, enable_timing=False):
            self.on = None

        def record(self, stream=None):
            self.on = stream

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: streams.setdefault(str(device), object()))

    class Method:
        def train_step(self, episodes, step):
            return {"loss": 1.0}

    r = training.timed_step(Method(), [], 0, torch.device("cuda:1"), sync=False)
    assert r.events[0].on is streams["cuda:1"] and r.events[1].on is streams["cuda:1"]


def test_checkpoints_keep_only_the_runs_own_cuda_generator(monkeypatch):
    """The RNG states saved and restored are the run's device's only: a checkpoint written where more GPUs were
    visible (the older format, a list of every GPU's state) resumes where fewer are."""
    states = {i: torch.full((4,), i, dtype=torch.uint8) for i in range(4)}
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda index: states[index])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: restored.append((index, state.tolist())))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    saved = training.rng_state("cuda:2")
    assert saved["cuda_index"] == 2 and torch.equal(saved["cuda"], states[2])
    assert training.rng_state(CPU)["cuda"] is None
    training.set_rng_state(saved, "cuda:2")
    training.set_rng_state(saved, CPU)  # a CUDA checkpoint resumed on the CPU: no CUDA state restored
    old = {**saved, "cuda": [states[i] for i in range(4)]}
    training.set_rng_state(old, "cuda:1")
    training.set_rng_state({**saved, "cuda": [states[0]]}, "cuda:3")  # written with one GPU visible: left out
    training.set_rng_state(old, "cuda")  # no index: the current device's
    assert restored == [(2, [2] * 4), (1, [1] * 4), (0, [0] * 4)]


def test_captured_methods_mark_each_step_and_evaluation_group(monkeypatch):
    """Compiled for CUDA graphs (``--capture``'s mode), a method's training steps and evaluation groups each begin
    with ``torch.compiler.cudagraph_mark_step_begin``; nothing is marked for an eager or plainly compiled one."""
    from benchmark.pipeline.episode_sets import test_set
    from benchmark.pipeline.execution import CAPTURE_MODE

    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    method, prepared = _method("protonet")
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: None)  # nothing compiled, only the mode
    training.compile_method(method, None)
    training.evaluate(method, test_set(prepared, 4), CPU, group=2)
    assert marks == [] and not getattr(method, "cudagraph_steps", False)
    assert training.compile_method(method, CAPTURE_MODE)
    from benchmark.pipeline.training import draw_episodes

    training.timed_step(method, draw_episodes(method.ctx.sampler, 0, 1, method.train_shape(), CPU), 0, CPU)
    training.evaluate(method, test_set(prepared, 4), CPU, group=2)
    assert marks == [1, 1, 1]  # one step, two groups


# ------------------------------------------------------------------------------------------------ benchmark.speed
def test_speed_applies_the_runs_determinism_settings(monkeypatch, capsys):
    """``benchmark.speed`` configures determinism as runs do (a CUDA measurement ran without it before);
    ``--no-deterministic`` allows non-deterministic kernels, as ``benchmark.run``'s flag does."""
    import json

    import benchmark.pipeline.machine as machine
    import benchmark.speed as speed

    seen = []
    monkeypatch.setattr(machine, "configure_determinism",
                        lambda device, deterministic=True: seen.append((str(device), deterministic)) or {"d": 1})
    monkeypatch.setattr(speed, "time_run", lambda *a, **k: {"ms": 1.0})
    for extra in ([], ["--no-deterministic"]):
        assert speed.main(["--method", "protonet", "--profile", "smoke", "--device", "cpu", "--json", *extra]) == 0
    assert seen == [("cpu", True), ("cpu", False)]
    assert json.loads(capsys.readouterr().out.splitlines()[0]) == {"ms": 1.0, "determinism": {"d": 1}}


def test_speed_warms_the_test_timing_up_with_the_measured_group(tmp_path, monkeypatch):
    """The test timing's warm-up evaluates a whole group of the size measured (a smaller warm-up group left the
    measured group's shapes to the timed part: cuDNN's and the compiler's first calls)."""
    import benchmark.pipeline.steps as steps
    from benchmark.speed import prepare_measurement, time_run

    calls = []
    original = steps.evaluate

    def recorded(method, episodes, device, *a, **k):
        calls.append((len(episodes), steps.group_size(method, episodes, k.get("group"), device)))
        return original(method, episodes, device, *a, **k)

    monkeypatch.setattr(steps, "evaluate", recorded)
    prepared = prepare_measurement("protonet", shots=1, profile="smoke", train_queries=2)
    r = time_run(prepared, "cpu", steps=1, warmup=1, test_episodes=3, results_dir=None, eval_group=0)
    assert r["eval_group"] == calls[1][1] > 1
    assert calls[0] == (r["eval_group"], r["eval_group"])  # the warm-up: one group of the measured size
    assert r["dynamo"]["frames"] == 0

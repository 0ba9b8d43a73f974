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


def test_device_gathering_is_cuda_only_and_needs_the_data_to_fit(omniglot, monkeypatch):
    from benchmark.pipeline.prefetch import DEVICE_DATA_SHARE, gather_on_device

    assert omniglot.nbytes == 32460 * 28 * 28 and not gather_on_device(omniglot, CPU)
    fits = omniglot.nbytes / DEVICE_DATA_SHARE
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (fits, 2 * fits))
    assert gather_on_device(omniglot, "cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (fits - 1, 2 * fits))
    assert not gather_on_device(omniglot, "cuda")


def test_a_run_with_device_gathered_episodes_gives_the_host_results(tmp_path, monkeypatch):
    import benchmark.pipeline.runner as runner

    over = (("train_steps", 4), ("val_every", 2), ("train_ways", 5), ("train_queries", 5))
    cfg = RunConfig("protonet", "omniglot", 5, 1, profile="smoke", test_episodes=10, val_episodes=5, overrides=over)
    host = run(cfg, tmp_path / "host", CPU)
    monkeypatch.setattr(runner, "gather_on_device", lambda ds, device: True)
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

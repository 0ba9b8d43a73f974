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
def test_resume_loads_the_checkpoint_on_the_host_whatever_the_device(tmp_path, monkeypatch):
    """Resume as on a GPU: the trainer's device is not the CPU while it loads its checkpoint. The old code loaded
    with ``map_location=self.device`` and ``torch.set_rng_state`` refused the moved state ("RNG state must be a
    torch.ByteTensor"); now the checkpoint is loaded on the host and the resumed run equals the uninterrupted one."""
    over = (("train_steps", 8), ("val_every", 4), ("train_ways", 5), ("train_queries", 5))
    cfg = RunConfig("protonet", "omniglot", 5, 1, profile="smoke", test_episodes=10, val_episodes=5, overrides=over)
    full = run(cfg, tmp_path / "a", CPU)
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
    ea, eb = (pd.read_csv(tmp_path / d / cfg.run_id / "test_episodes.csv")["accuracy"] for d in ("a", "b"))
    assert ea.tolist() == eb.tolist() and full["mean"] == resumed["mean"]


def test_cached_artefacts_are_read_back_on_the_host(tmp_path):
    cache = ArtefactCache(tmp_path, "fingerprint", "conv4", 0, META)
    make = lambda: {"rng": torch.get_rng_state(), "w": torch.ones(2)}  # noqa: E731
    first = cache("thing", {"k": 1}, make)
    again = cache("thing", {"k": 1}, make)  # read from its file
    assert [e["computed_in_this_run"] for e in cache.log] == [True, False]
    assert again["rng"].device == CPU and again["w"].device == CPU
    assert torch.equal(again["rng"], first["rng"])

"""Meta-train, validate, test and record one run.

A run is (method, dataset, ways, shots, backbone, seed, profile). :func:`run` meta-trains the method on training
episodes drawn by index from the run's seed, validates on a fixed episode set every ``val_every`` steps (one
convergence-curve point each: steps, episodes seen, training seconds, validation accuracy), keeps the checkpoint with
the best validation accuracy, tests it on the fixed test episodes and writes the run folder
(:mod:`benchmark.results`).

Validation and test episodes depend on ``eval_seed`` (default 0), not on the training seed, so every method and
every seed of a setting is tested on the same episodes, which their fingerprint proves.

Resume: a checkpoint (module and optimiser state, RNG states, step, episodes seen, curve, best state) is written
atomically after each validation and on Ctrl-C. Running the same run again continues from it; since training
episodes are pure functions of their index and the RNG states are restored, the result equals an uninterrupted run's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from .data import load_dataset
from .episodes import EpisodeSet, TaskSampler, check_spec
from .facts import record_facts
from .results import (atomic_torch_save, atomic_write_csv, atomic_write_json, mean_ci95)


@dataclass(frozen=True)
class Profile:
    """Evaluation budget of a profile (the training budget is each method's ``hyper(profile, setting)``)."""

    name: str
    val_episodes: int
    test_episodes: int
    doc: str


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", 20, 100, "seconds per run; for tests and trying the tool"),
    "quick": Profile("quick", 100, 600, "about 2 minutes per method and setting on 2 CPU cores; the default"),
    "paper": Profile("paper", 600, 600, "the papers' hyperparameters and episode budgets; meant for a GPU"),
}


@dataclass(frozen=True)
class RunConfig:
    method: str
    dataset: str = "omniglot"
    ways: int = 5
    shots: int = 1
    backbone: str = "conv4"
    seed: int = 0
    profile: str = "quick"
    queries: int = 15  # test/validation queries per class
    test_episodes: int | None = None  # None: the profile's
    val_episodes: int | None = None
    eval_seed: int = 0
    overrides: tuple[tuple[str, Any], ...] = ()  # hyperparameter overrides, (field, value)

    @property
    def n_test(self) -> int:
        return self.test_episodes if self.test_episodes is not None else PROFILES[self.profile].test_episodes

    @property
    def n_val(self) -> int:
        return self.val_episodes if self.val_episodes is not None else PROFILES[self.profile].val_episodes

    @property
    def run_id(self) -> str:
        base = f"{self.method}-{self.dataset}-{self.ways}w{self.shots}s-{self.backbone}-{self.profile}-s{self.seed}"
        extra = {k: v for k, v in (("queries", self.queries), ("test_episodes", self.test_episodes),
                                   ("val_episodes", self.val_episodes), ("eval_seed", self.eval_seed),
                                   ("overrides", list(self.overrides)))
                 if v != {"queries": 15, "eval_seed": 0, "overrides": []}.get(k)}
        if not extra:
            return base
        return f"{base}-{hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]}"


class Interrupted(Exception):
    """Raised after the checkpoint is saved when a run is stopped early (Ctrl-C or ``stop_after``)."""


# ------------------------------------------------------------------------------------------------------ provenance
def code_version() -> str:
    """The git commit of this code, with '-dirty' when tracked files differ; 'unknown' outside a checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict[str, Any]:
    import torchvision

    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "numpy": np.__version__, "pandas": pd.__version__, "platform": platform.platform(),
           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor()
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        env["device_name"] = f"{cpu} ({os.cpu_count()} logical cores, {torch.get_num_threads()} threads)"
    return env


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but PyTorch sees no CUDA device; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
    return torch.device(name)


class PeakMemory:
    """Peak memory during a block: resident set size of the process (CPU), or allocated CUDA memory."""

    def __init__(self, device: torch.device):
        self.device, self.peak_bytes = device, 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _poll(self):
        while not self._stop.wait(0.05):
            self.peak_bytes = max(self.peak_bytes, self._rss())

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_bytes = self._rss()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._rss())

    @property
    def mb(self) -> float:
        return self.peak_bytes / 2 ** 20


# ------------------------------------------------------------------------------------------------------ evaluation
def evaluate(method, episodes: EpisodeSet, device: torch.device, progress=None, desc: str = "eval",
             group: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-episode query accuracy and adaptation seconds of ``method`` on every episode of ``episodes``.

    Episodes go to ``method.predict_many`` in groups of ``group`` (default: the method's ``eval_group``), which
    methods implement as fewer, larger passes with the same per-episode results as ``predict`` one at a time
    (tested); an episode's seconds are its group's time divided by the group's size.
    """
    group = max(1, int(group or getattr(method, "eval_group", 1)))
    n = len(episodes)
    acc = np.empty(n)
    secs = np.empty(n)
    bar = progress(total=n, desc=desc) if progress is not None else None
    try:
        for start in range(0, n, group):
            idx = range(start, min(n, start + group))
            eps = [episodes[i].to(device) for i in idx]
            t0 = time.perf_counter()
            with torch.set_grad_enabled(method.adapts_at_test):
                logits = method.predict_many(eps)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            secs[start:start + len(eps)] = (time.perf_counter() - t0) / len(eps)
            for i, ep, lg in zip(idx, eps, logits):
                acc[i] = (lg.argmax(-1) == ep.query_y).float().mean().item()
            if bar is not None:
                bar.update(len(eps))
    finally:
        if bar is not None and hasattr(bar, "close"):
            bar.close()
    return acc, secs


# ------------------------------------------------------------------------------------------------------ the run
def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def build_hyper(cls, cfg: RunConfig, setting):
    hp = cls.hyper(cfg.profile, setting)
    if cfg.overrides:
        names = {f.name: f for f in dataclasses.fields(hp)}
        changes = {}
        for k, v in cfg.overrides:
            if k not in names:
                raise ValueError(f"{cls.name} has no hyperparameter {k!r}; it has {', '.join(names)}")
            changes[k] = v
        hp = dataclasses.replace(hp, **changes)
    return hp


def prepare(cfg: RunConfig, data_dir: str | Path | None = None):
    """Validate a run's configuration and build its data; raises ValueError/DataError with a clear message."""
    import methods

    cls = methods.get(cfg.method)
    if cfg.profile not in PROFILES:
        raise ValueError(f"unknown profile {cfg.profile!r}; choose from {', '.join(PROFILES)}")
    from .backbones import BACKBONES

    if cfg.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {cfg.backbone!r}; choose from {', '.join(BACKBONES)}")
    ds = load_dataset(cfg.dataset, data_dir)
    check_spec(ds, "test", cfg.ways, cfg.shots, cfg.queries)
    check_spec(ds, "val", cfg.ways, cfg.shots, cfg.queries)
    setting = methods.Setting(cfg.dataset, cfg.ways, cfg.shots, cfg.queries)
    hp = build_hyper(cls, cfg, setting)
    tw, ts = hp.train_ways or cfg.ways, hp.train_shots or cfg.shots
    check_spec(ds, "train", tw, ts, hp.train_queries)
    return cls, ds, setting, hp


def run(cfg: RunConfig, results_dir: Path, device: torch.device, data_dir: str | Path | None = None,
        progress: Callable | None = None, stop_after: int | None = None) -> dict:
    """Run (or resume, or skip when finished) one configuration; returns its summary.

    ``progress(iterable, total=, desc=)`` wraps loops in progress bars (e.g. ``tqdm``); ``stop_after`` stops after
    that many training steps in this call, leaving a checkpoint (used to test resuming).
    """
    import methods

    results_dir = Path(results_dir)
    final = results_dir / cfg.run_id
    if (final / "summary.json").is_file():
        return json.loads((final / "summary.json").read_text())
    cls, ds, setting, hp = prepare(cfg, data_dir)
    part = results_dir / f"{cfg.run_id}.partial"
    part.mkdir(parents=True, exist_ok=True)
    ckpt_path = part / "checkpoint.pt"

    val_set = EpisodeSet(ds, "val", cfg.ways, cfg.shots, cfg.queries, cfg.eval_seed, cfg.n_val, stream="val")
    test_set = EpisodeSet(ds, "test", cfg.ways, cfg.shots, cfg.queries, cfg.eval_seed, cfg.n_test, stream="test")
    sampler = TaskSampler(ds, "train", cfg.seed)
    cache_log: list[dict] = []

    def cached(name: str, key: dict, fn: Callable[[], Any]) -> Any:
        full = {"name": name, "key": key, "dataset": ds.fingerprint, "backbone": cfg.backbone, "seed": cfg.seed}
        h = hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = results_dir / "cache" / f"{name}-{h}.pt"
        if path.is_file():
            blob = torch.load(path, map_location=device, weights_only=False)
            cache_log.append({"name": name, "file": str(path.relative_to(results_dir)), "seconds": blob["seconds"],
                              "computed_in_this_run": False})
            return blob["value"]
        t0 = time.perf_counter()
        value = fn()
        secs = time.perf_counter() - t0
        atomic_torch_save(path, {"value": value, "seconds": secs, "key": full})
        cache_log.append({"name": name, "file": str(path.relative_to(results_dir)), "seconds": secs,
                          "computed_in_this_run": True})
        return value

    seed_everything(cfg.seed)
    ctx = methods.Context(setting=setting, image_shape=ds.image_shape, backbone_name=cfg.backbone, sampler=sampler,
                          val_episodes=val_set, device=device, seed=cfg.seed, profile=cfg.profile, cached=cached,
                          progress=progress)
    mem = PeakMemory(device)
    mem.__enter__()
    try:
        method = cls(hp, ctx).to(device)
        ways, shots, queries = method.train_shape()

        state = {"step": 0, "episodes": 0, "train_seconds": 0.0, "val_seconds": 0.0, "curve": [], "best_acc": -1.0,
                 "best_step": 0, "best_state": None, "acc_sum": {}, "acc_n": 0, "cache_log": []}
        if ckpt_path.is_file():
            ck = torch.load(ckpt_path, map_location=device, weights_only=False)
            method.load_training_state(ck["method"])
            state = ck["state"]
            _set_rng_state(ck["rng"])
        cache_log.extend(state.get("cache_log", []))

        def save_checkpoint():
            state["cache_log"] = cache_log
            atomic_torch_save(ckpt_path, {"method": method.training_state(), "state": state, "rng": _rng_state(),
                                          "config": dataclasses.asdict(cfg)})

        steps = range(state["step"], hp.train_steps)
        bar = progress(steps, total=hp.train_steps, desc=f"{cfg.method} {cfg.ways}w{cfg.shots}s train",
                       initial=state["step"]) if progress else steps
        done_this_call = 0
        try:
            for step in bar:
                episodes = [sampler.episode(step * hp.meta_batch + j, ways, shots, queries).to(device)
                            for j in range(hp.meta_batch)]
                t0 = time.perf_counter()
                metrics = method.train_step(episodes, step)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                state["train_seconds"] += time.perf_counter() - t0
                state["episodes"] += int(metrics.pop("tasks", len(episodes)))
                for k, v in metrics.items():
                    state["acc_sum"][k] = state["acc_sum"].get(k, 0.0) + float(v)
                state["acc_n"] += 1
                state["step"] = step + 1
                if state["step"] % hp.val_every == 0 or state["step"] == hp.train_steps:
                    t1 = time.perf_counter()
                    acc, _ = evaluate(method, val_set, device)
                    state["val_seconds"] += time.perf_counter() - t1
                    m, ci = mean_ci95(acc)
                    row = {"step": state["step"], "episodes": state["episodes"],
                           "train_seconds": round(state["train_seconds"], 4), "val_acc": 100 * m, "val_ci95": 100 * ci}
                    row.update({f"train_{k}": v / state["acc_n"] for k, v in state["acc_sum"].items()})
                    state["curve"].append(row)
                    state["acc_sum"], state["acc_n"] = {}, 0
                    if m > state["best_acc"]:
                        state["best_acc"], state["best_step"] = m, state["step"]
                        state["best_state"] = {k: v.detach().clone() for k, v in method.state_dict().items()}
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(val=f"{100 * m:.1f}%", best=f"{100 * state['best_acc']:.1f}%")
                    save_checkpoint()
                done_this_call += 1
                if stop_after is not None and done_this_call >= stop_after and state["step"] < hp.train_steps:
                    save_checkpoint()
                    raise Interrupted(f"stopped after step {state['step']}")
        except KeyboardInterrupt:
            save_checkpoint()
            raise Interrupted(f"interrupted at step {state['step']} of {hp.train_steps}; "
                              "run the same command again to resume") from None
        finally:
            if hasattr(bar, "close"):
                bar.close()

        if state["best_state"] is not None:
            method.load_state_dict(state["best_state"])
        acc, secs = evaluate(method, test_set, device, progress, desc=f"{cfg.method} {cfg.ways}w{cfg.shots}s test")
    finally:
        mem.__exit__(None, None, None)

    mean, ci = mean_ci95(acc)
    paper_episodes = cls.paper_train_episodes(setting)
    curve = pd.DataFrame(state["curve"])
    episodes_df = pd.DataFrame({"episode": np.arange(len(acc)), "accuracy": acc, "adapt_seconds": secs})
    config = {**dataclasses.asdict(cfg), "run_id": cfg.run_id, "hyperparameters": dataclasses.asdict(hp),
              "hyperparameter_class": type(hp).__name__, "train_episode_shape": [ways, shots, queries],
              "val_spec": dataclasses.asdict(val_set.spec), "test_spec": dataclasses.asdict(test_set.spec),
              "data_dir": str(data_dir) if data_dir else None}
    summary = {
        "run_id": cfg.run_id, "method": cfg.method, "family": cls.family, "dataset": cfg.dataset,
        "ways": cfg.ways, "shots": cfg.shots, "backbone": cfg.backbone, "profile": cfg.profile, "seed": cfg.seed,
        "mean": 100 * mean, "ci95": 100 * ci, "n_episodes": len(acc), "queries": cfg.queries,
        "train_steps": state["step"], "train_episodes": state["episodes"],
        "train_seconds": state["train_seconds"], "val_seconds": state["val_seconds"],
        "ms_per_train_episode": 1000 * state["train_seconds"] / max(state["episodes"], 1),
        "ms_per_test_episode": 1000 * float(np.mean(secs)),
        "best_step": state["best_step"], "best_val_acc": 100 * state["best_acc"],
        "paper_train_episodes": paper_episodes,
        "budget_fraction": state["episodes"] / paper_episodes if paper_episodes else None,
        "peak_memory_mb": mem.mb, "memory_kind": "cuda_allocated" if device.type == "cuda" else "process_rss",
        "trainable_params": method.trainable_parameters(), "adapted_params": method.adapted_parameters(),
        "device": str(device), "environment": environment(device), "code_version": code_version(),
        "dataset_fingerprint": ds.fingerprint, "dataset_source": ds.source,
        "val_fingerprint": val_set.fingerprint, "test_fingerprint": test_set.fingerprint,
        "cache": cache_log, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **record_facts(cls, cfg.backbone),
    }
    atomic_write_json(part / "config.json", config)
    atomic_write_csv(part / "curve.csv", curve)
    atomic_write_csv(part / "test_episodes.csv", episodes_df)
    atomic_write_json(part / "summary.json", summary)
    ckpt_path.unlink(missing_ok=True)
    if final.exists():  # a stale folder without summary.json (cannot be a finished run)
        shutil.rmtree(final)
    os.replace(part, final)
    return summary

"""What a run is, and its preparation: profiles, :class:`RunConfig`, hyperparameters and :func:`prepare`.

A run is (method, dataset, ways, shots, backbone, seed, profile), plus the evaluation episodes and hyperparameter
overrides (:class:`RunConfig`). :func:`prepare` checks a configuration and builds everything a run needs before
anything is written: the method class, the dataset, the setting and the hyperparameters (:class:`PreparedRun`).
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import FewShotDataset, load_dataset
from .episodes import check_spec


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


@dataclass(frozen=True)
class PreparedRun:
    """A checked configuration with what its run needs: the method class, the dataset, the setting and the
    hyperparameters (profile defaults plus overrides). Built once by :func:`prepare` and handed to the runner."""

    cfg: RunConfig
    cls: type  # a methods.base.Method subclass
    dataset: FewShotDataset
    setting: Any  # methods.base.Setting
    hp: Any  # the method's Hyper dataclass
    data_dir: str | Path | None = None


# ------------------------------------------------------------------------------------------------ hyperparameters
def parse_overrides(items: list[str]) -> tuple[tuple[str, Any], ...]:
    """``FIELD=VALUE`` strings (``--set``) as (field, value) pairs: the value as a Python literal when it is one
    (``500``, ``5e-4``, ``True``, ``None``, ``4,5``), else as the string. ValueError for an item without ``=``."""
    out = []
    for it in items:
        if "=" not in it:
            raise ValueError(f"--set expects FIELD=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            val = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            val = v
        out.append((k.strip(), val))
    return tuple(out)


def build_hyper(cls, cfg: RunConfig, setting):
    """``cls``'s hyperparameters for ``cfg.profile`` and ``setting`` with ``cfg.overrides`` applied; ValueError
    names an unknown field."""
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


# ------------------------------------------------------------------------------------------------ preparation
def prepare(cfg: RunConfig, data_dir: str | Path | None = None, method_cls: type | None = None) -> PreparedRun:
    """Validate a run's configuration and build its data; raises ValueError/DataError with a clear message.

    ``method_cls``: the method's class when the caller has already looked it up in the registry (else
    ``methods.get(cfg.method)``).
    """
    import methods

    cls = method_cls if method_cls is not None else methods.get(cfg.method)
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
    return PreparedRun(cfg, cls, ds, setting, hp, data_dir)

"""What a run is, and its preparation: :class:`RunConfig`, hyperparameters and :func:`prepare`.

A run is (method, dataset, ways, shots, backbone, seed, profile), plus the evaluation episodes, hyperparameter
overrides and numerical precision (:class:`RunConfig`; the precision enters the run id when it is not fp32). :func:`prepare` checks a configuration and builds everything a run needs before
anything is written: the dataset, the setting and the hyperparameters of the given method class
(:class:`PreparedRun`). This module is part of the harness core: it never imports the method registry; the caller
looks the class up (``benchmark.pipeline.runner.prepare`` does, from the run's method name). Profiles live in
:mod:`benchmark.kit.profiles`.

Hyperparameter overrides (``--set FIELD=VALUE``) are checked against the field's declared type (int, float, bool,
str, ``X | None``, tuples); with ``positive=True`` (the command line) budgets must also be positive
(:func:`check_value`). The API may still pass e.g. ``train_steps=0`` for an untrained baseline.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import numbers
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import FewShotDataset, load_dataset, resolve_split
from ..kit.episodes import check_spec
from ..kit.profiles import PROFILES, Profile, check_profile
from .execution import check_precision

__all__ = ["PROFILES", "PreparedRun", "Profile", "RunConfig", "build_hyper", "check_value", "parse_overrides",
           "prepare"]


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
    split: str = ""  # the dataset's named class split; "" is its default (benchmark.data.DATASETS)
    precision: str = "fp32"  # "fp32" (the papers') or "bf16" (autocast; benchmark.pipeline.execution.PRECISIONS)

    @property
    def n_test(self) -> int:
        return self.test_episodes if self.test_episodes is not None else check_profile(self.profile).test_episodes

    @property
    def n_val(self) -> int:
        return self.val_episodes if self.val_episodes is not None else check_profile(self.profile).val_episodes

    @property
    def run_id(self) -> str:
        data = f"{self.dataset}-{self.split}" if self.split else self.dataset
        base = f"{self.method}-{data}-{self.ways}w{self.shots}s-{self.backbone}-{self.profile}-s{self.seed}"
        extra = {k: v for k, v in (("queries", self.queries), ("test_episodes", self.test_episodes),
                                   ("val_episodes", self.val_episodes), ("eval_seed", self.eval_seed),
                                   ("overrides", list(self.overrides)), ("precision", self.precision))
                 if v != {"queries": 15, "eval_seed": 0, "overrides": [], "precision": "fp32"}.get(k)}
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
    setting: Any  # benchmark.kit.context.Setting
    hp: Any  # the method's Hyper dataclass
    data_dir: str | Path | None = None


# ------------------------------------------------------------------------------------------------ hyperparameters
#: int hyperparameters are counts (steps, episodes, tasks, batch sizes, widths, layers) and must be at least 1 when
#: set on the command line, except these, where 0 means "none": MTL's hard tasks, TADAM's decay stages of the
#: auxiliary task's probability, Matching Networks' attention-LSTM reads.
ZERO_ALLOWED = frozenset({"hard_tasks", "aux_decay_n", "fce_steps"})
#: float hyperparameters that are budgets in epochs or a step size, and must be positive (besides learning rates).
POSITIVE_FLOATS = frozenset({"pre_epochs", "pre_step_epochs", "pre_val_every", "meta_step"})


def is_learning_rate(name: str) -> bool:
    """``lr``, ``*_lr`` (inner_lr, meta_lr, pre_lr, base_lr, ...) and ``meta_lr_*`` (MTL's two meta learning rates)."""
    return name == "lr" or name.endswith("_lr") or name.startswith("meta_lr_")


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


def _conforms(value: Any, tp: Any) -> bool:
    """Whether ``value`` is of the declared type ``tp`` (an int is a float; a bool is neither)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(_conforms(v, a) for v, a in zip(value, args))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp in (int, float):
        kind = numbers.Integral if tp is int else numbers.Real
        return isinstance(value, kind) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return True  # a type this check does not know: the method's own checks apply


def _describe(tp: Any) -> str:
    """``tp`` in words, for error messages."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple of {_describe(args[0])} values, e.g. 1,2"
        return f"a tuple of {len(args)} values ({', '.join(_describe(a) for a in args)}), e.g. " + \
            ",".join("1" for _ in args)
    return {int: "an integer", float: "a number", bool: "True or False", str: "a string",
            type(None): "None"}.get(tp, getattr(tp, "__name__", str(tp)))


def _is_count(tp: Any) -> bool:
    """Whether the declared type ``tp`` is ``int`` or ``int | None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return int in typing.get_args(tp)
    return tp is int


def check_value(cls, hp_type: type, name: str, value: Any, positive: bool = False) -> None:
    """Raise ValueError (one line) when ``value`` is not of the declared type of ``hp_type``'s field ``name``; with
    ``positive``, also when it is not a positive budget: an int field (a count: steps, episodes, tasks, batch sizes,
    widths, layers) at least 1 (0 where :data:`ZERO_ALLOWED`), a learning rate or one of :data:`POSITIVE_FLOATS`
    above 0. ``None`` (e.g. ``train_ways``: the test setting's) passes."""
    tp = typing.get_type_hints(hp_type)[name]
    if not _conforms(value, tp):
        raise ValueError(f"{cls.name}'s hyperparameter {name} must be {_describe(tp)} (got {value!r})")
    if not positive or value is None:
        return
    if _is_count(tp):
        low = 0 if name in ZERO_ALLOWED else 1
        if value < low:
            raise ValueError(f"{cls.name}'s hyperparameter {name} must be at least {low} (got {value})")
    elif (is_learning_rate(name) or name in POSITIVE_FLOATS) and not value > 0:
        raise ValueError(f"{cls.name}'s hyperparameter {name} must be greater than 0 (got {value})")


def build_hyper(cls, cfg: RunConfig, setting, positive: bool = False):
    """``cls``'s hyperparameters for ``cfg.profile`` and ``setting`` with ``cfg.overrides`` applied, each checked
    (:func:`check_value`); ValueError names an unknown field or a bad value."""
    hp = cls.hyper(cfg.profile, setting)
    if cfg.overrides:
        names = {f.name: f for f in dataclasses.fields(hp)}
        changes = {}
        for k, v in cfg.overrides:
            if k not in names:
                raise ValueError(f"{cls.name} has no hyperparameter {k!r}; it has {', '.join(names)}")
            check_value(cls, type(hp), k, v, positive)
            changes[k] = v
        hp = dataclasses.replace(hp, **changes)
    return hp


# ------------------------------------------------------------------------------------------------ preparation
def prepare(cfg: RunConfig, method_cls: type, data_dir: str | Path | None = None,
            positive: bool = False) -> PreparedRun:
    """Validate a run's configuration for ``method_cls`` (the :class:`~methods.base.Method` subclass the registry
    has under ``cfg.method``) and build its data; raises ValueError/DataError with a clear message.

    ``positive``: require positive budgets in the overrides (the command line's check).
    """
    from ..kit.backbones import BACKBONES
    from ..kit.context import Setting, train_episode_shape

    if cfg.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {cfg.backbone!r}; choose from {', '.join(BACKBONES)}")
    if cfg.split and cfg.split == resolve_split(cfg.dataset, None):
        raise ValueError(f"split {cfg.split!r} is {cfg.dataset}'s default; leave RunConfig.split empty for it "
                         "(so the run id is the same however it was asked for)")
    check_precision(cfg.precision)
    setting = Setting(cfg.dataset, cfg.ways, cfg.shots, cfg.queries)
    hp = build_hyper(method_cls, cfg, setting, positive)  # refuses an unknown profile (Method.hyper)
    ds = load_dataset(cfg.dataset, data_dir, cfg.split or None)
    check_spec(ds, "test", cfg.ways, cfg.shots, cfg.queries)
    check_spec(ds, "val", cfg.ways, cfg.shots, cfg.queries)
    check_spec(ds, "train", *train_episode_shape(hp, setting))
    return PreparedRun(cfg, method_cls, ds, setting, hp, data_dir)

"""Entries: runs aggregated over seeds into one row each of the settings leaderboard (the report's
``leaderboard.csv``), with the published figure beside them.

Aggregation: runs that share method, hyperparameter overrides, dataset, ways, shots, test queries, backbone, profile
and test-episode fingerprint form one *entry* (one settings-leaderboard row); its seeds are its runs. The entry's
per-episode accuracy is the mean over its seeds on each (shared) test episode; ``mean`` and ``ci95`` (1.96 sd /
sqrt(n)) are taken over those episodes, and ``seed_sd`` is the sd (ddof 1) of the per-seed mean accuracies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .common import ENTRY_KEYS, SETTING_KEYS, ReportError, norm_dataset
from .records import MethodInfo, Run, backbone_facts, method_infos
from .reference import (
    load_reference,
    load_seed_spread,
    load_survey,
    measured_spread,
    protocol_differences,
    published_figure,
)
from .stats import MIN_SEEDS, mean_ci95, seed_curve

#: Column order of the report's settings leaderboard ``leaderboard.csv`` (one row per entry; stable: append new
#: columns at the end only). The per-run leaderboard has :data:`benchmark.store.leaderboard.RUNS_LEADERBOARD_COLUMNS`.
REPORT_LEADERBOARD_COLUMNS = [
    "method", "variant_of", "family", "overrides", "dataset", "ways", "shots", "queries", "backbone", "profile",
    "mean", "ci95", "n_episodes", "n_seeds", "seeds", "seed_sd", "rank",
    "published", "published_ci95", "published_source", "published_comparable", "protocol_differences", "difference",
    "train_episodes", "train_seconds", "ms_per_train_episode", "ms_per_test_episode", "peak_memory_mb", "memory_kind",
    "trainable_params", "adapted_params", "shared_seconds",
    "device", "test_fingerprint", "dataset_fingerprint", "code_version", "run_ids",
    "paper_train_episodes", "budget_fraction", "split", "precision", "deterministic",
    "eval_seed", "peak_memory_increase_mb", "flops_per_train_episode", "transductive",
]


@dataclass
class Entry:
    key: dict
    runs: list[Run]
    info: MethodInfo
    accuracy: np.ndarray  # seed-averaged per-episode accuracy, %
    curve: pd.DataFrame  # seed-averaged validation curve
    row: dict  # settings-leaderboard row, but its rank (:func:`leaderboard_frame` adds the paired tests' ranks)
    #: the published figure beside the entry (:func:`~benchmark.report.reference.published_figure`), None without
    published: dict | None = None
    #: its method's measured seed-to-seed spread at this setting and profile
    #: (:func:`~benchmark.report.reference.measured_spread`), None where none was measured
    seed_spread: dict | None = None

    @property
    def external(self) -> bool:
        """Whether the method came from outside the package (a plugin or a method file), as its runs recorded."""
        return any(((r["method_facts"] or {}).get("origin") or {}).get("kind", "builtin") != "builtin"
                   for r in self.runs)

    @property
    def transductive(self) -> bool:
        """Whether the method scores a query using the other queries of its episode (recorded per run, measured by
        ``benchmark.check``): ranked beside the others only with that mark."""
        return any(bool(r["transductive"]) for r in self.runs)

    @property
    def label(self) -> str:
        """The entry's name in every table: the method, its overrides and precision, and ``[ext]`` for a method
        from outside the package (its origin is in the report's provenance section)."""
        ov = self.key["overrides"]
        precision = self.key.get("precision") or "fp32"
        return self.key["method"] + (f" [{ov}]" if ov else "") + (f" [{precision}]" if precision != "fp32" else "") \
            + (" [transductive]" if self.transductive else "") + (" [ext]" if self.external else "")

    @property
    def setting(self) -> tuple:
        return tuple(self.key[k] for k in SETTING_KEYS)

    @property
    def ident(self) -> tuple:
        """The entry's key as a tuple (:data:`~benchmark.report.common.ENTRY_KEYS`): what tells entries apart."""
        return tuple(self.key[k] for k in ENTRY_KEYS)


def _join(vals) -> str:
    out = []
    for v in vals:
        if v is not None and str(v) not in out:
            out.append(str(v))
    return ";".join(out)


def _number(v) -> float | None:
    """``v`` as a finite float; None when absent (older runs lack newer fields) or not a finite number."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def seed_note(e: Entry) -> str | None:
    """The note of an entry with one seed whose method's training variance was measured at its setting and profile
    (``benchmark/reference/seed_spread.csv``); None otherwise."""
    spread = e.seed_spread
    if e.row["n_seeds"] != 1 or not spread:
        return None
    return (f"{e.label}: one seed, i.e. one trained model; its ± {e.row['ci95']:.2f} is over test episodes. The "
            f"method's measured seed-to-seed sd at this setting and profile is {spread['seed_sd']:.2f} points over "
            f"{spread['n_seeds']} seeds (benchmark/reference/seed_spread.csv): another seed can land about that far "
            "away")


def few_seeds(entries: list[Entry]) -> list[Entry]:
    """The entries with fewer than :data:`~benchmark.report.stats.MIN_SEEDS` seeds: paired tests with them compare
    trained models, not methods."""
    return [e for e in entries if int(e.row["n_seeds"]) < MIN_SEEDS]


def seeds_summary(entries: list[Entry]) -> str:
    """How many seeds (trained models) each entry has, in one sentence for the report's first paragraph."""
    by_n: dict[int, list[str]] = {}
    for e in entries:
        by_n.setdefault(int(e.row["n_seeds"]), []).append(
            f"{e.label} ({e.key['dataset']} {e.key['ways']}-way {e.key['shots']}-shot)")
    if len(by_n) == 1:
        n = next(iter(by_n))
        return (f"Every entry has {n} seed{'s' if n != 1 else ''}" + (
            " (one trained model per method and setting)" if n == 1 else "") + ".")
    parts = []
    most = max(by_n, key=lambda n: len(by_n[n]))
    for n in sorted(by_n, reverse=True):
        what = (f"the other {len(by_n[n])} entries" if n == most and len(by_n[n]) > 6 else ", ".join(by_n[n]))
        parts.append(f"{n} seed{'s' if n != 1 else ''}: {what}")
    return "Seeds per entry: " + "; ".join(parts) + "."


def build_entries(runs: list[Run]) -> list[Entry]:
    """The runs aggregated over seeds into entries (see the module docstring), sorted by dataset, split, ways, shots,
    test queries, backbone, profile, method order, overrides, precision and test fingerprint."""
    ref, survey, spread = load_reference(), load_survey(), load_seed_spread()
    infos = method_infos(runs, ref["method"])
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(tuple(r[k] for k in ENTRY_KEYS), []).append(r)
    entries = [_entry(dict(zip(ENTRY_KEYS, key_t)), sorted(rs, key=lambda r: int(r["seed"])), infos, ref, survey,
                      spread) for key_t, rs in groups.items()]
    entries.sort(key=lambda e: (norm_dataset(e.key["dataset"]), e.key["split"],
                                e.key["ways"], e.key["shots"], e.key["queries"],
                                e.key["backbone"], e.key["profile"], e.info.order, e.key["overrides"],
                                e.key["precision"], e.key["test_fingerprint"]))
    return entries


def _entry(key: dict, rs: list[Run], infos: dict[str, MethodInfo], ref: pd.DataFrame, survey: pd.DataFrame,
           spread: pd.DataFrame) -> Entry:
    """One entry: the runs ``rs`` (its seeds, in seed order) of the entry key ``key``."""
    info = infos[key["method"]]
    lengths = {len(r.accuracy) for r in rs}
    if len(lengths) != 1:  # same fingerprint implies the same episodes; guard against hand-edited records
        raise ReportError(f"runs {', '.join(r.path.name for r in rs)} share a test fingerprint but differ in "
                          "episode count")
    acc = np.mean([r.accuracy for r in rs], axis=0)
    ran = [r.config.get("hyperparameters") for r in rs]
    # published figures are for each dataset's usual split: none for another (e.g. Omniglot's lake split)
    pub = None if key["split"] else published_figure(ref, survey, info, key["dataset"], key["ways"],
                                                      key["shots"], ran)
    latest = max(rs, key=lambda r: str(r["finished_at"] or ""))
    diffs = protocol_differences(pub, key["dataset"], key["queries"], len(acc), backbone_facts(latest),
                                 ran) if pub else []
    seed_spread = measured_spread(spread, key["method"], key["dataset"], key["ways"], key["shots"], key["profile"],
                                  key["backbone"]) if not key["overrides"] else None
    return Entry(key, rs, info, acc, seed_curve([r.curve for r in rs]), _row(key, rs, info, acc, pub, diffs), pub,
                 seed_spread)


def _row(key: dict, rs: list[Run], info: MethodInfo, acc: np.ndarray, pub: dict | None, diffs: list[str]) -> dict:
    """The entry's row of the settings leaderboard (:data:`REPORT_LEADERBOARD_COLUMNS` but ``rank``)."""
    mean, ci = mean_ci95(acc)
    seed_means = [float(np.mean(r.accuracy)) for r in rs]
    caches = {c.get("file") or c.get("name"): float(c.get("seconds") or 0.0) for r in rs for c in (r["cache"] or [])}

    def avg(k):
        vals = [v for v in (_number(r[k]) for r in rs) if v is not None]
        return float(np.mean(vals)) if vals else math.nan

    return {
        "method": key["method"], "variant_of": info.variant_of or "", "family": info.family or rs[0]["family"],
        "overrides": key["overrides"], "dataset": key["dataset"], "ways": int(key["ways"]),
        "shots": int(key["shots"]), "queries": int(key["queries"]), "backbone": key["backbone"],
        "profile": key["profile"], "mean": mean, "ci95": ci, "n_episodes": len(acc), "n_seeds": len(rs),
        "seeds": " ".join(str(r["seed"]) for r in rs),
        "seed_sd": float(np.std(seed_means, ddof=1)) if len(rs) > 1 else math.nan,
        "published": pub["accuracy"] if pub else math.nan, "published_ci95": pub["ci95"] if pub else math.nan,
        "published_source": pub["source"] if pub else "",
        "published_comparable": (not diffs) if pub else None, "protocol_differences": "; ".join(diffs),
        "difference": mean - pub["accuracy"] if pub else math.nan,
        "train_episodes": avg("train_episodes"), "train_seconds": avg("train_seconds"),
        "ms_per_train_episode": avg("ms_per_train_episode"), "ms_per_test_episode": avg("ms_per_test_episode"),
        # forward+backward FLOPs of one training episode, counted by the harness (runs older than it: NaN)
        "flops_per_train_episode": avg("flops_per_train_episode"),
        "transductive": any(bool(r["transductive"]) for r in rs),
        "peak_memory_mb": max((float(r["peak_memory_mb"]) for r in rs if r["peak_memory_mb"] is not None),
                              default=math.nan),
        "memory_kind": _join(r["memory_kind"] for r in rs),
        # the run's own memory (peak minus the level when it began; runs older than the record: NaN)
        "peak_memory_increase_mb": max((float(r["peak_memory_increase_mb"]) for r in rs
                                        if _number(r["peak_memory_increase_mb"]) is not None), default=math.nan),
        "trainable_params": _join(r["trainable_params"] for r in rs),
        "adapted_params": _join(r["adapted_params"] for r in rs),
        "shared_seconds": sum(caches.values()) if caches else 0.0,
        "device": _join(r["device"] for r in rs), "test_fingerprint": key["test_fingerprint"],
        "dataset_fingerprint": _join(r["dataset_fingerprint"] for r in rs),
        "code_version": _join(r["code_version"] for r in rs), "run_ids": " ".join(r.path.name for r in rs),
        "paper_train_episodes": avg("paper_train_episodes"), "budget_fraction": avg("budget_fraction"),
        "split": key["split"], "precision": key["precision"],
        # the seed of the test episodes (with the fingerprint, what regenerates them); config, default 0
        "eval_seed": _join(r.config.get("eval_seed", 0) for r in rs),
        # True: every run deterministic; False: at least one was not (the report's notes say why); "" unknown
        # (runs older than the record)
        "deterministic": (False if any(r["deterministic"] is False for r in rs) else
                          True if all(r["deterministic"] is True for r in rs) else ""),
    }


def leaderboard_frame(entries: list[Entry], ranks: dict[tuple, int]) -> pd.DataFrame:
    """The settings leaderboard: one row per entry, columns :data:`REPORT_LEADERBOARD_COLUMNS`; ``rank`` from
    ``ranks`` (entry :attr:`~Entry.ident` -> rank, :func:`~benchmark.report.tables.entry_ranks`; NaN where none)."""
    return pd.DataFrame([{**e.row, "rank": ranks.get(e.ident, math.nan)} for e in entries])[REPORT_LEADERBOARD_COLUMNS]


def by_setting(entries: list[Entry]) -> dict[tuple, list[Entry]]:
    """The entries by :attr:`~Entry.setting`, in order."""
    out: dict[tuple, list[Entry]] = {}
    for e in entries:
        out.setdefault(e.setting, []).append(e)
    return out


def short_budgets(entries: list[Entry]) -> list[float]:
    """The training budgets, in % of the meta-training episodes of the method's ``paper`` profile (mean over seeds),
    of the entries that trained on less than the paper's budget (below 99.5%); entries with no recorded budget are
    left out."""
    return [100.0 * f for f in (e.row["budget_fraction"] for e in entries) if not math.isnan(f) and f < 0.995]

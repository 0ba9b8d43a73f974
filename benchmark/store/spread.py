"""Training variance measured from the records: the seed-to-seed spread of each setting's test accuracy.

A run's "± CI" is over test episodes for one trained model; it says nothing about how much another seed (another
trained model of the same method and configuration) would differ. :func:`seed_spread` measures that: for every
method and setting with several seeds in one or more results directories, the sd (ddof 1) of the per-seed mean test
accuracies, in percentage points. ``python scripts/seed_spread.py`` writes it as the reference table
``benchmark/reference/seed_spread.csv`` (columns :data:`SEED_SPREAD_COLUMNS`), which the report reads to give a
one-seed entry its method's measured spread.

Only runs at a method's defaults are measured (no ``--set`` overrides, float32, the dataset's default split); the
runs of one row share their test episodes (one test fingerprint) and differ only in their seed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .folders import RecordError, run_folders

#: The reference table's columns: the setting (``dataset``, ``method``, ``ways``, ``shots``, ``profile``,
#: ``backbone``), ``n_seeds`` (seeds measured), ``seed_sd`` (sd of the per-seed mean test accuracies, points, ddof 1),
#: ``seeds`` (the seeds, space-separated) and ``source`` (the command that ran the seeds, with the code version, the
#: device, the CPU instruction set and the threads the runs recorded).
SEED_SPREAD_COLUMNS = ["dataset", "method", "ways", "shots", "profile", "backbone", "n_seeds", "seed_sd", "seeds",
                       "source"]
#: The columns that name a row (one per method and setting)
SPREAD_KEY = ["dataset", "method", "ways", "shots", "profile", "backbone"]


def _default_run(summary: dict, config: dict) -> bool:
    """Whether a run ran at its method's defaults: no overrides, float32, the dataset's default split."""
    split, default = summary.get("split") or "", summary.get("default_split") or ""
    return not (config.get("overrides") or []) and (summary.get("precision") or "fp32") == "fp32" and (
        not split or not default or split == default)


def _source(key: dict, runs: list[dict]) -> str:
    seeds = " ".join(str(r["seed"]) for r in runs)
    envs = [r.get("environment") or {} for r in runs]

    def facts(values) -> str:
        return "/".join(dict.fromkeys(str(v) for v in values if v is not None)) or "not recorded"

    return (f"python -m benchmark.run --methods {key['method']} --dataset {key['dataset']} --ways {key['ways']} "
            f"--shots {key['shots']} --backbone {key['backbone']} --profile {key['profile']} --seeds {seeds} "
            f"(code {facts(str(r.get('code_version'))[:12] for r in runs)}; device {facts(r.get('device') for r in runs)}"
            f"; CPU instruction set {facts(e.get('cpu_capability') for e in envs)}; "
            f"{facts(e.get('threads') for e in envs)} threads)")


def seed_spread(results_dirs: Path | str | Sequence[Path | str], min_seeds: int = 3) -> tuple[pd.DataFrame, list[str]]:
    """The seed-to-seed spread of every method and setting with at least ``min_seeds`` seeds among the finished runs
    of ``results_dirs`` (one results directory or several): a frame with :data:`SEED_SPREAD_COLUMNS`, one row per
    method and setting, and notes (in words) on what was left out. A seed found twice (e.g. a copy in two
    directories) counts once (the one that finished last). Where one method and setting has runs on several test
    episode sets (other ``--queries``, ``--test-episodes`` or ``--eval-seed``), the set with the most seeds is
    measured. :class:`~benchmark.store.folders.RecordError` for unreadable records."""
    dirs = [results_dirs] if isinstance(results_dirs, (str, Path)) else list(results_dirs)
    groups: dict[tuple, dict[int, dict]] = {}
    skipped = 0
    for d in dirs:
        for folder in run_folders(Path(d)):
            if folder.missing():
                continue
            summary, config = folder.read_summary(), folder.read_config()
            if not _default_run(summary, config):
                skipped += 1
                continue
            acc = folder.read_test_episodes()["accuracy"].to_numpy(dtype=np.float64)
            key = tuple(summary.get(k) for k in SPREAD_KEY) + (summary.get("queries", 15),
                                                                summary.get("test_fingerprint"))
            run = {**summary, "mean_accuracy": 100.0 * float(np.mean(acc))}
            seeds = groups.setdefault(key, {})
            seed = int(summary["seed"])
            if seed not in seeds or str(run.get("finished_at") or "") > str(seeds[seed].get("finished_at") or ""):
                seeds[seed] = run
    notes = [f"{skipped} run(s) with overrides, bf16 or another split left out (the table is for the methods' "
             "defaults)"] if skipped else []
    best: dict[tuple, tuple] = {}
    for key, seeds in groups.items():
        short = key[:len(SPREAD_KEY)]
        if short in best:
            kept = best[short]
            notes.append(f"{'/'.join(map(str, short))}: runs on several test episode sets; the one with the most "
                         "seeds is measured")
            if len(seeds) <= len(kept[1]):
                continue
        best[short] = (key, seeds)
    rows = []
    for short, (key, seeds) in best.items():
        if len(seeds) < min_seeds:
            notes.append(f"{'/'.join(map(str, short))}: {len(seeds)} seed(s), fewer than {min_seeds}: not measured")
            continue
        runs = [seeds[s] for s in sorted(seeds)]
        k = dict(zip(SPREAD_KEY, short))
        rows.append({**k, "n_seeds": len(runs),
                     "seed_sd": float(np.std([r["mean_accuracy"] for r in runs], ddof=1)),
                     "seeds": " ".join(str(r["seed"]) for r in runs), "source": _source(k, runs)})
    df = pd.DataFrame(rows, columns=SEED_SPREAD_COLUMNS)
    return df.sort_values(SPREAD_KEY, ignore_index=True) if len(df) else df, notes


def merge_spread(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``old`` (a reference table) with the rows of ``new`` added, a row of ``new`` replacing the row of ``old``
    for the same method and setting."""
    old = old.reindex(columns=SEED_SPREAD_COLUMNS)
    if not len(new):
        return old
    if not len(old):
        return new.reindex(columns=SEED_SPREAD_COLUMNS)
    names = set(map(tuple, new[SPREAD_KEY].astype(str).to_numpy()))
    keep = [tuple(r) not in names for r in old[SPREAD_KEY].astype(str).to_numpy()]
    out = pd.concat([old[keep], new.reindex(columns=SEED_SPREAD_COLUMNS)], ignore_index=True)
    return out.sort_values(SPREAD_KEY, ignore_index=True)


__all__ = ["SEED_SPREAD_COLUMNS", "SPREAD_KEY", "seed_spread", "merge_spread", "RecordError"]

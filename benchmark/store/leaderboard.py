"""The per-run leaderboard, ``<results_dir>/leaderboard.csv``: one row per finished run, rebuilt from the runs'
summaries after each ``benchmark.run`` command.

Not to be confused with the report's settings leaderboard (``reports/<name>/leaderboard.csv``, one row per method x
setting aggregated over seeds, :data:`benchmark.report.REPORT_LEADERBOARD_COLUMNS`): both files keep the name
``leaderboard.csv``, and this module is about the per-run one only.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .files import atomic_write_csv
from .folders import RunFolder, finished_runs, load_summary, runs_leaderboard_lock, runs_leaderboard_path

RUNS_LEADERBOARD_COLUMNS = [
    "run_id", "method", "family", "dataset", "split", "ways", "shots", "backbone", "profile", "seed",
    "mean", "ci95", "n_episodes", "train_episodes", "train_seconds", "ms_per_train_episode",
    "ms_per_test_episode", "peak_memory_mb", "trainable_params", "adapted_params", "device",
    "test_fingerprint", "code_version", "budget_fraction", "executor", "node", "precision", "deterministic",
    "eval_seed",
    "flops_per_train_episode", "transductive", "origin",
]
#: Columns written as integers (counts, seeds), not as floats such as ``80.0``; empty where a run lacks the field.
INTEGER_COLUMNS = ["ways", "shots", "seed", "n_episodes", "train_episodes", "trainable_params", "adapted_params",
                   "eval_seed"]


def origin_label(origin: dict | None) -> str:
    """A run's method origin in one cell: ``built-in``, the package of an entry point, or a method file's path."""
    o = origin or {"kind": "builtin"}
    if o.get("kind") == "entry_point":
        return f"package {o.get('package')} {o.get('version')}"
    if o.get("kind") == "file":
        return f"file {o.get('path')}"
    return "built-in"


def runs_leaderboard(results_dir: Path) -> pd.DataFrame:
    """One row per finished run, columns :data:`RUNS_LEADERBOARD_COLUMNS` (accuracies in percent)."""
    rows = []
    for d in finished_runs(results_dir):
        s = load_summary(d)
        where = s.get("placement") or {}  # executor, node, cpus, gpu_fraction (older runs: none)
        row = {c: s.get(c, where.get(c)) for c in RUNS_LEADERBOARD_COLUMNS}
        if row["eval_seed"] is None:  # the seed of the test (and validation) episodes: in the run's config
            row["eval_seed"] = _config(d).get("eval_seed", 0)
        row["origin"] = origin_label((s.get("method_facts") or {}).get("origin"))
        rows.append(row)
    df = pd.DataFrame(rows, columns=RUNS_LEADERBOARD_COLUMNS)
    for c in INTEGER_COLUMNS:
        df[c] = integer_column(df[c])
    return df.sort_values(["dataset", "ways", "shots", "backbone", "profile", "method", "seed"], kind="stable",
                          ignore_index=True) if len(df) else df


def _config(run_dir: Path) -> dict:
    """The run's ``config.json`` ({} when unreadable: the leaderboard lists what it can)."""
    try:
        return RunFolder(run_dir.parent, run_dir.name).read_config() or {}
    except (OSError, ValueError):
        return {}


def integer_column(values: pd.Series) -> pd.Series:
    """``values`` as pandas' nullable integers where every present value is a whole number (a CSV then shows ``80``,
    not ``80.0``; absent values stay empty); unchanged otherwise (e.g. ``trainable_params`` of runs that recorded a
    text)."""
    num = pd.to_numeric(values, errors="coerce")
    present = values.notna() & (values.astype(str) != "")
    if num[present].isna().any() or not (num[present] % 1 == 0).all():
        return values
    return num.round().astype("Int64")


def write_runs_leaderboard(results_dir: Path) -> pd.DataFrame:
    """Rebuild the per-run ``leaderboard.csv`` from the finished runs' summaries. Safe when several processes rebuild
    at once: under the results directory's leaderboard lock, read and atomic replace, so the last rebuild sees every
    run finished before it and a reader never sees half a file."""
    results_dir = Path(results_dir)
    with runs_leaderboard_lock(results_dir):
        df = runs_leaderboard(results_dir)
        atomic_write_csv(runs_leaderboard_path(results_dir), df)
    return df

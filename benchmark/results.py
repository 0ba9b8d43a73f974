"""The results store: one folder per finished run, written atomically, and a leaderboard rebuilt from them.

Layout under the results directory::

    <run-id>/                 a finished run (renamed into place from <run-id>.partial/ in one step)
        config.json           what was run: method, setting, backbone, profile, seed, hyperparameters, episode specs
        curve.csv             validation accuracy every N steps: step, episodes, train_seconds, val_acc, val_ci95, ...
        test_episodes.csv     one row per test episode: index, accuracy, adapt_seconds
        summary.json          headline numbers, cost, provenance (versions, device, commit, episode fingerprints),
                              method_facts and backbone_facts (benchmark/facts.py)
    <run-id>.partial/         a run in progress: checkpoint.pt (resume point) and the files written so far
    cache/                    artefacts shared between runs (e.g. MTL's pretrained backbone), with their cost
    leaderboard.csv           one row per finished run, rebuilt from the summaries

Every file is written to a temporary name and renamed (``os.replace``), so a crash leaves either the old file or the
new one, never half of one.
"""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

LEADERBOARD_COLUMNS = [
    "run_id", "method", "family", "dataset", "ways", "shots", "backbone", "profile", "seed",
    "mean", "ci95", "n_episodes", "train_episodes", "train_seconds", "ms_per_train_episode",
    "ms_per_test_episode", "peak_memory_mb", "trainable_params", "adapted_params", "device",
    "test_fingerprint", "code_version", "budget_fraction",
]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_csv(path: Path, df: pd.DataFrame) -> None:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def mean_ci95(acc: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and 95% confidence half-width, 1.96 * sd / sqrt(n) (sample sd, ddof=1), of per-episode accuracies."""
    a = np.asarray(acc, dtype=np.float64)
    if len(a) == 0:
        return math.nan, math.nan
    sd = a.std(ddof=1) if len(a) > 1 else 0.0
    return float(a.mean()), float(1.96 * sd / math.sqrt(len(a)))


def check_writable(results_dir: Path) -> None:
    """Raise OSError with a clear message when runs cannot be written under ``results_dir``."""
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=results_dir, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OSError(f"results directory {results_dir} is not writable ({e.strerror or e}); "
                      "choose another with --results-dir") from None


def finished_runs(results_dir: Path) -> list[Path]:
    """Folders of finished runs (those with a summary.json), sorted by name."""
    if not results_dir.is_dir():
        return []
    return sorted(p for p in results_dir.iterdir()
                  if p.is_dir() and not p.name.endswith(".partial") and (p / "summary.json").is_file())


def load_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def leaderboard(results_dir: Path) -> pd.DataFrame:
    """One row per finished run, columns :data:`LEADERBOARD_COLUMNS` (accuracies in percent)."""
    rows = []
    for d in finished_runs(results_dir):
        s = load_summary(d)
        rows.append({c: s.get(c) for c in LEADERBOARD_COLUMNS})
    df = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)
    return df.sort_values(["dataset", "ways", "shots", "backbone", "profile", "method", "seed"], kind="stable",
                          ignore_index=True) if len(df) else df


def write_leaderboard(results_dir: Path) -> pd.DataFrame:
    df = leaderboard(results_dir)
    atomic_write_csv(results_dir / "leaderboard.csv", df)
    return df

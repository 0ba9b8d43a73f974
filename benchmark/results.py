"""The results store: one folder per finished run, written atomically, and a leaderboard rebuilt from them.

Layout under the results directory::

    <run-id>/                 a finished run (renamed into place from <run-id>.partial/ in one step)
        config.json           what was run: method, setting, backbone, profile, seed, hyperparameters, episode specs
        curve.csv             validation accuracy every N steps: step, episodes, train_seconds, val_acc, val_ci95, ...
        test_episodes.csv     one row per test episode: index, accuracy, adapt_seconds
        summary.json          headline numbers, cost, provenance (versions, device, commit, episode fingerprints),
                              method_facts and backbone_facts (benchmark/facts.py)
        model.pt              the best-validation model and what rebuilding it needs (benchmark/models.py); absent
                              for runs made with --no-save-model
        evaluations/<eval-id>/  re-tests of the saved model by benchmark.evaluate (EvaluationFolder):
            evaluation.json   what was tested (dataset, split, setting, episode fingerprint), the training run, result
            test_episodes.csv one row per episode: index, accuracy, adapt_seconds
    <run-id>.partial/         a run in progress: checkpoint.pt (resume point) and the files written so far
    cache/                    artefacts shared between runs (e.g. MTL's pretrained backbone), with their cost
    leaderboard.csv           one row per finished run, rebuilt from the summaries

Every file is written to a temporary name and renamed (``os.replace``), so a crash leaves either the old file or the
new one, never half of one. :class:`RunFolder` is the one owner of a run's folder and the only code that knows these
names: the runner writes through it and the report (:mod:`benchmark.report.records`) reads through it. This module
imports torch only inside :func:`atomic_torch_save`, so the report can use it without torch.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

LEADERBOARD = "leaderboard.csv"  # one row per finished run, under the results directory
CACHE_DIR = "cache"  # artefacts shared between runs, under the results directory
PARTIAL_SUFFIX = ".partial"  # <run-id>.partial/: a run in progress

LEADERBOARD_COLUMNS = [
    "run_id", "method", "family", "dataset", "split", "ways", "shots", "backbone", "profile", "seed",
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


def atomic_torch_save(path: Path, obj: Any) -> int:
    """``torch.save(obj)`` to ``path`` atomically; returns the file's size in bytes."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return len(data)


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


class RunFolder:
    """The folder of one run, ``<results_dir>/<run_id>/``: created as ``<run_id>.partial/`` (which also holds the
    resume checkpoint), filled with the record files, each written atomically, and renamed into place in one step when
    the run is finished; then read back (summary, config, curve, test episodes) by the runner and the report."""

    CONFIG = "config.json"
    CURVE = "curve.csv"
    TEST_EPISODES = "test_episodes.csv"
    SUMMARY = "summary.json"
    CHECKPOINT = "checkpoint.pt"
    MODEL = "model.pt"  # the saved model (benchmark.models)
    EVALUATIONS = "evaluations"  # re-tests of the saved model (EvaluationFolder)
    RECORDS = (SUMMARY, TEST_EPISODES, CURVE)  # what a finished run has (config.json too, except in test fixtures)

    def __init__(self, results_dir: str | Path, run_id: str):
        self.results_dir, self.run_id = Path(results_dir), run_id
        self.path = self.results_dir / run_id  # the finished run
        self.partial = self.results_dir / f"{run_id}{PARTIAL_SUFFIX}"  # the run in progress

    def __repr__(self) -> str:
        return f"RunFolder({str(self.results_dir)!r}, {self.run_id!r})"

    @property
    def checkpoint(self) -> Path:
        return self.partial / self.CHECKPOINT

    @property
    def cache_dir(self) -> Path:
        return cache_dir(self.results_dir)

    @property
    def model(self) -> Path:
        """The finished run's saved model."""
        return self.path / self.MODEL

    # ---- writing
    def write_model(self, payload: dict) -> int:
        """Write ``model.pt`` into the partial folder, atomically (before :meth:`finish`); returns its size in bytes."""
        return atomic_torch_save(self.partial / self.MODEL, payload)

    def is_finished(self) -> bool:
        return (self.path / self.SUMMARY).is_file()

    def start(self) -> None:
        """Create ``<run_id>.partial/`` (kept as it is when resuming)."""
        self.partial.mkdir(parents=True, exist_ok=True)

    def finish(self, config: dict, curve: pd.DataFrame, test_episodes: pd.DataFrame, summary: dict) -> None:
        """Write the record files into the partial folder (the summary last), drop the checkpoint and rename the
        folder into place; a stale ``<run_id>/`` without a summary (never a finished run) is replaced."""
        atomic_write_json(self.partial / self.CONFIG, config)
        atomic_write_csv(self.partial / self.CURVE, curve)
        atomic_write_csv(self.partial / self.TEST_EPISODES, test_episodes)
        atomic_write_json(self.partial / self.SUMMARY, summary)
        self.checkpoint.unlink(missing_ok=True)
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.partial, self.path)

    # ---- reading a finished run
    def missing(self) -> list[str]:
        """The record files (:attr:`RECORDS`) the finished folder lacks."""
        return [f for f in self.RECORDS if not (self.path / f).is_file()]

    def read_summary(self) -> dict:
        return json.loads((self.path / self.SUMMARY).read_text())

    def read_config(self) -> dict:
        """The run's configuration; empty when the folder has none."""
        f = self.path / self.CONFIG
        return json.loads(f.read_text()) if f.is_file() else {}

    def read_curve(self) -> pd.DataFrame:
        """The convergence curve; an empty frame when it has no points."""
        try:
            return pd.read_csv(self.path / self.CURVE)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()

    def read_test_episodes(self) -> pd.DataFrame:
        return pd.read_csv(self.path / self.TEST_EPISODES)


def cache_dir(results_dir: str | Path) -> Path:
    """Where artefacts shared between runs are cached under ``results_dir``."""
    return Path(results_dir) / CACHE_DIR


def partial_runs(results_dir: Path) -> list[str]:
    """Names of the unfinished run folders (``*.partial``), sorted."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return []
    return sorted(p.name for p in results_dir.iterdir() if p.is_dir() and p.name.endswith(PARTIAL_SUFFIX))


def run_folders(results_dir: Path) -> list[RunFolder]:
    """Every folder under ``results_dir`` that may be a finished run (not partial, not the cache, not hidden),
    sorted by name."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return []
    return [RunFolder(results_dir, p.name) for p in sorted(results_dir.iterdir())
            if p.is_dir() and not p.name.endswith(PARTIAL_SUFFIX) and p.name != CACHE_DIR and not p.name.startswith(".")]


def finished_runs(results_dir: Path) -> list[Path]:
    """Folders of finished runs (those with a summary.json), sorted by name."""
    return [f.path for f in run_folders(results_dir) if f.is_finished()]


def load_summary(run_dir: Path) -> dict:
    return RunFolder(run_dir.parent, run_dir.name).read_summary()


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
    atomic_write_csv(results_dir / LEADERBOARD, df)
    return df


# ------------------------------------------------------------------------------------------------ evaluations
class EvaluationFolder:
    """One re-test of a finished run's saved model by ``benchmark.evaluate``:
    ``<run dir>/evaluations/<eval_id>/`` with ``evaluation.json`` (what was tested, the training run, the result) and
    ``test_episodes.csv`` (index, accuracy, adapt_seconds). Written into ``<eval_id>.partial/`` and renamed into
    place, so a folder with ``evaluation.json`` is complete; the training run's own records are never touched."""

    RECORD = "evaluation.json"
    TEST_EPISODES = "test_episodes.csv"

    def __init__(self, run_dir: str | Path, eval_id: str):
        self.run_dir, self.eval_id = Path(run_dir), eval_id
        self.path = self.run_dir / RunFolder.EVALUATIONS / eval_id
        self.partial = self.path.parent / f"{eval_id}{PARTIAL_SUFFIX}"

    def __repr__(self) -> str:
        return f"EvaluationFolder({str(self.run_dir)!r}, {self.eval_id!r})"

    def is_finished(self) -> bool:
        return (self.path / self.RECORD).is_file()

    def write(self, record: dict, test_episodes: pd.DataFrame) -> None:
        """Write both files (the record last) and rename the folder into place."""
        self.partial.mkdir(parents=True, exist_ok=True)
        atomic_write_csv(self.partial / self.TEST_EPISODES, test_episodes)
        atomic_write_json(self.partial / self.RECORD, record)
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.partial, self.path)

    def read_record(self) -> dict:
        return json.loads((self.path / self.RECORD).read_text())

    def read_test_episodes(self) -> pd.DataFrame:
        return pd.read_csv(self.path / self.TEST_EPISODES)


def evaluation_folders(run_dir: str | Path) -> list[EvaluationFolder]:
    """The finished evaluations of the run in ``run_dir``, sorted by id."""
    root = Path(run_dir) / RunFolder.EVALUATIONS
    if not root.is_dir():
        return []
    out = [EvaluationFolder(run_dir, p.name) for p in sorted(root.iterdir())
           if p.is_dir() and not p.name.endswith(PARTIAL_SUFFIX)]
    return [f for f in out if f.is_finished()]

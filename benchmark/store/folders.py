"""The run store: the one owner of the layout of a results directory, and so of every file name in it.

Layout under the results directory::

    <run-id>/                 a finished run (renamed into place from <run-id>.partial/ in one step)
        config.json           what was run: method, setting, backbone, profile, seed, hyperparameters, episode specs
        curve.csv             validation accuracy every N steps: step, episodes, train_seconds, val_acc, val_ci95, ...
        test_episodes.csv     one row per test episode: index, accuracy, adapt_seconds
        summary.json          headline numbers, cost, provenance (versions, device, commit, episode fingerprints),
                              method_facts and backbone_facts (benchmark/pipeline/facts.py)
        model.pt              the best-validation model and what rebuilding it needs (benchmark/pipeline/models.py);
                              absent for runs made with --no-save-model
        evaluations/<eval-id>/  re-tests of the saved model by benchmark.evaluate (EvaluationFolder):
            evaluation.json   what was tested (dataset, split, setting, episode fingerprint), the training run, result
            test_episodes.csv one row per episode: index, accuracy, adapt_seconds
    <run-id>.partial/         a run in progress: checkpoint.pt (resume point) and the files written so far;
        failed.json           a run that failed: reason, step, last metrics, where it ran (absent while it runs)
        traceback.txt         the traceback of a run that raised
    .locks/<run-id>.lock      OS file lock (fcntl.flock) held by the process training the run; holds its pid and host
    .locks/report.lock        held while a benchmark.run command builds the report of the results directory
    cache/                    artefacts shared between runs (e.g. MTL's pretrained backbone), with their cost
                              (:func:`artefact_dir`; benchmark/pipeline/method_context.py)
    leaderboard.csv           the per-run leaderboard: one row per finished run, rebuilt from the summaries under
                              .locks/leaderboard.lock (benchmark/store/leaderboard.py); not the report's
                              leaderboard.csv

Every file is written to a temporary name and renamed (``os.replace``, :mod:`benchmark.store.files`), so a crash leaves
either the old file or the new one, never half of one. :class:`RunFolder` is the one owner of a run's folder and
:class:`EvaluationFolder` of an evaluation's: the runner and ``benchmark.evaluate`` write through them, and
:mod:`benchmark.pipeline.models`, ``benchmark.evaluate`` and the report (:mod:`benchmark.report.records`) read through them.
This module imports torch only inside :func:`benchmark.store.files.atomic_torch_save` (when a model is written), so the
report can use it without torch.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from .files import (
    FileLock,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    read_csv,
)

RUNS_LEADERBOARD = "leaderboard.csv"  # the per-run leaderboard, one row per finished run, under the results directory
ARTEFACT_DIR = "cache"  # artefacts shared between runs, under the results directory
PARTIAL_SUFFIX = ".partial"  # <run-id>.partial/: a run in progress
LOCK_DIR = ".locks"  # OS file locks of runs being trained and of the per-run leaderboard, under the results directory
RUNS_LEADERBOARD_LOCK = "leaderboard.lock"  # in .locks/: held while the per-run leaderboard is rebuilt
REPORT_LOCK = "report.lock"  # in .locks/: held while benchmark.run builds the report of the results directory


class RecordError(ValueError):
    """A record file that cannot be what it claims to be: unreadable, not JSON (junk, truncated, empty), not a JSON
    object (a list, a number), or lacking a field every such record has. Its message is one line naming the file and
    what to do (delete the folder and re-run), for every command that reads records."""


#: The fields every ``summary.json`` benchmark.run has written since its first version: a summary without one of
#: them is not a run summary (a foreign or damaged file).
SUMMARY_KEYS = ("run_id", "method", "dataset", "ways", "shots", "mean", "ci95", "n_episodes")


def read_json_record(path: Path, what: str, fix: str, need: tuple[str, ...] = ()) -> dict:
    """The JSON object in ``path`` (a record file: ``what`` names it, e.g. "run summary"); :class:`RecordError` (one
    line: the file, what is wrong with it, then ``fix``) when it cannot be read, is not JSON (junk, truncated, empty),
    is not an object (a list, a number) or lacks a field of ``need``."""
    try:
        obj = json.loads(Path(path).read_text())
        problem = None if isinstance(obj, dict) else f"holds a JSON {type(obj).__name__}, not a {what}"
    except UnicodeDecodeError:
        problem = "is not text"
    except json.JSONDecodeError as e:
        problem = "is empty" if not e.doc.strip() else f"is not valid JSON ({e.msg} at line {e.lineno})"
    except OSError as e:
        problem = f"cannot be read ({e.strerror or e})"
    if problem is None:
        lacking = [k for k in need if k not in obj]
        problem = f"lacks {', '.join(lacking)}, so it is not a {what}" if lacking else None
    if problem is not None:
        raise RecordError(f"{path} {problem}: {fix}")
    return obj


class RunFolder:
    """The folder of one run, ``<results_dir>/<run_id>/``: created as ``<run_id>.partial/`` (which also holds the
    resume checkpoint), filled with the record files, each written atomically, and renamed into place in one step when
    the run is finished; then read back (summary, config, curve, test episodes, saved model) by the runner,
    :mod:`benchmark.pipeline.models`, ``benchmark.evaluate`` and the report."""

    CONFIG = "config.json"
    CURVE = "curve.csv"
    TEST_EPISODES = "test_episodes.csv"
    SUMMARY = "summary.json"
    CHECKPOINT = "checkpoint.pt"
    FAILED = "failed.json"  # in <run_id>.partial/: why, where and at which step the run failed
    TRACEBACK = "traceback.txt"  # in <run_id>.partial/: the traceback of a run that raised
    MODEL = "model.pt"  # the saved model (benchmark.pipeline.models)
    EVALUATIONS = "evaluations"  # re-tests of the saved model (EvaluationFolder)
    RECORDS = (SUMMARY, TEST_EPISODES, CURVE)  # what a finished run has (config.json too, except in test fixtures)

    def __init__(self, results_dir: str | Path, run_id: str):
        self.results_dir, self.run_id = Path(results_dir), run_id
        self.path = self.results_dir / run_id  # the finished run
        self.partial = self.results_dir / f"{run_id}{PARTIAL_SUFFIX}"  # the run in progress

    @classmethod
    def from_path(cls, path: str | Path) -> "RunFolder":
        """The finished run whose folder is ``path`` (``results/<run-id>``), or which holds the file ``path`` (its
        ``model.pt``: any ``*.pt``)."""
        d = Path(path)
        d = d.parent if d.suffix == ".pt" else d
        return cls(d.parent, d.name)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.results_dir)!r}, {self.run_id!r})"

    @property
    def checkpoint(self) -> Path:
        return self.partial / self.CHECKPOINT

    def lock(self) -> FileLock:
        """The run's OS file lock, ``.locks/<run_id>.lock`` (outside the run folder, which is renamed when finished):
        whoever trains the run holds it (:class:`FileLock`)."""
        return FileLock(self.results_dir / LOCK_DIR / f"{self.run_id}.lock")

    @property
    def model(self) -> Path:
        """The finished run's saved model."""
        return self.path / self.MODEL

    def has_model(self) -> bool:
        """Whether the finished run kept its model (not when it ran with ``--no-save-model``)."""
        return self.model.is_file()

    # ---- writing
    def write_model(self, payload: dict) -> int:
        """Write ``model.pt`` into the partial folder, atomically (before :meth:`finish`); returns its size in bytes."""
        return atomic_torch_save(self.partial / self.MODEL, payload)

    def is_finished(self) -> bool:
        return (self.path / self.SUMMARY).is_file()

    def start(self) -> None:
        """Create ``<run_id>.partial/`` (kept as it is when resuming, checkpoint included); a failure recorded by an
        earlier attempt is cleared, since this one retries the run."""
        self.partial.mkdir(parents=True, exist_ok=True)
        (self.partial / self.FAILED).unlink(missing_ok=True)
        (self.partial / self.TRACEBACK).unlink(missing_ok=True)

    def fail(self, record: dict, traceback: str | None = None) -> None:
        """Record that the run failed: ``failed.json`` (``record``: reason, step, last metrics, where it ran) and,
        for a run that raised, ``traceback.txt``, in ``<run_id>.partial/``; the checkpoint stays, so that re-running
        the command retries the run from it."""
        self.partial.mkdir(parents=True, exist_ok=True)
        if traceback is not None:
            atomic_write_text(self.partial / self.TRACEBACK, traceback)
            record = {**record, "traceback_file": self.TRACEBACK}
        atomic_write_json(self.partial / self.FAILED, {"run_id": self.run_id, **record})

    def is_failed(self) -> bool:
        return not self.is_finished() and (self.partial / self.FAILED).is_file()

    def read_failure(self) -> dict:
        """The failure record (:class:`RecordError` when it is damaged)."""
        return read_json_record(self.partial / self.FAILED, "failure record",
                                f"delete {self.partial} to retry the run from scratch", ("run_id",))

    # ---- moving a run between machines without a shared filesystem
    def pack(self, finished: bool = True) -> dict[str, bytes]:
        """The files of the finished folder (``finished``) or of the partial one, by name, as bytes."""
        d = self.path if finished else self.partial
        return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()} if d.is_dir() else {}

    def unpack(self, files: dict[str, bytes], finished: bool = True) -> None:
        """Write ``files`` (from :meth:`pack` on another machine) as this run's finished folder (``finished``) or its
        partial folder, atomically: into a hidden temporary folder, renamed into place in one step."""
        self.results_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.results_dir, prefix=f".{self.run_id}.incoming-"))
        try:
            for name, data in files.items():
                if "/" in name or name.startswith("."):
                    raise ValueError(f"unexpected file name {name!r} in a packed run folder")
                atomic_write_bytes(tmp / name, data)
            target = self.path if finished else self.partial
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
            if finished and self.partial.exists():
                shutil.rmtree(self.partial)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

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

    def _fix(self) -> str:
        return f"delete the folder {self.path} and re-run it (the same benchmark.run command)"

    def read_summary(self, need: tuple[str, ...] = SUMMARY_KEYS) -> dict:
        """The run's summary, upgraded to the current fields (:func:`upgrade_summary`). :class:`RecordError` (one line
        naming the file and the fix) when it is damaged or foreign: not a JSON object, or without a field of ``need``
        (default :data:`SUMMARY_KEYS`), or when its ``config.json`` is damaged."""
        summary = read_json_record(self.path / self.SUMMARY, "run summary", self._fix(), need)
        return upgrade_summary(summary, self.read_config())

    def read_config(self) -> dict:
        """The run's configuration; empty when the folder has none; :class:`RecordError` when it is damaged (not a
        JSON object)."""
        f = self.path / self.CONFIG
        return read_json_record(f, "run configuration", self._fix()) if f.is_file() else {}

    def check_finished(self) -> None:
        """:class:`RecordError` unless the finished run's records can be read: a valid summary and configuration, and
        every record file (:meth:`missing`)."""
        self.read_summary()
        missing = self.missing()
        if missing:
            raise RecordError(f"{self.path} lacks {', '.join(missing)}, so it is not a finished run: {self._fix()}")

    def read_curve(self) -> pd.DataFrame:
        """The convergence curve; an empty frame when it has no points."""
        try:
            return read_csv(self.path / self.CURVE)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()

    def read_test_episodes(self) -> pd.DataFrame:
        return read_csv(self.path / self.TEST_EPISODES)


def upgrade_summary(summary: dict, config: dict | None = None) -> dict:
    """An older summary with the fields added since, at the value they had then (done once, when read; checkpoints
    are upgraded likewise when loaded): ``precision`` (runs older than the field ran in float32) and ``queries``
    (15 per class). A summary that is not a JSON object is returned as it is (the reader refuses it)."""
    if not isinstance(summary, dict):
        return summary
    config = config if isinstance(config, dict) else {}
    summary["precision"] = summary.get("precision") or config.get("precision") or "fp32"
    summary.setdefault("queries", config.get("queries", 15))
    return summary


def test_table(accuracy, adapt_seconds) -> pd.DataFrame:
    """The ``test_episodes.csv`` table of a run or an evaluation: one row per test episode (index, accuracy in
    [0, 1], adaptation seconds)."""
    import numpy as np

    return pd.DataFrame({"episode": np.arange(len(accuracy)), "accuracy": accuracy, "adapt_seconds": adapt_seconds})


def model_path(run: str | Path) -> Path:
    """``run`` (a run folder, or its ``model.pt``) as the path of its ``model.pt``."""
    run = Path(run)
    return run if run.suffix == ".pt" else run / RunFolder.MODEL


def artefact_dir(results_dir: str | Path) -> Path:
    """Where artefacts shared between runs are cached under ``results_dir`` (``cache/``)."""
    return Path(results_dir) / ARTEFACT_DIR


def runs_leaderboard_path(results_dir: str | Path) -> Path:
    """The per-run leaderboard's file, ``<results_dir>/leaderboard.csv``."""
    return Path(results_dir) / RUNS_LEADERBOARD


def report_lock(results_dir: str | Path) -> FileLock:
    """The lock a ``benchmark.run`` command holds while it builds the report of ``results_dir``
    (``<results_dir>/.locks/report.lock``), so that two commands on one results directory never interleave their
    report files."""
    return FileLock(Path(results_dir) / LOCK_DIR / REPORT_LOCK)


def runs_leaderboard_lock(results_dir: str | Path) -> FileLock:
    """The lock held while the per-run leaderboard is rebuilt, ``<results_dir>/.locks/leaderboard.lock``."""
    return FileLock(Path(results_dir) / LOCK_DIR / RUNS_LEADERBOARD_LOCK)


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
    return [RunFolder(results_dir, p.name) for p in sorted(results_dir.iterdir()) if p.is_dir()
            and not p.name.endswith(PARTIAL_SUFFIX) and p.name != ARTEFACT_DIR and not p.name.startswith(".")]


def failed_runs(results_dir: Path) -> list[RunFolder]:
    """Unfinished runs whose last attempt failed (``<run_id>.partial/failed.json``), sorted by run id."""
    return [f for f in (RunFolder(results_dir, n[:-len(PARTIAL_SUFFIX)]) for n in partial_runs(results_dir))
            if f.is_failed()]


def finished_runs(results_dir: Path) -> list[Path]:
    """Folders of finished runs (those with a summary.json), sorted by name."""
    return [f.path for f in run_folders(results_dir) if f.is_finished()]


def load_summary(run_dir: Path) -> dict:
    """The summary of the finished run in ``run_dir`` (:class:`RecordError` when it is damaged)."""
    return RunFolder(run_dir.parent, run_dir.name).read_summary()


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

    def read_record(self, need: tuple[str, ...] = ()) -> dict:
        """The evaluation's record; :class:`RecordError` when it is damaged (not a JSON object) or lacks a field of
        ``need``."""
        return read_json_record(self.path / self.RECORD, "evaluation record",
                                f"delete the folder {self.path} and run benchmark.evaluate again", need)

    def read_test_episodes(self) -> pd.DataFrame:
        return read_csv(self.path / self.TEST_EPISODES)


def evaluation_folders(run_dir: str | Path) -> list[EvaluationFolder]:
    """The finished evaluations of the run in ``run_dir``, sorted by id."""
    root = Path(run_dir) / RunFolder.EVALUATIONS
    if not root.is_dir():
        return []
    out = [EvaluationFolder(run_dir, p.name) for p in sorted(root.iterdir())
           if p.is_dir() and not p.name.endswith(PARTIAL_SUFFIX)]
    return [f for f in out if f.is_finished()]

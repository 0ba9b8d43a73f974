"""Run folders read into :class:`Run` records, and each method's facts."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .common import ENTRY_KEYS, ReportError

REQUIRED_FILES = ("summary.json", "test_episodes.csv", "curve.csv")


@dataclass
class Run:
    path: Path
    summary: dict
    config: dict
    accuracy: np.ndarray  # per test episode, in %
    adapt_seconds: np.ndarray
    curve: pd.DataFrame

    def __getitem__(self, k):
        return self.summary.get(k)


@dataclass
class Runs:
    runs: list[Run]
    notes: list[str] = field(default_factory=list)


def _overrides_text(config: dict) -> str:
    ov = config.get("overrides") or []
    return " ".join(f"{k}={v}" for k, v in ov)


def load_runs(results_dir: Path, run_ids: list[str] | None = None) -> Runs:
    """Finished runs under ``results_dir`` (only ``run_ids`` when given). ``*.partial`` folders are ignored with a
    note; a finished folder missing a file or with unreadable records raises :class:`ReportError`."""
    results_dir = Path(results_dir)
    if not results_dir.exists():
        raise ReportError(f"results directory {results_dir} does not exist; run python -m benchmark.run first "
                          "or pass --results-dir")
    if not results_dir.is_dir():
        raise ReportError(f"results directory {results_dir} is not a folder")
    notes = []
    partial = sorted(p.name for p in results_dir.iterdir() if p.is_dir() and p.name.endswith(".partial"))
    if partial:
        notes.append(f"{len(partial)} unfinished run(s) ignored ({', '.join(partial)}); the same benchmark.run "
                     "command resumes them")
    dirs = sorted(p for p in results_dir.iterdir() if p.is_dir() and not p.name.endswith(".partial")
                  and p.name != "cache" and not p.name.startswith("."))
    if run_ids is not None:
        wanted = set(run_ids)
        dirs = [d for d in dirs if d.name in wanted]
    runs = []
    for d in dirs:
        present = [f for f in REQUIRED_FILES if (d / f).is_file()]
        if not present:
            continue  # not a run folder
        missing = [f for f in REQUIRED_FILES if f not in present]
        if missing:
            raise ReportError(f"run folder {d} is incomplete (missing {', '.join(missing)}); a finished run has "
                              f"{', '.join(REQUIRED_FILES)}: delete the folder and re-run it")
        try:
            summary = json.loads((d / "summary.json").read_text())
            config = json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else {}
            ep = pd.read_csv(d / "test_episodes.csv")
            try:
                curve = pd.read_csv(d / "curve.csv")
            except pd.errors.EmptyDataError:
                curve = pd.DataFrame()
        except (OSError, ValueError, pd.errors.ParserError) as e:
            raise ReportError(f"cannot read the records of {d}: {str(e).splitlines()[0] if str(e) else e!r}") from None
        need = ("method", "dataset", "ways", "shots", "backbone", "profile", "seed", "test_fingerprint")
        lacking = [k for k in need if summary.get(k) is None]
        if lacking or "accuracy" not in ep.columns:
            raise ReportError(f"records of {d} lack {', '.join(lacking) or 'the accuracy column'}; "
                              "were they written by benchmark.run?")
        acc = 100.0 * ep["accuracy"].to_numpy(dtype=np.float64)
        if summary.get("n_episodes") is not None and len(acc) != int(summary["n_episodes"]):
            raise ReportError(f"run folder {d} is inconsistent: test_episodes.csv has {len(acc)} rows, summary.json "
                              f"says {summary['n_episodes']} episodes")
        summary.setdefault("queries", config.get("queries", 15))
        summary["overrides"] = _overrides_text(config)
        runs.append(Run(d, summary, config, acc,
                        ep["adapt_seconds"].to_numpy(dtype=np.float64) if "adapt_seconds" in ep else np.array([]),
                        curve))
    if not runs:
        where = f"{results_dir}" + (f" among the runs {', '.join(run_ids)}" if run_ids is not None else "")
        extra = f" ({len(partial)} unfinished *.partial run(s) ignored: resume them with the same benchmark.run " \
                "command)" if partial else ""
        raise ReportError(f"no finished runs in {where}{extra}; run python -m benchmark.run first")
    # duplicate seeds of one entry: keep the latest finished
    seen: dict[tuple, Run] = {}
    for r in sorted(runs, key=lambda r: str(r["finished_at"] or "")):
        key = tuple(r[k] for k in ENTRY_KEYS) + (r["seed"],)
        if key in seen:
            notes.append(f"run {seen[key].path.name} ignored: {r.path.name} has the same method, setting, "
                         "overrides and seed and finished later")
        seen[key] = r
    runs = [r for r in runs if seen[tuple(r[k] for k in ENTRY_KEYS) + (r["seed"],)] is r]
    return Runs(runs, notes)


# ------------------------------------------------------------------------------------------------ methods
@dataclass
class MethodInfo:
    name: str
    family: str
    idea: str
    paper: str
    variant_of: str | None
    adapts_at_test: bool
    metric_facts: dict | None
    registered: bool
    order: int


def method_infos(names: list[str], summary_family: dict[str, str], reference_methods) -> dict[str, MethodInfo]:
    """Registry facts for every registered method plus ``names`` (methods in the results but not registered get
    their family from the run summary and are sorted last)."""
    try:
        import methods

        reg = methods.registry()
    except Exception:  # a broken method module must not stop the report from the records
        reg = {}
    out: dict[str, MethodInfo] = {}
    for i, (n, c) in enumerate(reg.items()):
        out[n] = MethodInfo(n, c.family, c.idea, c.paper, c.variant_of, bool(c.adapts_at_test), c.metric_facts,
                            True, i)
    mains = {n for n, m in out.items() if m.variant_of is None} | set(reference_methods)
    for j, n in enumerate(sorted(set(names) - set(out))):
        prefix = n.split("-")[0]
        variant_of = prefix if prefix != n and prefix in mains else None
        out[n] = MethodInfo(n, summary_family.get(n, ""), "", "", variant_of, False, None, False, 1000 + j)
    return out


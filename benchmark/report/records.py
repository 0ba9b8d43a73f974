"""Run folders read into :class:`Run` records, and each method's and backbone's facts as the runs recorded them.

The folders are read through :class:`benchmark.store.RunFolder` and :class:`benchmark.store.EvaluationFolder`,
the one place that knows their layout.

Nothing here imports the method registry or the backbone table: a report is built from the records alone, so a
report of old runs does not change when today's code does. Runs older than recorded facts are reported with a
fallback (:func:`method_infos`, :data:`LEGACY_BACKBONE_FACTS`) and a note (:func:`facts_note`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..store import PARTIAL_SUFFIX, RunFolder, evaluation_folders, failed_runs, partial_runs, run_folders
from .common import ENTRY_KEYS, FAMILY_ORDER, ReportError, split_key

REQUIRED_FILES = RunFolder.RECORDS


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
    failed: list[dict] = field(default_factory=list)  # failed.json of each failed run (with run_id)


def _overrides_text(config: dict) -> str:
    ov = config.get("overrides") or []
    return " ".join(f"{k}={v}" for k, v in ov)


def load_runs(results_dir: Path, run_ids: list[str] | None = None) -> Runs:
    """Finished runs under ``results_dir`` (only ``run_ids`` when given). Failed runs (``failed.json`` in their
    ``*.partial`` folder) are listed in the notes with their step and reason, other ``*.partial`` folders are ignored
    with a note; a finished folder missing a file or with unreadable records raises :class:`ReportError`."""
    results_dir = Path(results_dir)
    if not results_dir.exists():
        raise ReportError(f"results directory {results_dir} does not exist; run python -m benchmark.run first "
                          "or pass --results-dir")
    if not results_dir.is_dir():
        raise ReportError(f"results directory {results_dir} is not a folder")
    notes = []
    every_failed = failed_runs(results_dir)
    failed = [f.read_failure() for f in every_failed if run_ids is None or f.run_id in run_ids]
    failed_names = {f"{f.run_id}{PARTIAL_SUFFIX}" for f in every_failed}
    partial = [p for p in partial_runs(results_dir) if p not in failed_names]
    for r in failed:
        step = f" at step {r['step']}" if r.get("step") is not None else ""
        notes.append(f"Failed run {r['run_id']}{step}: {r.get('reason', '?')} (records in "
                     f"{r['run_id']}{PARTIAL_SUFFIX}/{RunFolder.FAILED}; the same benchmark.run command retries it)")
    if partial:
        notes.append(f"{len(partial)} unfinished run(s) ignored ({', '.join(partial)}); the same benchmark.run "
                     "command resumes them")
    folders = run_folders(results_dir)
    if run_ids is not None:
        wanted = set(run_ids)
        folders = [f for f in folders if f.run_id in wanted]
    runs = [r for r in map(read_run, folders) if r is not None]
    if not runs:
        where = f"{results_dir}" + (f" among the runs {', '.join(run_ids)}" if run_ids is not None else "")
        extra = f" ({len(partial)} unfinished *.partial run(s) ignored: resume them with the same benchmark.run " \
                "command)" if partial else ""
        raise ReportError(f"no finished runs in {where}{extra}; run python -m benchmark.run first")
    runs = _latest_per_seed(runs, notes)
    note = facts_note(runs)
    return Runs(runs, notes + ([note] if note else []), failed)


def read_run(folder: RunFolder) -> Run | None:
    """The :class:`Run` recorded in ``folder``; None when it is not a run folder (none of the record files), and
    :class:`ReportError` when it is incomplete or its records are unreadable or inconsistent."""
    d = folder.path
    missing = folder.missing()
    if len(missing) == len(REQUIRED_FILES):
        return None
    if missing:
        raise ReportError(f"run folder {d} is incomplete (missing {', '.join(missing)}); a finished run has "
                          f"{', '.join(REQUIRED_FILES)}: delete the folder and re-run it")
    try:
        summary, config = folder.read_summary(), folder.read_config()
        ep, curve = folder.read_test_episodes(), folder.read_curve()
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise ReportError(f"cannot read the records of {d}: {str(e).splitlines()[0] if str(e) else e!r}") from None
    need = ("method", "dataset", "ways", "shots", "backbone", "profile", "seed", "test_fingerprint")
    lacking = [k for k in need if summary.get(k) is None]
    if lacking or "accuracy" not in ep.columns:
        raise ReportError(f"records of {d} lack {', '.join(lacking) or 'the accuracy column'}; "
                          "were they written by benchmark.run?")
    acc = 100.0 * ep["accuracy"].to_numpy(dtype=np.float64)
    if summary.get("n_episodes") is not None and len(acc) != int(summary["n_episodes"]):
        raise ReportError(f"run folder {d} is inconsistent: {RunFolder.TEST_EPISODES} has {len(acc)} rows, "
                          f"{RunFolder.SUMMARY} says {summary['n_episodes']} episodes")
    summary.setdefault("queries", config.get("queries", 15))
    summary["overrides"] = _overrides_text(config)
    summary["split"] = split_key(summary)
    return Run(d, summary, config, acc,
               ep["adapt_seconds"].to_numpy(dtype=np.float64) if "adapt_seconds" in ep else np.array([]), curve)


def _latest_per_seed(runs: list[Run], notes: list[str]) -> list[Run]:
    """Duplicate seeds of one entry: keep the latest finished, with a note for each run left out."""
    seen: dict[tuple, Run] = {}
    for r in sorted(runs, key=lambda r: str(r["finished_at"] or "")):
        key = tuple(r[k] for k in ENTRY_KEYS) + (r["seed"],)
        if key in seen:
            notes.append(f"run {seen[key].path.name} ignored: {r.path.name} has the same method, setting, "
                         "overrides and seed and finished later")
        seen[key] = r
    return [r for r in runs if seen[tuple(r[k] for k in ENTRY_KEYS) + (r["seed"],)] is r]


# ------------------------------------------------------------------------------------------------ evaluations
@dataclass
class Evaluation:
    """A re-test of a run's saved model (``benchmark.evaluate``): its record and per-episode accuracy (%)."""

    path: Path
    record: dict
    run: Run  # the training run it came from
    accuracy: np.ndarray

    def __getitem__(self, k):
        return self.record.get(k)


def load_evaluations(runs: list[Run]) -> list[Evaluation]:
    """The finished evaluations of ``runs`` (``<run>/evaluations/<eval-id>/``, read through
    :class:`benchmark.store.EvaluationFolder`); unreadable or inconsistent records raise :class:`ReportError`."""
    out = []
    for r in runs:
        for f in evaluation_folders(r.path):
            try:
                rec, ep = f.read_record(), f.read_test_episodes()
            except (OSError, ValueError, pd.errors.ParserError) as e:
                raise ReportError(f"cannot read the evaluation {f.path}: "
                                  f"{str(e).splitlines()[0] if str(e) else e!r}") from None
            lacking = [k for k in ("dataset", "ways", "shots", "queries", "test_fingerprint", "n_episodes")
                       if rec.get(k) is None]
            if lacking or "accuracy" not in ep.columns or len(ep) != int(rec.get("n_episodes") or -1):
                raise ReportError(f"evaluation {f.path} is incomplete or inconsistent "
                                  f"({', '.join(lacking) or 'test_episodes.csv does not match n_episodes'}); "
                                  "delete it and run benchmark.evaluate again")
            rec["split"] = split_key(rec)
            out.append(Evaluation(f.path, rec, r, 100.0 * ep["accuracy"].to_numpy(dtype=np.float64)))
    return out


# ------------------------------------------------------------------------------------------------ facts
@dataclass
class MethodInfo:
    """A method's facts as its runs recorded them (``summary.json`` ``method_facts``, see :mod:`benchmark.facts`)."""

    name: str
    family: str
    idea: str
    paper: str
    variant_of: str | None
    adapts_at_test: bool
    metric_facts: dict | None
    recorded: bool  # False: the runs predate recorded facts (family from the summary, the rest inferred or empty)
    order: int  # position in the report: family order, then each main method followed by its variants


#: Kind and width of every backbone name that existed before runs recorded their ``backbone_facts``: a frozen copy of
#: ``benchmark/backbones.py``'s table, unchanged from the first commit until facts were recorded, so that older runs
#: are still compared with published figures by what their backbone was then (not by what the name means today).
LEGACY_BACKBONE_FACTS = {
    "conv4": {"kind": "conv4", "width": 64}, "conv4-32": {"kind": "conv4", "width": 32},
    "conv4-strided": {"kind": "conv4", "width": 64}, "conv4-relation": {"kind": "conv4", "width": 64},
    "resnet12": {"kind": "resnet12", "widths": [64, 160, 320, 640]},
    "resnet12-narrow": {"kind": "resnet12", "widths": [32, 64, 128, 256]},
}


def has_facts(run: Run) -> bool:
    return isinstance(run["method_facts"], dict) and isinstance(run["backbone_facts"], dict)


def backbone_facts(run: Run) -> dict:
    """{name, kind, width or widths} of a run's backbone: as recorded, else from :data:`LEGACY_BACKBONE_FACTS`
    (an unknown name without recorded facts gives only its name)."""
    if isinstance(run["backbone_facts"], dict):
        return {"name": run["backbone"], **run["backbone_facts"]}
    return {"name": run["backbone"], **LEGACY_BACKBONE_FACTS.get(run["backbone"], {})}


def facts_note(runs: list[Run]) -> str | None:
    """The report's note on runs that predate recorded facts (None when every run recorded them)."""
    old = [r for r in runs if not has_facts(r)]
    if not old:
        return None
    return (f"{len(old)} runs predate recorded method facts; for them the family comes from the run summary, idea "
            "and paper are left empty, a variant's main method is inferred from its name (<main>-<suffix>) and the "
            "backbone's kind and width from its name as defined when those runs were made")


def method_infos(runs: list[Run], reference_methods) -> dict[str, MethodInfo]:
    """Each method's facts from its latest finished run that recorded them. Methods whose runs predate recorded
    facts get their family from the summary, empty idea and paper, and ``variant_of`` = the part of the name
    before the first ``-`` when that is a main method (recorded in these runs or in the reference figures)."""
    facts: dict[str, dict] = {}
    family: dict[str, str] = {}
    for r in sorted(runs, key=lambda r: str(r["finished_at"] or "")):
        family[r["method"]] = r["family"] or family.get(r["method"], "")
        if isinstance(r["method_facts"], dict):
            facts[r["method"]] = r["method_facts"]
    mains = {n for n, f in facts.items() if not f.get("variant_of")} | set(reference_methods)
    out: dict[str, MethodInfo] = {}
    for n in family:
        f = facts.get(n)
        if f is not None:
            out[n] = MethodInfo(n, f.get("family") or family[n], f.get("idea") or "", f.get("paper") or "",
                                f.get("variant_of") or None, bool(f.get("adapts_at_test")), f.get("metric_facts"),
                                True, 0)
        else:
            prefix = n.split("-")[0]
            out[n] = MethodInfo(n, family[n], "", "", prefix if prefix != n and prefix in mains else None, False,
                                None, False, 0)

    def place(m: MethodInfo):
        fam = FAMILY_ORDER.index(m.family) if m.family in FAMILY_ORDER else len(FAMILY_ORDER)
        return fam, m.variant_of or m.name, m.variant_of is not None, m.name

    for i, m in enumerate(sorted(out.values(), key=place)):
        m.order = i
    return out

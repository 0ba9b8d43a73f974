"""Run folders read into :class:`Run` records, and each method's and backbone's facts as the runs recorded them.

The folders are read through :class:`benchmark.store.folders.RunFolder` and :class:`benchmark.store.folders.EvaluationFolder`,
the one place that knows their layout.

Nothing here imports the method registry or the backbone table: a report is built from the records alone, so a
report of old runs does not change when today's code does. Runs older than recorded facts are reported with a
fallback (:func:`method_infos`, :data:`LEGACY_BACKBONE_FACTS`) and a note (:func:`facts_note`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..store.compare import explain, records_differ
from ..store.folders import (
    PARTIAL_SUFFIX,
    RecordError,
    RunFolder,
    evaluation_folders,
    failed_runs,
    partial_runs,
    run_folders,
)
from ..store.statistics import at_chance
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
    #: other folders (in other results directories) holding the same run with identical records; their
    #: evaluations are read too (:func:`load_evaluations`)
    copies: list[Path] = field(default_factory=list)

    def __getitem__(self, k):
        return self.summary.get(k)


@dataclass
class Runs:
    runs: list[Run]
    notes: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # failed.json of each failed run (with run_id)
    results_dirs: list[Path] = field(default_factory=list)  # the results directories read, in the order given


def _overrides_text(config: dict) -> str:
    ov = config.get("overrides") or []
    return " ".join(f"{k}={v}" for k, v in ov)


def results_dirs(results_dir: Path | str | Sequence[Path | str]) -> list[Path]:
    """One results directory or several as a list of paths, in the order given, each listed once (a directory named
    twice, also through another spelling of its path, is read once)."""
    items = [results_dir] if isinstance(results_dir, (str, os.PathLike)) else list(results_dir)
    out: dict[str, Path] = {}
    for d in items:
        p = Path(d)
        key = os.path.realpath(p)
        out.setdefault(key, p)
    if not out:
        raise ReportError("no results directory given")
    return list(out.values())


def load_runs(results_dir: Path | Sequence[Path], run_ids: list[str] | None = None) -> Runs:
    """Finished runs under ``results_dir`` (only ``run_ids`` when given). Failed runs (``failed.json`` in their
    ``*.partial`` folder) are listed in the notes with their step and reason, other ``*.partial`` folders are ignored
    with a note; a finished folder missing a file or with unreadable records raises :class:`ReportError`.

    ``results_dir`` may also be a list of results directories (e.g. the built-in methods run on one machine and a
    new method's runs made later on another): the report is built from the union of their runs, and runs are still
    aggregated and paired only on identical test-episode fingerprints. Each directory must exist and (without
    ``run_ids``) hold finished runs. A run id found in two directories is reported once when its records
    (``summary.json``, ``config.json``, ``test_episodes.csv``, ``curve.csv``) are identical there (a copy; the first
    directory's folder is used, the evaluations of both are read), and refused with :class:`ReportError` otherwise:
    both folders describe the same run id (the same method, setting and seed) with different results, so at most one
    of them is the run the id names, and the report cannot tell which one; keeping both under labels naming their
    directory would put the same method twice into one paired test, with ranks depending on which copy is better.
    The user resolves it by moving one folder out of its results directory (or giving one directory only)."""
    dirs = results_dirs(results_dir)
    multi = len(dirs) > 1
    notes, failed, runs, first_dir = [], [], [], {}
    n_partial = 0
    for d in dirs:
        d_runs, d_notes, d_failed, d_partial = _read_results_dir(d, run_ids, multi)
        if multi and run_ids is None and not d_runs:
            extra = f" ({len(d_partial)} unfinished *.partial run(s) ignored)" if d_partial else ""
            raise ReportError(f"no finished runs in {d}{extra}; give only results directories that hold finished "
                              "runs")
        notes += d_notes
        failed += d_failed
        n_partial += len(d_partial)
        for r in d_runs:
            rid = r.path.name
            if rid in first_dir:
                kept = first_dir[rid]
                if not same_records(kept, r):
                    raise ReportError(f"run {rid} is in two results directories with different records "
                                      f"({kept.path} and {r.path}; {explain(kept.summary, r.summary)}); keep one "
                                      "of them (move the other folder out of its results directory) or give only "
                                      "one of the directories")
                kept.copies.append(r.path)
                notes.append(f"run {rid} is in {kept.path.parent} and {d} with identical records: reported once "
                             f"(from {kept.path.parent})")
                continue
            first_dir[rid] = r
            runs.append(r)
    if not runs:
        where = ", ".join(map(str, dirs)) + (f" among the runs {', '.join(run_ids)}" if run_ids is not None else "")
        extra = f" ({n_partial} unfinished *.partial run(s) ignored: resume them with the same benchmark.run " \
                "command)" if n_partial else ""
        raise ReportError(f"no finished runs in {where}{extra}; run python -m benchmark.run first")
    runs = _latest_per_seed(runs, notes)
    note = facts_note(runs)
    return Runs(runs, notes + ([note] if note else []) + execution_notes(runs) + chance_notes(runs), failed, dirs)


def chance_notes(runs: list[Run]) -> list[str]:
    """A note per run whose test accuracy is at chance (100/ways) though its loss stayed finite: ``at_chance`` in
    its summary, or for runs older than the field, its per-episode accuracies (:func:`~benchmark.store.statistics.
    at_chance`)."""
    flagged = [r for r in runs if (r["at_chance"] if r["at_chance"] is not None
                                   else at_chance(r.accuracy / 100, r["ways"]))]
    return [f"Run {r.path.name} is at chance ({r['mean']:.2f} ± {r['ci95']:.2f} %, chance {100 / r['ways']:.2f} % "
            f"with {r['ways']} ways) with a finite training loss: at chance: diverged?"
            for r in sorted(flagged, key=lambda r: r.path.name)]


def execution_notes(runs: list[Run]) -> list[str]:
    """Notes on how runs computed their numbers, when not the default way: runs in bf16 (their entries are labelled
    "[bf16]", and a paired comparison with an fp32 entry compares precisions as well as methods) and runs not known
    to be deterministic (``deterministic`` false in ``summary.json``: CUDA with ``--no-deterministic``, or an
    operation without a deterministic CUDA kernel, which the note names), and runs any attempt of which compiled
    modules (``--compile``) or captured them as CUDA graphs (``--capture``)."""
    notes = []
    bf16 = sorted(r.path.name for r in runs if r["precision"] != "fp32")
    if bf16:
        notes.append(f"{len(bf16)} run(s) ran in bfloat16 autocast (--precision bf16), labelled [bf16]: "
                     f"{', '.join(bf16)}; the papers' numbers are float32, and a comparison of a [bf16] entry with "
                     "an fp32 one compares precisions as well as methods")
    def attempts(r):
        return r["execution_attempts"] or [r["execution"] or {}]

    captured = sorted(r.path.name for r in runs if any(a.get("capture") and a.get("compiled") for a in attempts(r)))
    compiled = sorted(r.path.name for r in runs
                      if r.path.name not in captured and any(a.get("compiled") for a in attempts(r)))
    if compiled:
        notes.append(f"{len(compiled)} run(s) trained with torch.compile (--compile): {', '.join(compiled)}; "
                     "compiled kernels round differently, so their per-episode numbers are not bit-identical to an "
                     "eager run's on the same episodes")
    if captured:
        notes.append(f"{len(captured)} run(s) trained with captured CUDA graphs (--capture: torch.compile mode "
                     f"reduce-overhead): {', '.join(captured)}; compiled kernels round differently, so their "
                     "per-episode numbers are not bit-identical to an eager run's on the same episodes")
    nondet = [r for r in runs if r["deterministic"] is False]
    for r in sorted(nondet, key=lambda r: r.path.name):
        ex = r["execution"] or {}
        ops = ex.get("nondeterministic_ops") or []
        why = (f"operations without a deterministic CUDA kernel: {', '.join(ops)}" if ops else
               "run with --no-deterministic" if ex.get("deterministic_requested") is False else
               "determinism was not in force")
        notes.append(f"Non-deterministic run {r.path.name} ({why}): a re-run can differ in the last bits of its "
                     "numbers, and so in a few test episodes")
    return notes


def _read_results_dir(results_dir: Path, run_ids: list[str] | None, multi: bool):
    """(finished runs, notes, failed records, unfinished folder names) of one results directory; notes name the
    directory when several are read."""
    if not results_dir.exists():
        raise ReportError(f"results directory {results_dir} does not exist; run python -m benchmark.run first "
                          "or pass --results-dir")
    if not results_dir.is_dir():
        raise ReportError(f"results directory {results_dir} is not a folder")
    where = f" in {results_dir}" if multi else ""
    notes = []
    every_failed = failed_runs(results_dir)
    try:
        failed = [f.read_failure() for f in every_failed if run_ids is None or f.run_id in run_ids]
    except RecordError as e:
        raise ReportError(str(e)) from None
    failed_names = {f"{f.run_id}{PARTIAL_SUFFIX}" for f in every_failed}
    partial = [p for p in partial_runs(results_dir) if p not in failed_names]
    for r in failed:
        step = f" at step {r['step']}" if r.get("step") is not None else ""
        notes.append(f"Failed run {r['run_id']}{where}{step}: {r.get('reason', '?')} (records in "
                     f"{r['run_id']}{PARTIAL_SUFFIX}/{RunFolder.FAILED}; the same benchmark.run command retries it)")
    if partial:
        notes.append(f"{len(partial)} unfinished run(s) ignored{where} ({', '.join(partial)}); the same "
                     "benchmark.run command resumes them")
    folders = run_folders(results_dir)
    if run_ids is not None:
        wanted = set(run_ids)
        folders = [f for f in folders if f.run_id in wanted]
    runs = [r for r in map(read_run, folders) if r is not None]
    return runs, notes, failed, partial


def same_records(a: Run, b: Run) -> bool:
    """Whether two run folders hold identical records (summary, config, per-episode test results, curve)."""
    def records(r: Run) -> dict:
        return {"summary": r.summary, "config": r.config, "curve": r.curve,
                "episodes": pd.DataFrame({"accuracy": r.accuracy, "adapt_seconds": r.adapt_seconds}
                                         if len(r.adapt_seconds) == len(r.accuracy) else {"accuracy": r.accuracy})}

    return records_differ(records(a), records(b), full=True) is None


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
    except RecordError as e:
        raise ReportError(str(e)) from None
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
            old = seen[key]
            same = np.array_equal(old.accuracy, r.accuracy)
            notes.append(f"run {old.path.name} ignored: {r.path.name} has the same method, setting, "
                         "overrides and seed and finished later" + (
                             " (identical test accuracies)" if same else
                             f" (different test accuracies: {np.mean(old.accuracy):.2f} against "
                             f"{np.mean(r.accuracy):.2f} %; {explain(old.summary, r.summary)})"))
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
    :class:`benchmark.store.folders.EvaluationFolder`); unreadable or inconsistent records raise :class:`ReportError`.
    A run found with identical records in several results directories (:attr:`Run.copies`) contributes the
    evaluations of every copy; an evaluation id in two copies is read once when its records are identical there,
    and refused (:class:`ReportError`, naming both folders) otherwise."""
    out = []
    for r in runs:
        seen: dict[str, Evaluation] = {}
        for folder in [r.path, *r.copies]:
            for f in evaluation_folders(folder):
                ev = _read_evaluation(f, r)
                first = seen.get(f.path.name)
                if first is None:
                    seen[f.path.name] = ev
                    out.append(ev)
                elif json.dumps(first.record, sort_keys=True, default=str) != \
                        json.dumps(ev.record, sort_keys=True, default=str) or \
                        not np.array_equal(first.accuracy, ev.accuracy, equal_nan=True):
                    raise ReportError(f"evaluation {f.path.name} of run {r.path.name} is in two results directories "
                                      f"with different records ({first.path} and {f.path}); keep one of them or "
                                      "give only one of the directories")
    return out


def _read_evaluation(f, r: Run) -> Evaluation:
    try:
        rec, ep = f.read_record(), f.read_test_episodes()
    except RecordError as e:
        raise ReportError(str(e)) from None
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
    return Evaluation(f.path, rec, r, 100.0 * ep["accuracy"].to_numpy(dtype=np.float64))


# ------------------------------------------------------------------------------------------------ facts
@dataclass
class MethodInfo:
    """A method's facts as its runs recorded them (``summary.json`` ``method_facts``, see :mod:`benchmark.pipeline.facts`)."""

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
#: the backbone table as it stood then (``benchmark/backbones.py``, today ``benchmark/kit/backbone_table.py``),
#: unchanged from the first commit until facts were recorded, so that older runs
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

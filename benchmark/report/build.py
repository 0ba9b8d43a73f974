"""Building a report: read the runs, derive the tables, write the sections and the files.

:func:`build` writes ``<out_dir>/``: ``report.md`` (figures as PNG files beside it), ``report.html`` (one
self-contained file), the settings leaderboard ``leaderboard.csv`` (:data:`SETTINGS_LEADERBOARD`; one row per
entry, columns :data:`~benchmark.report.entries.REPORT_LEADERBOARD_COLUMNS`; not the per-run leaderboard of the
results directory, :mod:`benchmark.store.leaderboard`), ``paired.csv``, ``episode_counts.csv`` (section 5 in long form), ``equal_compute.csv`` (section 4's
accuracy at equal compute) and
``cross_evaluation.csv`` (section 7 in long form), and the tables for papers in LaTeX:
``tables.tex`` (to ``\\input``) and ``report.tex`` (a standalone document; :mod:`benchmark.report.latex`).

The runs come from one results directory or several (:func:`benchmark.report.records.load_runs`: the union of their
runs, paired only on identical test-episode fingerprints; a run id in two directories with different records is
refused).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..store.files import atomic_write_bytes, atomic_write_csv, atomic_write_text
from ..store.leaderboard import integer_column
from . import latex, sections
from .common import LEGACY_DEFAULT_SPLITS, ReportError, norm_dataset, setting_label
from .convergence import convergence
from .entries import build_entries, few_seeds, leaderboard_frame, seeds_summary, short_budgets
from .records import load_evaluations, load_runs, results_dirs
from .render import Doc, to_html, to_markdown
from .stats import MIN_SEEDS
from .survey_sections import metric_methods, table1_mirror
from .table1 import table1
from .tables import entry_ranks, paired_statistics, parse_thresholds
from .text import episodes_text, percent_range

ALPHA = 0.05
SETTINGS_LEADERBOARD = "leaderboard.csv"  # the report's leaderboard: one row per entry (settings aggregated over seeds)
#: Columns of the report's leaderboard written as integers (not ``80.0``) where every value is whole
INTEGER_COLUMNS = ["ways", "shots", "queries", "n_episodes", "n_seeds", "rank", "train_episodes",
                   "paper_train_episodes", "trainable_params", "adapted_params", "eval_seed"]


@dataclass
class BuildResult:
    path: Path  # report.md
    html: Path
    leaderboard: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    tex: Path | None = None  # report.tex (tables.tex beside it)


def build(results_dir: Path | Sequence[Path], out_dir: Path, run_ids: list[str] | None = None,
          thresholds: dict | list[str] | None = None, alpha: float = ALPHA) -> BuildResult:
    """Build the report from the runs in ``results_dir``: one results directory, or a list of them (one report from
    the union of their runs; see :func:`~benchmark.report.records.load_runs`). Raises :class:`ReportError`
    (one-line message) when it cannot."""
    dirs, out_dir = results_dirs(results_dir), Path(out_dir)
    thr = thresholds if isinstance(thresholds, dict) else parse_thresholds(thresholds)
    loaded = load_runs(dirs[0] if len(dirs) == 1 else dirs, run_ids)
    runs = loaded.runs
    unknown = sorted(set(thr) - {"*"} - {norm_dataset(r["dataset"]) for r in runs})
    if unknown:  # a typo in --thresholds DATASET:... would otherwise be ignored silently
        raise ReportError(f"--thresholds names {', '.join(unknown)}, which no run in the report has (datasets: "
                          f"{', '.join(sorted({str(r['dataset']) for r in runs}))}); drop it or fix its name")
    entries = build_entries(runs)
    evaluations = load_evaluations(runs)
    stats = paired_statistics(entries, alpha)

    profiles = list(dict.fromkeys(e.key["profile"] for e in entries))
    eps_text = episodes_text(sorted({int(e.row["n_episodes"]) for e in entries}))
    doc = Doc(f"Few-shot benchmark report: {'/'.join(profiles)} profile, {eps_text} test episodes")
    banner = _front_matter(doc, runs, entries, dirs, profiles, eps_text)
    notes = list(loaded.notes)
    refusal_summary = [s for st in stats for s in st.refusals]
    if notes or refusal_summary:
        doc.p("**Notes**")
        doc.ul(notes + [f"Refused pairing: {s}" for s in refusal_summary])
    mirror = table1(entries, stats)
    table1_mirror(doc, mirror)
    metric_methods(doc, entries)
    paired_df, refusals = sections.paired(doc, stats, alpha)
    compute = convergence(doc, entries)
    counts = sections.episode_counts(doc, entries, thr)
    sections.cost(doc, entries, runs)
    cross = sections.cross_evaluation(doc, entries, evaluations, alpha)
    sections.provenance(doc, runs, evaluations, dirs)
    doc.h(2, "Files", "files")
    doc.p(FILES_TEXT)

    defaults = default_splits(runs, evaluations)
    board = _named_splits(leaderboard_frame(entries, entry_ranks(stats)), defaults)
    for c in INTEGER_COLUMNS:
        board[c] = integer_column(board[c])
    _write_figures(out_dir, doc)
    atomic_write_csv(out_dir / SETTINGS_LEADERBOARD,
                     board.round({c: 4 for c in board.columns if c != "budget_fraction" and c not in INTEGER_COLUMNS}))
    atomic_write_csv(out_dir / "paired.csv", _named_splits(paired_df, defaults))
    atomic_write_csv(out_dir / "episode_counts.csv", _named_splits(counts, defaults))
    atomic_write_csv(out_dir / "equal_compute.csv", _named_splits(compute, defaults).round(4))
    atomic_write_csv(out_dir / "cross_evaluation.csv", _named_splits(cross, defaults).round(4))
    atomic_write_text(out_dir / "report.html", to_html(doc))
    _write_tex(out_dir, entries, stats, alpha, mirror, _tex_intro(runs, dirs, profiles, eps_text, banner))
    md = out_dir / "report.md"
    atomic_write_text(md, to_markdown(doc))
    _readable(out_dir, [*doc.images, SETTINGS_LEADERBOARD, "paired.csv", "episode_counts.csv", "equal_compute.csv",
                        "cross_evaluation.csv", "report.html", "report.md", "tables.tex", "tables-wide.tex",
                        "report.tex"])
    return BuildResult(md, out_dir / "report.html", board, notes, refusals, out_dir / "report.tex")


#: The report's closing section: the files beside it
FILES_TEXT = ("Beside this report: `leaderboard.csv` (one row per method × dataset × setting × backbone × profile, "
              "aggregated over seeds; schema in docs/reports.md), `paired.csv` (every paired test), `episode_counts.csv` "
              "(section 5 in long form), `equal_compute.csv` (section 4's accuracy at equal compute in long form), "
              "`cross_evaluation.csv` (section 7 in long form), "
              "the figures as PNG files, `report.html` (this report in one "
              "self-contained file), and the Table 1 mirror and the leaderboard as LaTeX tables: `tables.tex` "
              "(`table` floats, to `\\input` into a one-column paper loading booktabs and graphicx), `tables-wide.tex` "
              "(the same as `table*` floats spanning both columns of a two-column paper) and `report.tex` (the same "
              "tables as a document of its own).")


def _front_matter(doc: Doc, runs, entries, dirs: list[Path], profiles: list[str], eps_text: str) -> str | None:
    """The report's first paragraph (what was run, where, how to read the figures) and the budget banner; returns
    the banner (None when every run trained on the paper's budget)."""
    settings = list(dict.fromkeys(setting_label(e.key["dataset"], e.key["ways"], e.key["shots"], e.key["split"])
                                  for e in entries))
    meths = list(dict.fromkeys(e.label for e in entries))
    where = ", ".join(f"`{d}`" for d in dirs)
    doc.p(f"**Profile {', '.join(profiles)}; {eps_text} test episodes per setting.** {len(runs)} runs from {where}: "
          f"{len(meths)} method(s) ({', '.join(meths)}) on {', '.join(settings)}. Built "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from the run records alone (nothing re-run). "
          "Accuracies in %: mean over test episodes of the seed-averaged per-episode accuracy ± 95% CI (1.96 "
          f"sd/√n over episodes). {seeds_summary(entries)}" + (
              " The ± CI is over test episodes of the trained model(s) and leaves out training variance (another seed "
              "can move an entry by more than its CI); with fewer than "
              f"{MIN_SEEDS} seeds a significant difference is about the trained models, not the methods (section 3)."
              if few_seeds(entries) else ""))
    banner = budget_banner(entries)
    if banner:
        doc.banner(banner)
    return banner


def _write_figures(out_dir: Path, doc: Doc) -> None:
    """The report's figures as PNG files in ``out_dir`` (created), in place of any of an earlier report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("convergence-*.png"):
        old.unlink()
    for name, png in doc.images.items():
        atomic_write_bytes(out_dir / name, png)


def _tex_intro(runs, dirs: list[Path], profiles: list[str], eps_text: str, banner: str | None) -> str:
    """The line of LaTeX above the tables of the standalone ``report.tex``."""
    return (f"\\textbf{{Profile {latex.escape(', '.join(profiles))}; {eps_text} test episodes per setting.}} "
            + (latex.inline(banner) + " " if banner else "") + f"{len(runs)} runs from "
            + ", ".join(r"\texttt{" + latex.escape(d) + "}" for d in dirs)
            + ", built from the run records alone; the full report (paired tests, convergence, episode counts, "
            "cost, cross-evaluation, provenance) is report.md / report.html beside this file.")


def _write_tex(out_dir: Path, entries, stats, alpha: float, mirror, intro: str) -> None:
    """``tables.tex``, ``tables-wide.tex`` and ``report.tex`` (:mod:`benchmark.report.latex`)."""
    tables = latex.tables_tex(entries, stats, alpha, table=mirror)
    atomic_write_text(out_dir / "tables.tex", tables)
    atomic_write_text(out_dir / "tables-wide.tex", latex.tables_tex(entries, stats, alpha, wide=True, table=mirror))
    atomic_write_text(out_dir / "report.tex", latex.report_tex(tables, intro))


def budget_banner(entries) -> str | None:
    """The warning at the top of a report whose runs trained on less than the paper's budget (or whose profile is
    not ``paper`` where no budget was recorded); None when every run trained on the paper's budget."""
    short = short_budgets(entries)
    unknown = sorted({e.key["profile"] for e in entries if math.isnan(e.row["budget_fraction"])
                      and e.key["profile"] != "paper"})
    if not short and not unknown:
        return None
    parts = []
    if short:
        parts.append(f"{percent_range(short, '–')} of the paper's training")
    if unknown:
        parts.append(f"profile {', '.join(unknown)} with no recorded budget")
    return (f"**Not comparable with published figures: {'; '.join(parts)}** (meta-training episodes as a share of "
            "what each method's `paper` profile trains on). The measured accuracies show how the methods compare "
            "on these episodes at this budget, not what they reach at the papers' budgets.")


def _named_splits(df: pd.DataFrame, defaults: dict[str, str],
                  pairs=(("dataset", "split"), ("trained_dataset", "trained_split"))) -> pd.DataFrame:
    """The report's CSVs name every split, the dataset's default one included (as the run records and the per-run
    leaderboard do); inside the report an empty split means the default (:func:`~.common.split_key`)."""
    df = df.copy()
    for ds, sp in pairs:
        if ds in df.columns and sp in df.columns and len(df):
            blank = df[sp].fillna("").astype(str) == ""
            df.loc[blank, sp] = df.loc[blank, ds].map(lambda d: defaults.get(str(d), "")).fillna("")
    return df


def default_splits(runs, evaluations) -> dict[str, str]:
    """Each dataset's default split name as the records give it (older records: :data:`LEGACY_DEFAULT_SPLITS`)."""
    out = dict(LEGACY_DEFAULT_SPLITS)
    for r in [*runs, *evaluations]:
        if r["dataset"] and r["default_split"]:
            out[r["dataset"]] = r["default_split"]
    return out


def _readable(folder: Path, names: list[str]) -> None:
    """Atomic writes create files with mode 0600; reports are for sharing, so give them the umask's default."""
    umask = os.umask(0)
    os.umask(umask)
    for n in names:
        try:
            os.chmod(folder / n, 0o666 & ~umask)
        except OSError:
            pass


def build_report(results_dir: Path | Sequence[Path], out_dir: Path, run_ids: list[str] | None = None,
                 thresholds: dict | list[str] | None = None, alpha: float = ALPHA) -> Path:
    """Write the report for the finished runs in ``results_dir`` (one results directory or a list of them; only
    ``run_ids`` when given) into ``out_dir``; returns the path of ``report.md``. Refused pairings are explained in
    the report, not raised."""
    return build(results_dir, out_dir, run_ids, thresholds, alpha).path


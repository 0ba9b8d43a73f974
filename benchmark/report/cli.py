"""python -m benchmark.report: build the report from the run records in one or several results directories (never
re-running).

Writes ``<reports-dir>/<name>/``: ``report.md`` (figures as PNG files beside it), ``report.html`` (one self-contained
file), ``leaderboard.csv`` (the report's settings leaderboard: one row per method x dataset x setting x backbone x
profile, aggregated over seeds; columns :data:`benchmark.report.REPORT_LEADERBOARD_COLUMNS`; not the per-run
leaderboard.csv of the results directory), ``paired.csv`` (every paired test), ``episode_counts.csv`` (section 5 in
long form), ``equal_compute.csv`` (section 4's accuracy at equal compute in long form) and ``cross_evaluation.csv``
(section 7 in long form), and the Table 1 mirror, the leaderboard, the survey's tables in English and the accuracy
at equal compute as LaTeX tables: ``tables.tex`` (to \\input into a paper that loads booktabs and graphicx) and
``report.tex`` (a standalone document: pdflatex report.tex). Bold marks an accuracy significantly better than every
other of its setting (the paired tests, Holm-corrected) where every entry of the setting has at least 3 seeds (with
fewer, the tests compare trained models, not methods, and the report says so).

Several results directories (``--results-dir A B``, e.g. the built-in methods run once and a new method's runs
made later on another machine) give one report from the union of their runs, paired only on identical test-episode
fingerprints. A run id found in two of them is reported once if its records are identical there, and refused
(exit code 2, naming both folders) if they differ.

Sections: 1 the survey's Table 1 mirrored (measured vs published), 2 the metric methods (survey Table 2),
3 paired statistics and ranks, 4 convergence, 5 episode counts to accuracy thresholds, 6 cost, 7 cross-evaluation
of saved models, 8 provenance.

Errors (bad input: a value of the wrong type, an --alpha outside (0, 1), an empty or '.' --name, a --reports-dir
that is not a writable folder, --thresholds for a dataset none of the runs has; no finished runs, incomplete or
damaged run folders (the file named: delete that folder and re-run it), a run id with different records in two
results directories, paired comparisons refused because test-episode fingerprints differ) print one line and exit
with code 2, before anything is written; with refused pairs the report is still written and says why.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli.toolkit import EXIT_OK, EXIT_USAGE, Parser, UsageError, folder_name, usage_errors, writable_dir
from .build import ALPHA, build
from .common import ReportError


def default_reports_dir(results_dir: Path) -> Path:
    """Where a report goes without --reports-dir: ``reports`` beside the results directory (``/x/results`` ->
    ``/x/reports``; ``results`` -> ``reports`` in the current directory, as before)."""
    return Path(results_dir).parent / "reports"


def parser() -> Parser:
    p = Parser(prog="python -m benchmark.report", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", nargs="+", action="extend", default=None, metavar="DIR",
                   help="where the runs are: one results directory, or several (--results-dir A B, or the option "
                        "repeated) for one report from all their runs; default: results")
    p.add_argument("--reports-dir", default=None,
                   help="where reports go; default: reports beside the (first) results directory, i.e. "
                        "<results-dir>/../reports (results -> reports)")
    p.add_argument("--name", default="latest", help="report folder name (not empty); default: latest")
    p.add_argument("--thresholds", nargs="+", default=None, metavar="T",
                   help="accuracy thresholds in %% for the episode-count table: numbers for every dataset "
                        "(e.g. 50 80 90 95) and/or DATASET:50,80,90 (a DATASET none of the runs has is refused); "
                        "default: omniglot 50 80 90 95, other datasets 40 50 60 70")
    p.add_argument("--alpha", type=float, default=ALPHA, help="family-wise significance level; default: 0.05")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # bad input, as in the other commands: one line (the toolkit's), exit code 2; the report calls no method, so
    # BENCHMARK_GUARD is not its to judge
    return usage_errors(lambda: _main(args), guard=False)


def _main(args) -> int:
    if not 0 < args.alpha < 1:
        raise UsageError(f"--alpha must lie in (0, 1), got {args.alpha:g}")
    dirs = [Path(d) for d in (args.results_dir or ["results"])]
    reports = Path(args.reports_dir) if args.reports_dir else default_reports_dir(dirs[0])
    folder_name("--name", args.name)
    writable_dir("--reports-dir", reports)
    writable_dir("--name", reports / args.name)
    try:
        res = build(dirs[0] if len(dirs) == 1 else dirs, reports / args.name, thresholds=args.thresholds,
                    alpha=args.alpha)
    except ReportError as e:  # the report's own one-line errors (it does not import the toolkit)
        raise UsageError(str(e)) from None
    for n in res.notes:
        print(f"note: {n}", file=sys.stderr)
    print(res.path)
    if res.refusals:
        print(f"error: paired comparison refused in {len(res.refusals)} case(s), the test episodes differ "
              f"(first: {res.refusals[0]}); the report was written without those pairs: {res.path}",
              file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK

"""python -m benchmark.report: build the report from the run records in a results directory (never re-running).

Writes ``<reports-dir>/<name>/``: ``report.md`` (figures as PNG files beside it), ``report.html`` (one self-contained
file), ``leaderboard.csv`` (the report's settings leaderboard: one row per method x dataset x setting x backbone x
profile, aggregated over seeds; columns :data:`benchmark.report.REPORT_LEADERBOARD_COLUMNS`; not the per-run
leaderboard.csv of the results directory), ``paired.csv`` (every paired test), ``episode_counts.csv`` (section 5 in
long form) and ``cross_evaluation.csv`` (section 7 in long form).

Sections: 1 the survey's Table 1 mirrored (measured vs published), 2 the metric methods (survey Table 2),
3 paired statistics and ranks, 4 convergence, 5 episode counts to accuracy thresholds, 6 cost, 7 cross-evaluation
of saved models (benchmark.evaluate), 8 provenance.

Errors (no finished runs, incomplete run folders, paired comparisons refused because test-episode fingerprints
differ) print one line and exit with code 2; with refused pairs the report is still written and says why.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .build import ALPHA, build
from .common import ReportError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", default="results", help="where the runs are; default: results")
    p.add_argument("--reports-dir", default="reports", help="where reports go; default: reports")
    p.add_argument("--name", default="latest", help="report folder name; default: latest")
    p.add_argument("--thresholds", nargs="+", default=None, metavar="T",
                   help="accuracy thresholds in %% for the episode-count table: numbers for every dataset "
                        "(e.g. 50 80 90 95) and/or DATASET:50,80,90; default: omniglot 50 80 90 95, other "
                        "datasets 40 50 60 70")
    p.add_argument("--alpha", type=float, default=ALPHA, help="family-wise significance level; default: 0.05")
    args = p.parse_args(argv)
    try:
        if not 0 < args.alpha < 1:
            raise ReportError(f"--alpha must lie in (0, 1), got {args.alpha:g}")
        res = build(Path(args.results_dir), Path(args.reports_dir) / args.name, thresholds=args.thresholds,
                    alpha=args.alpha)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for n in res.notes:
        print(f"note: {n}", file=sys.stderr)
    print(res.path)
    if res.refusals:
        print(f"error: paired comparison refused in {len(res.refusals)} case(s), the test episodes differ "
              f"(first: {res.refusals[0]}); the report was written without those pairs: {res.path}",
              file=sys.stderr)
        return 2
    return 0


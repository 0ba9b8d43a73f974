"""python -m benchmark.report: build the report from the run records in a results directory (never re-running).

Writes ``<reports-dir>/<name>/report.md`` with the leaderboard table (mean accuracy and 95% CI per run).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .results import atomic_write_text, leaderboard


class ReportError(Exception):
    pass


def _table(df: pd.DataFrame) -> str:
    view = df.assign(accuracy=[f"{m:.2f} ± {c:.2f}" for m, c in zip(df["mean"], df["ci95"])],
                     setting=[f"{d} {w}-way {s}-shot" for d, w, s in zip(df["dataset"], df["ways"], df["shots"])])
    view = view[["setting", "method", "backbone", "profile", "seed", "accuracy", "n_episodes", "train_episodes",
                 "train_seconds", "ms_per_train_episode", "test_fingerprint"]].copy()
    view["train_seconds"] = view["train_seconds"].map(lambda v: f"{v:.0f}")
    view["ms_per_train_episode"] = view["ms_per_train_episode"].map(lambda v: f"{v:.1f}")
    view["test_fingerprint"] = view["test_fingerprint"].str[:12]
    return view.to_markdown(index=False) if _has_tabulate() else _plain_markdown(view)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401

        return True
    except ImportError:
        return False


def _plain_markdown(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "| " + " | ".join("---" for _ in df.columns) + " |"
    rows = ["| " + " | ".join(str(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows])


def build_report(results_dir: Path, out_dir: Path, run_ids: list[str] | None = None) -> Path:
    """Write ``out_dir/report.md`` from the finished runs in ``results_dir`` (only ``run_ids`` when given)."""
    df = leaderboard(Path(results_dir))
    if run_ids is not None:
        df = df[df["run_id"].isin(run_ids)]
    if df.empty:
        raise ReportError(f"no finished runs in {results_dir}; run python -m benchmark.run first")
    text = ["# Few-shot benchmark report", "",
            f"{len(df)} runs from `{results_dir}`. Accuracy: mean over test episodes ± 95% CI (1.96 sd/√n), in %.",
            "", _table(df), ""]
    out = Path(out_dir) / "report.md"
    atomic_write_text(out, "\n".join(text))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.report", description=__doc__)
    p.add_argument("--results-dir", default="results")
    p.add_argument("--reports-dir", default="reports")
    p.add_argument("--name", default="latest")
    args = p.parse_args(argv)
    try:
        out = build_report(Path(args.results_dir), Path(args.reports_dir) / args.name)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

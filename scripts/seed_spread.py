"""Measure training variance: the seed-to-seed spread of each method and setting, from finished runs.

    python -m benchmark.run --methods all --profile quick --seeds 0 1 2 --results-dir seeds
    python scripts/seed_spread.py seeds --out benchmark/reference/seed_spread.csv

For every method and setting with at least ``--min-seeds`` seeds (default 3) among the finished runs of the results
directories given, the sd of the per-seed mean test accuracies in percentage points
(:func:`benchmark.store.spread.seed_spread`; only runs at the methods' defaults: no ``--set``, fp32, the default
split). Without ``--out`` the table is printed as CSV; with ``--out`` it is merged into that file (a row replaces
the file's row for the same method and setting, other rows are kept), e.g. the reference table the report reads.
Notes on what was left out go to stderr. Exit code 0: rows measured; 1: no method and setting had enough seeds
(nothing written); 2: bad input (a results directory that does not exist, --min-seeds below 2, an --out file that
is not such a table, unreadable records), with one line on stderr.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from benchmark.cli.toolkit import Parser, UsageError, usage_errors  # noqa: E402
from benchmark.store.files import atomic_write_csv  # noqa: E402
from benchmark.store.spread import SEED_SPREAD_COLUMNS, RecordError, merge_spread, seed_spread  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="scripts/seed_spread.py", description=__doc__.split("\n\n")[0])
    p.add_argument("results_dirs", nargs="+", metavar="RESULTS_DIR", help="results directories holding the runs")
    p.add_argument("--min-seeds", type=int, default=3, help="seeds a method and setting needs to be measured "
                   "(at least 2); default: 3")
    p.add_argument("--out", default=None, help="CSV file to merge the rows into (created when absent); default: "
                   "print the table")
    args = p.parse_args(argv)

    def body() -> int:
        if args.min_seeds < 2:
            raise UsageError(f"--min-seeds must be 2 or more (got {args.min_seeds})")
        for d in args.results_dirs:
            if not Path(d).is_dir():
                raise UsageError(f"results directory {d} does not exist or is not a folder")
        old = None
        if args.out and Path(args.out).exists():
            try:
                old = pd.read_csv(args.out, dtype={"seeds": str, "source": str})
            except (OSError, ValueError, pd.errors.ParserError) as e:
                raise UsageError(f"cannot read --out {args.out}: {str(e).splitlines()[0]}") from None
            if list(old.columns) != SEED_SPREAD_COLUMNS:
                raise UsageError(f"--out {args.out} is not a seed-spread table (columns "
                                 f"{','.join(SEED_SPREAD_COLUMNS)})")
        try:
            table, notes = seed_spread(args.results_dirs, args.min_seeds)
        except RecordError as e:
            raise UsageError(str(e)) from None
        for n in notes:
            print(f"note: {n}", file=sys.stderr)
        if not len(table):
            print(f"note: no method and setting has {args.min_seeds} or more seeds in "
                  f"{', '.join(args.results_dirs)}: nothing written", file=sys.stderr)
            return 1
        table = table.round({"seed_sd": 4})
        if args.out:
            merged = merge_spread(old if old is not None else pd.DataFrame(columns=SEED_SPREAD_COLUMNS), table)
            atomic_write_csv(Path(args.out), merged)
            print(f"{len(table)} row(s) written to {args.out}")
        else:
            sys.stdout.write(table.to_csv(index=False))
        return 0

    return usage_errors(body)


if __name__ == "__main__":
    sys.exit(main())

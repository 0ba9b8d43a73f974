"""Whether two finished runs have identical results and, when not, which recorded facts differ between them.

    python scripts/compare_runs.py results/protonet-omniglot-5w1s-conv4-quick-s0 other/protonet-omniglot-5w1s-conv4-quick-s0

Compares the per-episode test accuracies and the validation curve (``--full``: also summaries, configurations and
timings) with :func:`benchmark.store.compare.records_differ`; when they differ, names the recorded facts that differ
between the two runs (device, CPU instruction set, thread count, CPU model, oneDNN/MKL/BLAS, PyTorch, NumPy, code
version; see docs/reproducibility.md). Prints one line. Exit code 0: identical; 1: different; 2: bad input (a
folder that is not a finished run, unreadable records), with one line on stderr.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmark.cli.toolkit import EXIT_USAGE, Parser  # noqa: E402
from benchmark.store.compare import explain, folders_differ  # noqa: E402
from benchmark.store.folders import RecordError, RunFolder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="scripts/compare_runs.py", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs=2, metavar="RUN", help="a finished run folder (<results-dir>/<run-id>)")
    p.add_argument("--full", action="store_true", help="also compare summaries, configurations and timings")
    args = p.parse_args(argv)
    folders = []
    for r in args.runs:
        folder = RunFolder.from_path(r)
        missing = folder.missing() if Path(r).is_dir() else list(RunFolder.RECORDS)
        if missing:
            print(f"error: {r} is not a finished run folder (missing {', '.join(missing)})", file=sys.stderr)
            return EXIT_USAGE
        folders.append(folder)
    try:
        why = folders_differ(*folders, full=args.full)
        same = explain(folders[0].read_summary(), folders[1].read_summary()) if why is None else ""
    except (RecordError, OSError, ValueError, KeyError) as e:
        print(f"error: cannot read the records: {str(e).splitlines()[0] if str(e) else repr(e)}", file=sys.stderr)
        return EXIT_USAGE
    if why is None:
        print(f"identical {'records' if args.full else 'results'}; {same}")
        return 0
    print(f"different: {why}")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())

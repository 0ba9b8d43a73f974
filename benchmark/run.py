"""python -m benchmark.run: meta-train and test few-shot methods on identical episodes, then write the report.

Every combination of --methods x --ways x --shots x --seeds is one run. Finished runs are skipped and interrupted
ones resume from their last checkpoint, so re-running a command is always safe. Results go to --results-dir (one
folder per run, with its best model as model.pt, plus leaderboard.csv) and the report to
--reports-dir/<--report-name>/.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

EXIT_USAGE = 2


class UsageError(Exception):
    pass


def _epilog() -> str:
    from .backbones import BACKBONES
    from .data import DATASETS
    from .config import PROFILES

    import methods

    lines = ["methods:"]
    for n, c in methods.registry().items():
        tag = f" (variant of {c.variant_of})" if c.variant_of else ""
        lines.append(f"  {n:16s} {c.family:15s} {c.idea}{tag}")
    lines.append("  all = " + ", ".join(methods.main_methods()) + "; variants = every entry above")
    lines.append("profiles:")
    lines += [f"  {p.name:8s} {p.doc} (val {p.val_episodes} / test {p.test_episodes} episodes)"
              for p in PROFILES.values()]
    lines.append("backbones:")
    lines += [f"  {n:16s} {c.doc}" for n, c in BACKBONES.items()]
    lines.append("datasets (--split: the first listed is the default; only omniglot is embedded, the others need "
                 "--data-dir):")
    lines += [f"  {n:16s} splits {'/'.join(d.splits):20s} {d.summary}" for n, d in DATASETS.items()]
    lines.append("examples:\n  python -m benchmark.run --methods all\n"
                 "  python -m benchmark.run --methods protonet,maml --shots 1 --seeds 0 1 2 --profile smoke\n"
                 "  python -m benchmark.run --methods protonet --set train_steps=2000 lr=5e-4\n"
                 "  python -m benchmark.run --methods protonet,maml --split lake\n"
                 "re-test the saved models (results/<run-id>/model.pt) without re-training:\n"
                 "  python -m benchmark.evaluate --methods protonet --ways 20 --shots 1 5")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmark.run", description=__doc__, epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="all", help="comma list of method names, 'all' (one per paper) or "
                   "'variants' (all plus ablations); default: all")
    p.add_argument("--dataset", default="omniglot", help="dataset name; default: omniglot (embedded)")
    p.add_argument("--split", default=None, help="the dataset's named class split (see 'datasets' below); "
                   "default: the dataset's usual one")
    p.add_argument("--data-dir", default=None, help="folder with the dataset in its standard layout (omniglot: "
                   "images_background/ and images_evaluation/ or their zips); default: the embedded Omniglot")
    p.add_argument("--ways", type=int, nargs="+", default=[5], help="classes per test episode; default: 5")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="support examples per class; default: 1 5")
    p.add_argument("--queries", type=int, default=15, help="query examples per class in validation and test "
                   "episodes; default: 15")
    p.add_argument("--backbone", default="conv4", help="shared backbone for every method; default: conv4")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (initialisation and training "
                   "episodes); default: 0")
    p.add_argument("--eval-seed", type=int, default=0, help="seed of the fixed validation/test episodes, shared by "
                   "all runs; default: 0")
    p.add_argument("--profile", default="quick", help="smoke | quick | paper; default: quick")
    p.add_argument("--test-episodes", type=int, default=None, help="test episodes; default: the profile's (600)")
    p.add_argument("--val-episodes", type=int, default=None, help="validation episodes; default: the profile's")
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="override hyperparameters of every selected method, e.g. --set train_steps=500")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]; default: auto (CUDA when present)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch; default: PyTorch's")
    p.add_argument("--results-dir", default="results", help="where runs are written; default: results")
    p.add_argument("--reports-dir", default="reports", help="where reports are written; default: reports")
    p.add_argument("--report-name", default="latest", help="report folder name; default: latest")
    p.add_argument("--no-report", action="store_true", help="do not build the report at the end")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--no-save-model", action="store_true", help="do not keep each finished run's best model "
                   "(results/<run-id>/model.pt, for benchmark.evaluate and benchmark.load_run); for huge sweeps")
    return p


def plan(args) -> tuple[list, object]:
    """Validate everything up front; returns (prepared runs, device), each run prepared once
    (:class:`~benchmark.config.PreparedRun`, with its ``cfg``). Raises UsageError with one clear line."""
    import methods

    from .config import RunConfig, parse_overrides, prepare
    from .data import DataError, resolve_split
    from .machine import resolve_device
    from .results import check_writable

    try:
        names = methods.resolve(args.methods)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for label, vals in (("ways", args.ways), ("shots", args.shots), ("queries", [args.queries])):
        bad = [v for v in vals if v < 1]
        if bad:
            raise UsageError(f"--{label} must be at least 1 (got {bad[0]})")
    for label, v in (("--test-episodes", args.test_episodes), ("--val-episodes", args.val_episodes)):
        if v is not None and v < 1:
            raise UsageError(f"{label} must be at least 1 (got {v})")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise UsageError(f"--data-dir {args.data_dir} does not exist or is not a folder")
    try:
        device = resolve_device(args.device)
        overrides = parse_overrides(args.set)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        split = resolve_split(args.dataset, args.split)
    except DataError as e:
        raise UsageError(str(e)) from None
    split = "" if split == resolve_split(args.dataset, None) else split
    registry = methods.registry()
    prepared = []
    for m, w, s, seed in itertools.product(names, args.ways, args.shots, args.seeds):
        cfg = RunConfig(method=m, dataset=args.dataset, split=split, ways=w, shots=s, backbone=args.backbone, seed=seed,
                        profile=args.profile, queries=args.queries, test_episodes=args.test_episodes,
                        val_episodes=args.val_episodes, eval_seed=args.eval_seed, overrides=overrides)
        try:
            prepared.append(prepare(cfg, args.data_dir, method_cls=registry[m], positive=True))
        except (ValueError, DataError) as e:
            raise UsageError(str(e)) from None
    try:
        check_writable(Path(args.results_dir))
    except OSError as e:
        raise UsageError(str(e)) from None
    return prepared, device


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        import torch

        from .perf import tune_cpu

        tune_cpu()
        if args.threads:
            torch.set_num_threads(args.threads)
        prepared, device = plan(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    from tqdm import tqdm

    from .results import LEADERBOARD, write_leaderboard
    from .runner import Interrupted, run

    def progress(iterable=None, total=None, desc="", initial=0):
        return tqdm(iterable, total=total, desc=desc, initial=initial, leave=False, dynamic_ncols=True,
                    disable=args.no_progress, file=sys.stderr, mininterval=0.5)

    results_dir = Path(args.results_dir)
    t0 = time.time()
    summaries = []
    outer = tqdm(prepared, desc="runs", disable=args.no_progress or len(prepared) < 2, file=sys.stderr,
                 dynamic_ncols=True)
    for p in outer:
        cfg = p.cfg
        outer.set_postfix_str(cfg.run_id)
        try:
            s = run(cfg, results_dir, device, args.data_dir, progress=progress, prepared=p,
                    save_model=not args.no_save_model)
        except Interrupted as e:
            print(f"\n{cfg.run_id}: {e}", file=sys.stderr)
            write_leaderboard(results_dir)
            return 130
        summaries.append(s)
        size = f", model {s['model_bytes'] / 1e6:.2f} MB" if s.get("model_bytes") else ""
        tqdm.write(f"{cfg.run_id}: {s['mean']:.2f} +- {s['ci95']:.2f} % over {s['n_episodes']} test episodes "
                   f"({s['train_episodes']} training episodes, {s['train_seconds']:.0f} s training{size})",
                   file=sys.stderr)
    board = write_leaderboard(results_dir)
    print(f"{len(summaries)} runs done in {time.time() - t0:.0f} s; leaderboard: {results_dir / LEADERBOARD} "
          f"({len(board)} runs)", file=sys.stderr)
    if not args.no_report:
        from .report import build_report

        out = build_report(results_dir, Path(args.reports_dir) / args.report_name,
                           run_ids=[s["run_id"] for s in summaries])
        print(f"report: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

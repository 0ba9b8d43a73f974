"""python -m benchmark.run: meta-train and test few-shot methods on identical episodes, then write the report.

Every combination of --methods x --ways x --shots x --seeds is one run. Finished runs are skipped and interrupted
ones resume from their last checkpoint, so re-running a command is always safe. Results go to --results-dir (one
folder per run, with its best model as model.pt, plus the per-run leaderboard.csv) and the report to
--reports-dir/<--report-name>/.

Runs execute one after another in this process (--executor sequential, the default) or as Ray tasks
(--executor ray; pip install -e '.[distributed]'). A run that fails (loss NaN or infinite, or an exception) is
recorded as failed in its folder and the others go on; re-running the command retries only failed and unfinished
runs. A run being trained by another process (a second command on the same results directory) is waited for, or
skipped with --if-locked skip. Exit codes: 0 all runs finished, 1 some failed, 2 bad input, 130 Ctrl-C, 143
SIGTERM (kill, SLURM preemption; handled like Ctrl-C: checkpoints kept, the same command resumes).
"""
from __future__ import annotations

import argparse
import itertools
import signal
import sys
import time
from pathlib import Path

from .cli.toolkit import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EXIT_USAGE, UsageError, at_least,
                  existing_dir, note, progress_factory, setup_torch, usage_errors)
from .cli.methods import add_method_files, announce_method_files, catalogue_lines, load_method_files

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TERMINATED", "EXIT_USAGE", "UsageError", "main", "parser",
           "plan"]


def _epilog() -> str:
    return "\n".join(catalogue_lines() + [
        "  check a data directory before a long run: python -m benchmark.data DATASET --data-dir DIR",
        "examples:\n  python -m benchmark.run --methods all\n"
        "  python -m benchmark.run --methods protonet,maml --shots 1 --seeds 0 1 2 --profile smoke\n"
        "  python -m benchmark.run --methods protonet --set train_steps=2000 lr=5e-4\n"
        "  python -m benchmark.run --methods all --executor ray --cpus-per-run 1   # runs in parallel (Ray)"
        "\n  python -m benchmark.run --methods protonet,maml --split lake\n"
        "re-test the saved models (results/<run-id>/model.pt) without re-training:\n"
        "  python -m benchmark.evaluate --methods protonet --ways 20 --shots 1 5"])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmark.run", description=__doc__, epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="all", help="comma list of method names, 'all' (one per paper) or "
                   "'variants' (all plus ablations); default: all")
    add_method_files(p)
    p.add_argument("--dataset", default="omniglot", help="dataset name; default: omniglot (embedded)")
    p.add_argument("--split", default=None, help="the dataset's named class split (see 'datasets' below); "
                   "default: the dataset's usual one")
    p.add_argument("--data-dir", default=None, help="folder with the dataset in one of its standard layouts (see "
                   "'datasets' below; check it with python -m benchmark.data); default: the embedded Omniglot")
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
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch in this process; default: "
                   "PyTorch's (Ray tasks use --cpus-per-run)")
    p.add_argument("--results-dir", default="results", help="where runs are written; default: results")
    p.add_argument("--reports-dir", default=None, help="where reports are written; default: reports beside the "
                   "results directory (<results-dir>/../reports; results -> reports)")
    p.add_argument("--report-name", default="latest", help="report folder name; default: latest")
    p.add_argument("--no-report", action="store_true", help="do not build the report at the end")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars and per-run progress lines")
    p.add_argument("--no-save-model", action="store_true", help="do not keep each finished run's best model "
                   "(results/<run-id>/model.pt, for benchmark.evaluate and benchmark.load_run); for huge sweeps")
    d = p.add_argument_group("speed and numerics (see the README's 'Running on a GPU')")
    d.add_argument("--precision", default="fp32", metavar="{fp32,bf16}",
                   help="fp32 (default, the papers' precision) or bf16: autocast of training and evaluation to "
                   "bfloat16 (parameters and optimiser state stay float32); part of the run id, marked in the report")
    d.add_argument("--prefetch", default="auto", metavar="N|auto",
                   help="training meta-batches and evaluation groups drawn N ahead by a background thread (pinned "
                   "memory, asynchronous copies on CUDA); 0 turns it off; results are the same at any N; default: "
                   "auto, 2 on CUDA and 0 on the CPU (measured no faster there)")
    d.add_argument("--no-deterministic", action="store_true",
                   help="CUDA: let cuDNN pick fast non-deterministic kernels (cudnn.benchmark) instead of the "
                   "default deterministic ones; recorded per run and marked in the report; no effect on the CPU")
    d.add_argument("--compile", action="store_true",
                   help="torch.compile each method's compilable modules (not MAML, Reptile or the Meta-LSTM, which "
                   "run their networks functionally); off by default: measured slower on the CPU")
    g = p.add_argument_group("executing the runs")
    g.add_argument("--executor", choices=("sequential", "ray"), default="sequential",
                   help="sequential: one run after another in this process (the default); ray: each run as a Ray "
                   "task, in parallel (needs pip install -e '.[distributed]')")
    g.add_argument("--ray-address", default="", help="Ray cluster to join: empty starts a local Ray instance on "
                   "this machine (the default), 'auto' or HOST:PORT joins a running one (ray start --head)")
    g.add_argument("--cpus-per-run", type=int, default=1, help="Ray: CPUs reserved per run, also PyTorch's threads "
                   "in it; default: 1")
    g.add_argument("--gpus-per-run", type=float, default=None, help="Ray: GPUs per run, fractions allowed (0.25: "
                   "four runs share a GPU); default: 1 when --device resolves to CUDA, else 0")
    g.add_argument("--max-retries", type=int, default=3, help="Ray: times a run whose worker died is retried (from "
                   "its checkpoint); default: 3")
    g.add_argument("--if-locked", choices=("wait", "skip"), default="wait",
                   help="a run another process is training: wait for it (default) or skip it with a note")
    return p


def plan(args) -> tuple[list, object]:
    """Validate everything up front; returns (prepared runs, device), each run prepared once
    (:class:`~benchmark.pipeline.config.PreparedRun`, with its ``cfg``). Raises UsageError with one clear line."""
    _check_counts(args)
    load_method_files(args.method_file)
    device = setup_torch(args.device, args.threads)
    _check_executor(args, device)
    prepared = _prepare_runs(args)
    from .store.files import check_writable

    try:
        check_writable(Path(args.results_dir))
    except OSError as e:
        raise UsageError(str(e)) from None
    return prepared, device


def _check_counts(args) -> None:
    """The numbers and folders of the command line (before anything is loaded)."""
    at_least("--cpus-per-run", args.cpus_per_run)
    at_least("--gpus-per-run", args.gpus_per_run, low=0)
    at_least("--max-retries", args.max_retries, low=0)
    at_least("--ways", args.ways)
    at_least("--shots", args.shots)
    at_least("--queries", args.queries)
    at_least("--test-episodes", args.test_episodes)
    at_least("--val-episodes", args.val_episodes)
    existing_dir("--data-dir", args.data_dir)
    from .pipeline.execution import check_precision, parse_prefetch

    try:
        check_precision(args.precision)
        args.prefetch_depth = parse_prefetch(args.prefetch)
    except ValueError as e:
        msg = str(e)
        raise UsageError(msg if msg.startswith("--") else f"--precision: {msg}") from None


def execution(args):
    """The :class:`~benchmark.pipeline.execution.Execution` of the command line (after :func:`_check_counts`)."""
    from .pipeline.execution import Execution

    return Execution(prefetch=getattr(args, "prefetch_depth", None), deterministic=not args.no_deterministic,
                     compile=args.compile)


def _check_executor(args, device) -> None:
    """Ray is installed when asked for, and its GPU share agrees with the device (``--gpus-per-run``'s default: 1
    on CUDA, else 0)."""
    if args.executor != "ray":
        return
    from .pipeline.executors import RAY_MISSING

    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    if args.gpus_per_run is None:
        args.gpus_per_run = 1.0 if device.type == "cuda" else 0.0
    if device.type == "cuda" and args.gpus_per_run == 0:
        raise UsageError("--device is CUDA but --gpus-per-run is 0; give each run a share of a GPU "
                         "(e.g. --gpus-per-run 0.25) or use --device cpu")
    if device.type == "cpu" and args.gpus_per_run > 0:
        raise UsageError("--gpus-per-run needs --device cuda (or auto on a machine with a GPU)")


def _prepare_runs(args) -> list:
    """One prepared run per (method, ways, shots, seed), methods looked up in the registry."""
    from .pipeline import registry

    from .pipeline.config import RunConfig, parse_overrides, prepare
    from .data import DataError, resolve_split

    try:
        names = registry.resolve(args.methods)
        overrides = parse_overrides(args.set)
        split = resolve_split(args.dataset, args.split)
    except (ValueError, DataError) as e:
        raise UsageError(str(e)) from None
    split = "" if split == resolve_split(args.dataset, None) else split
    classes = registry.registry()
    prepared = []
    for m, w, s, seed in itertools.product(names, args.ways, args.shots, args.seeds):
        cfg = RunConfig(method=m, dataset=args.dataset, split=split, ways=w, shots=s, backbone=args.backbone, seed=seed,
                        profile=args.profile, queries=args.queries, test_episodes=args.test_episodes,
                        val_episodes=args.val_episodes, eval_seed=args.eval_seed, overrides=overrides,
                        precision=args.precision)
        try:
            prepared.append(prepare(cfg, classes[m], args.data_dir, positive=True))
        except (ValueError, DataError) as e:
            raise UsageError(str(e)) from None
    return prepared


def _executor(args, device, progress):
    from .pipeline.executors import RayExecutor, SequentialExecutor

    if args.executor == "ray":
        return RayExecutor(Path(args.results_dir), device, args.ray_address, args.cpus_per_run, args.gpus_per_run,
                           args.max_retries, args.if_locked, progress_lines=not args.no_progress, note=note,
                           save_model=not args.no_save_model, execution=execution(args))
    return SequentialExecutor(Path(args.results_dir), device, progress, args.if_locked, note,
                              save_model=not args.no_save_model, execution=execution(args))


def _announce(o) -> None:
    """One line per finished, failed or skipped run."""
    if o.status == "done":
        s = o.summary
        size = f", model {s['model_bytes'] / 1e6:.2f} MB" if s.get("model_bytes") else ""
        note(f"{o.run_id}: {s['mean']:.2f} +- {s['ci95']:.2f} % over {s['n_episodes']} test episodes "
             f"({s['train_episodes']} training episodes, {s['train_seconds']:.0f} s training{size}"
             f"{'' if o.trained else '; finished before, not re-run'})")
    elif o.status == "failed":
        note(f"{o.run_id}: FAILED: {o.failure['reason']}")
    else:
        note(f"{o.run_id}: {o.note}")


def _execute(executor, prepared, args) -> tuple[list | None, int | None]:
    """Carry out the runs with the run-level progress bar; (outcomes, None), or (None, exit code) when Ctrl-C or
    SIGTERM stopped them (checkpoints kept, leaderboard written)."""
    from tqdm import tqdm

    from .store.leaderboard import write_runs_leaderboard
    from .pipeline.training import Interrupted

    from .pipeline.eta import RunsETA, costs_for
    from .store.folders import RunFolder

    results_dir = Path(args.results_dir)
    todo = [p for p in prepared if not RunFolder(results_dir, p.cfg.run_id).is_finished()]
    eta = RunsETA(costs_for(todo, results_dir))  # time left weighted by each run's expected cost (benchmark.pipeline.eta)
    outer = tqdm(total=len(prepared), desc="runs", unit="run", disable=args.no_progress or len(prepared) < 2,
                 file=sys.stderr, dynamic_ncols=True,
                 bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")  # no tqdm mean-based ETA

    def on_outcome(o) -> None:
        if o.trained or o.status == "failed":  # its time was spent in this job
            eta.finished(o.run_id)
        else:
            eta.discard(o.run_id)
        outer.update(1)
        outer.set_postfix_str(eta.postfix())
        _announce(o)

    terminated = []

    def on_term(signum, frame):  # kill, SLURM preemption, docker stop: stop as on Ctrl-C, checkpoints kept
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return executor.execute(prepared, on_outcome), None
    except (Interrupted, KeyboardInterrupt) as e:
        outer.close()
        print(f"\n{e or 'interrupted; run the same command again to resume'}", file=sys.stderr)
        write_runs_leaderboard(Path(args.results_dir))
        return None, EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
        outer.close()


def _summarise(outcomes, prepared, executor, args, seconds: float) -> int:
    """The closing lines (runs done, skipped, failed), the leaderboard and the report; the exit code."""
    from .store.leaderboard import write_runs_leaderboard
    from .store.folders import runs_leaderboard_path

    results_dir = Path(args.results_dir)
    done = [o for o in outcomes if o.status == "done"]
    failed = [o for o in outcomes if o.status == "failed"]
    skipped = [o for o in outcomes if o.status == "skipped"]
    board = write_runs_leaderboard(results_dir)
    print(f"{len(done)} runs done in {seconds:.0f} s ({executor.name} executor); leaderboard: "
          f"{runs_leaderboard_path(results_dir)} ({len(board)} runs)", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} run(s) skipped, being trained by another process: "
              f"{', '.join(o.run_id for o in skipped)}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} run(s) failed (records in <run-id>.partial/failed.json; the same command retries "
              "them):", file=sys.stderr)
        for o in failed:
            print(f"  {o.run_id}: {o.failure['reason']}", file=sys.stderr)
    if not args.no_report and done:
        from .report import build_report

        reports = Path(args.reports_dir) if args.reports_dir else Path(results_dir).parent / "reports"
        out = build_report(results_dir, reports / args.report_name,
                           run_ids=[p.cfg.run_id for p in prepared])
        print(f"report: {out}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    announce_method_files(argv if argv is not None else sys.argv[1:])
    args = parser().parse_args(argv)
    return usage_errors(lambda: _main(args))


def _main(args) -> int:
    prepared, device = plan(args)
    executor = _executor(args, device, progress_factory(args.no_progress))
    t0 = time.time()
    outcomes, code = _execute(executor, prepared, args)
    if outcomes is None:
        return code
    return _summarise(outcomes, prepared, executor, args, time.time() - t0)


if __name__ == "__main__":
    sys.exit(main())

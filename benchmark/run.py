"""python -m benchmark.run: meta-train and test few-shot methods on identical episodes, then write the report.

Every combination of --methods x --ways x --shots x --seeds is one run. Finished runs are skipped and interrupted
ones resume from their last checkpoint, so re-running a command is always safe. Results go to --results-dir (one
folder per run, with its best model as model.pt, plus the per-run leaderboard.csv) and the report to
--reports-dir/<--report-name>/.

Runs execute one after another in this process (--executor sequential, the default), packed in worker processes
on this machine (--executor processes --workers N) or as Ray tasks (--executor ray; pip install -e
'.[distributed]'). A run that fails (loss NaN or infinite, or an exception) is
recorded as failed in its folder and the others go on (a failure that cannot even be recorded, e.g. on a full disk,
is said in one line at the end; the run stays unfinished); re-running the command retries only failed and
unfinished runs. A run being trained by another process (a second command on the same results directory) is waited
for, or skipped with --if-locked skip. The report is of every finished run in --results-dir (not only this
command's), built under a lock: two commands on one results directory never interleave their report files, and the
one that finishes last writes the report of every run either made. A finished run whose summary is at chance
(100/ways %, a finite loss: diverged?) is flagged (at_chance in summary.json, a note in the report).

Bad input prints one line and exits with code 2 before anything is written: a value of the wrong type or out of
range (--threads and every count at least 1, seeds 0 or more), an empty or '.' --report-name, a --results-dir or
--reports-dir that is not a folder or not writable, a damaged record of a finished run in --results-dir (its file
named: delete that run's folder to re-run it; it is refused, never retrained over). Exit codes: 0 all runs finished,
1 some failed, 2 bad input, 130 Ctrl-C, 143 SIGTERM (kill, SLURM preemption; handled like Ctrl-C: checkpoints kept,
the same command resumes).
"""
from __future__ import annotations

import argparse
import itertools
import signal
import sys
import time
from pathlib import Path

from .cli.toolkit import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    Parser,
    UsageError,
    at_least,
    existing_dir,
    folder_name,
    gpu_share,
    note,
    progress_factory,
    usage_errors,
    whole_number,
    writable_dir,
)
from .pipeline.method_options import add_method_files, announce_method_files, catalogue_lines, load_method_files
from .pipeline.plan import RAY_INIT_TIMEOUT_S, RAY_PROBE_TIMEOUT_S

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TERMINATED", "EXIT_USAGE", "UsageError", "main", "parser",
           "plan"]


def _epilog() -> str:
    return "\n".join(catalogue_lines() + [
        "  check a data directory before a long run: python -m benchmark.data DATASET --data-dir DIR",
        "examples:\n  python -m benchmark.run --methods all\n"
        "  python -m benchmark.run --methods protonet,maml --shots 1 --seeds 0 1 2 --profile smoke\n"
        "  python -m benchmark.run --methods protonet --set train_steps=2000 lr=5e-4\n"
        "  python -m benchmark.run --methods all --executor processes --workers 2   # runs in parallel, one machine\n"
        "  python -m benchmark.run --methods all --executor ray --cpus-per-run 1   # runs in parallel (Ray)"
        "\n  python -m benchmark.run --methods protonet,maml --split lake\n"
        "re-test the saved models (results/<run-id>/model.pt) without re-training:\n"
        "  python -m benchmark.evaluate --methods protonet --ways 20 --shots 1 5"])


def parser() -> argparse.ArgumentParser:
    p = Parser(
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
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds, 0 or more (initialisation and "
                   "training episodes); default: 0")
    p.add_argument("--eval-seed", type=int, default=0, help="seed of the fixed validation/test episodes, shared by "
                   "all runs, 0 or more; default: 0")
    p.add_argument("--profile", default="quick", help="smoke | quick | paper; default: quick")
    p.add_argument("--test-episodes", type=int, default=None, help="test episodes; default: the profile's (600)")
    p.add_argument("--val-episodes", type=int, default=None, help="validation episodes; default: the profile's")
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="override hyperparameters of every selected method, e.g. --set train_steps=500")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]; default: auto (CUDA when present)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch in this process, at least 1 "
                   "(0 is refused; with --executor processes: in each worker); default: PyTorch's (processes: the "
                   "cores divided by --workers; Ray tasks use --cpus-per-run)")
    p.add_argument("--results-dir", default="results", help="where runs are written; default: results")
    p.add_argument("--reports-dir", default=None, help="where reports are written (checked writable before any run "
                   "starts); default: reports beside the results directory (<results-dir>/../reports; results -> "
                   "reports)")
    p.add_argument("--report-name", default="latest", help="report folder name (not empty); the report is of every "
                   "finished run in --results-dir, so two commands on one results directory share it and the one "
                   "finishing last includes the runs of both; default: latest")
    p.add_argument("--no-report", action="store_true", help="do not build the report at the end")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars and per-run progress lines")
    p.add_argument("--no-save-model", action="store_true", help="do not keep each finished run's best model "
                   "(results/<run-id>/model.pt, for benchmark.evaluate and benchmark.load_run); for huge sweeps")
    _speed_options(p.add_argument_group("speed and numerics (see docs/gpu.md)"))
    _executor_options(p.add_argument_group("executing the runs"))
    return p


def _speed_options(d) -> None:
    """The options of speed and numerics (``--help``'s group "speed and numerics")."""
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
    d.add_argument("--capture", action="store_true",
                   help="CUDA: compile the same modules with torch.compile mode reduce-overhead, so that their "
                   "forward and backward passes replay as captured CUDA graphs (fewer kernel launches); recorded per "
                   "run; off by default until measured (python -m benchmark.gpu_check); refused on the CPU")


def _executor_options(g) -> None:
    """The options of the executors (``--help``'s group "executing the runs")."""
    g.add_argument("--executor", choices=("sequential", "processes", "ray"), default="sequential",
                   help="sequential: one run after another in this process (the default); processes: the runs "
                   "packed in --workers processes on this machine (no Ray needed); ray: each run as a Ray task, in "
                   "parallel, on this machine or a cluster (needs pip install -e '.[distributed]')")
    g.add_argument("--workers", default=None, metavar="N",
                   help="processes: worker processes (runs at once), each with the cores divided by N as PyTorch "
                   "threads and, on CUDA, one of the visible GPUs in turn (several workers share a GPU); default: 2")
    g.add_argument("--ray-address", default="", help="Ray cluster to join: empty starts a local Ray instance on "
                   "this machine (the default), 'auto' or HOST:PORT joins a running one (ray start --head); a "
                   f"HOST:PORT that accepts no connection within {RAY_PROBE_TIMEOUT_S:g} s, or a cluster Ray cannot "
                   f"join within {RAY_INIT_TIMEOUT_S:g} s, is refused (exit 2)")
    g.add_argument("--cpus-per-run", type=int, default=1, help="Ray: CPUs reserved per run, also PyTorch's threads "
                   "in it; default: 1")
    g.add_argument("--gpus-per-run", type=float, default=None, help="Ray: GPUs per run, a fraction up to 1 (0.25: "
                   "four runs share a GPU) or a whole number; refused when the cluster has no GPU; default: 1 when "
                   "--device resolves to CUDA, else 0")
    g.add_argument("--max-retries", type=int, default=3, help="Ray and processes: times a run whose worker process "
                   "died is started again (from its checkpoint); default: 3")
    g.add_argument("--if-locked", choices=("wait", "skip"), default="wait",
                   help="a run another process is training: wait for it (default) or skip it with a note")


def plan(args):
    """Validate everything up front; returns the command's frozen :class:`~benchmark.pipeline.plan.Plan` (the
    prepared runs, each prepared once, the results folder, device, execution, executor and its settings), which the
    rest of the command reads instead of ``args``. Raises UsageError with one clear line."""
    from .pipeline.plan import Plan

    prefetch, workers = _check_counts(args)
    load_method_files(args.method_file)
    from .pipeline.machine import setup_torch  # imports torch: after the arguments are read

    device = setup_torch(args.device, args.threads)
    if args.capture and device.type != "cuda":
        raise UsageError(f"--capture records CUDA graphs and needs --device cuda (this run is on {device}); use "
                         "--compile for compiled kernels on the CPU")
    settings = _executor_settings(args, device, workers)
    runs = _prepare_runs(args)
    results_dir = Path(args.results_dir)
    _check_records(results_dir)
    reports_dir = Path(args.reports_dir) if args.reports_dir else results_dir.parent / "reports"
    if not args.no_report:
        writable_dir("--reports-dir", reports_dir)
        writable_dir("--report-name", reports_dir / args.report_name)
    from .pipeline.execution import Execution
    from .store.files import check_writable

    try:
        check_writable(results_dir)
    except OSError as e:
        raise UsageError(str(e)) from None
    return Plan(runs, results_dir, device, Execution(prefetch, not args.no_deterministic, args.compile,
                                                     args.capture),
                args.executor, settings, args.if_locked, not args.no_save_model, not args.no_progress,
                None if args.no_report else reports_dir / args.report_name)


def _check_records(results_dir: Path) -> None:
    """Every finished run in ``results_dir`` has readable records (its summary feeds the per-run leaderboard and the
    report, and a finished run is never retrained): a damaged or foreign one is refused, naming the file and the fix
    (delete that folder to re-run the run), before any work."""
    from .store.folders import RecordError, run_folders

    if results_dir.is_file():
        raise UsageError(f"--results-dir {results_dir} is a file, not a folder; choose another with --results-dir")
    for folder in run_folders(results_dir):
        try:
            if folder.is_finished():
                folder.check_finished()
        except RecordError as e:
            raise UsageError(str(e)) from None


def _check_counts(args) -> tuple[int | None, int | None]:
    """The numbers and folders of the command line (before anything is loaded); returns the prefetch depth (None:
    the device's default) and the number of workers (None: not the process pool)."""
    at_least("--cpus-per-run", args.cpus_per_run)
    gpu_share("--gpus-per-run", args.gpus_per_run)
    at_least("--max-retries", args.max_retries, low=0)
    at_least("--seeds", args.seeds, low=0)
    at_least("--eval-seed", args.eval_seed, low=0)
    at_least("--threads", args.threads)
    folder_name("--report-name", args.report_name)
    at_least("--ways", args.ways)
    at_least("--shots", args.shots)
    at_least("--queries", args.queries)
    at_least("--test-episodes", args.test_episodes)
    at_least("--val-episodes", args.val_episodes)
    existing_dir("--data-dir", args.data_dir)
    workers = whole_number("--workers", args.workers)
    if workers is not None and args.executor != "processes":
        raise UsageError("--workers is for --executor processes (Ray: --cpus-per-run)")
    from .pipeline.execution import check_precision, parse_prefetch

    try:
        check_precision(args.precision)
        return parse_prefetch(args.prefetch), workers
    except ValueError as e:
        msg = str(e)
        raise UsageError(msg if msg.startswith("--") else f"--precision: {msg}") from None


def _executor_settings(args, device, workers: int | None):
    """The executor's settings (None for the sequential executor): Ray is installed when asked for, its address
    answers, and its GPU share agrees with the device (``--gpus-per-run``'s default: 1 on CUDA, else 0)."""
    from .pipeline.plan import ProcessSettings, RaySettings

    if args.executor == "processes":
        return ProcessSettings(workers or 2, args.threads, args.max_retries)
    if args.executor != "ray":
        return None
    from .pipeline.executors import RAY_MISSING, ClusterError, check_ray_address

    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    gpus = args.gpus_per_run
    if gpus is None:
        gpus = 1.0 if device.type == "cuda" else 0.0
    if device.type == "cpu" and gpus > 0:
        raise UsageError("--gpus-per-run needs --device cuda (or auto on a machine with a GPU)")
    try:
        check_ray_address(args.ray_address)
    except ClusterError as e:
        raise UsageError(str(e)) from None
    return RaySettings(args.ray_address, args.cpus_per_run, gpus, args.max_retries)


def _prepare_runs(args) -> list:
    """One prepared run per (method, ways, shots, seed), methods looked up in the registry."""
    from .data import DataError, resolve_split
    from .pipeline import registry
    from .pipeline.config import RunConfig, parse_overrides, prepare

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


def _executor(plan, progress):
    """The executor of ``plan`` (``progress``: the sequential executor's bars)."""
    from .pipeline.executors import ProcessExecutor, RayExecutor, SequentialExecutor

    template = plan.template()
    if plan.executor == "ray":
        return RayExecutor(template, plan.settings, progress_lines=plan.progress, note=note)
    if plan.executor == "processes":
        return ProcessExecutor(template, plan.settings, progress_lines=plan.progress, note=note)
    return SequentialExecutor(template, progress, note)


def _announce(o) -> None:
    """One line per finished, failed or skipped run."""
    if o.status == "done":
        s = o.summary
        size = f", model {s['model_bytes'] / 1e6:.2f} MB" if s.get("model_bytes") else ""
        train = (f"{s['train_episodes']} training episodes, {s['train_seconds']:.0f} s training"
                 if isinstance(s.get("train_seconds"), (int, float)) else "training not recorded")
        note(f"{o.run_id}: {s['mean']:.2f} +- {s['ci95']:.2f} % over {s['n_episodes']} test episodes "
             f"({train}{size}{'' if o.trained else '; finished before, not re-run'})"
             f"{'; at chance: diverged?' if s.get('at_chance') else ''}")
    elif o.status == "failed":
        note(f"{o.run_id}: FAILED: {o.failure['reason']}{_unrecorded(o)}")
    else:
        note(f"{o.run_id}: {o.note}")


def _unrecorded(o) -> str:
    why = (o.failure or {}).get("unrecorded")
    return f" (the failure could not be recorded: {why})" if why else ""


def _execute(executor, plan) -> tuple[list | None, int | None]:
    """Carry out the runs with the run-level progress bar; (outcomes, None), or (None, exit code) when Ctrl-C or
    SIGTERM stopped them (checkpoints kept, leaderboard written)."""
    from tqdm import tqdm

    from .pipeline.eta import RunsETA, costs_for
    from .pipeline.executors import ClusterError
    from .pipeline.training import Interrupted
    from .store.folders import RunFolder
    from .store.leaderboard import write_runs_leaderboard

    todo = [p for p in plan.runs if not RunFolder(plan.results_dir, p.cfg.run_id).is_finished()]
    eta = RunsETA(costs_for(todo, plan.results_dir))  # time left weighted by each run's expected cost (pipeline.eta)
    outer = tqdm(total=len(plan.runs), desc="runs", unit="run", disable=not plan.progress or len(plan.runs) < 2,
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
        return executor.execute(list(plan.runs), on_outcome), None
    except ClusterError as e:  # Ray cannot take the runs; nothing was submitted
        raise UsageError(str(e)) from None
    except (Interrupted, KeyboardInterrupt) as e:
        outer.close()
        print(f"\n{e or 'interrupted; run the same command again to resume'}", file=sys.stderr)
        write_runs_leaderboard(plan.results_dir)
        return None, EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
        outer.close()


def _summarise(outcomes, plan, executor, seconds: float) -> int:
    """The closing lines (runs done, skipped, failed), the leaderboard and the report; the exit code."""
    from .store.folders import runs_leaderboard_path
    from .store.leaderboard import write_runs_leaderboard

    results_dir = plan.results_dir
    done = [o for o in outcomes if o.status == "done"]
    failed = [o for o in outcomes if o.status == "failed"]
    skipped = [o for o in outcomes if o.status == "skipped"]
    try:
        board = write_runs_leaderboard(results_dir)
        where = f"leaderboard: {runs_leaderboard_path(results_dir)} ({len(board)} runs)"
    except (OSError, ValueError) as e:  # a full disk, or a run's summary damaged since the command started
        where = f"leaderboard NOT written: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        failed_writes = True
    else:
        failed_writes = False
    print(f"{len(done)} runs done in {seconds:.0f} s ({executor.name} executor); {where}", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} run(s) skipped, being trained by another process: "
              f"{', '.join(o.run_id for o in skipped)}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} run(s) failed (records in <run-id>.partial/failed.json; the same command retries "
              "them):", file=sys.stderr)
        for o in failed:
            print(f"  {o.run_id}: {o.failure['reason']}{_unrecorded(o)}", file=sys.stderr)
    if plan.report_dir is not None and done:
        failed_writes |= not _report(results_dir, plan.report_dir)
    unrecorded = [o for o in failed if o.failure.get("unrecorded")]
    if unrecorded:
        print(f"error: {len(unrecorded)} failure(s) could not be recorded (first: {unrecorded[0].failure['unrecorded']})"
              "; those runs stay unfinished: free space in (or fix) the results directory and re-run the same "
              "command", file=sys.stderr)
    return EXIT_FAILED if failed or failed_writes else EXIT_OK


def _report(results_dir: Path, report_dir: Path) -> bool:
    """Build the report of every finished run in the results directory under its report lock (two commands on one
    results directory never interleave report files, and the later one reports the runs of both); one line, and
    False, when it cannot be written (a full disk, a record damaged since the command started)."""
    from .report import ReportError, build_report
    from .store.folders import report_lock

    try:
        with report_lock(results_dir):
            out = build_report(results_dir, report_dir)
    except (ReportError, OSError) as e:
        print(f"error: report NOT written: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return False
    print(f"report: {out}", file=sys.stderr)
    return True


def main(argv: list[str] | None = None) -> int:
    announce_method_files(argv if argv is not None else sys.argv[1:])
    args = parser().parse_args(argv)
    return usage_errors(lambda: _main(args))


def _main(args) -> int:
    the_plan = plan(args)
    executor = _executor(the_plan, progress_factory(not the_plan.progress))
    t0 = time.time()
    outcomes, code = _execute(executor, the_plan)
    if outcomes is None:
        return code
    return _summarise(outcomes, the_plan, executor, time.time() - t0)


if __name__ == "__main__":
    sys.exit(main())

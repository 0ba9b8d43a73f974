"""python -m benchmark.gpu_check: a check of the harness on a CUDA machine, within a time budget, in one report.

Parts (each catches its own failure and records it, so one failing part does not stop the others; the summary is
rewritten after every part, so a check cut short keeps what it measured):

(a) speed: milliseconds per training episode and per test episode of every main method, 1- and 5-shot, at the
    ``paper`` profile's training shapes (fp32 cases first, then bf16 while time is left, and MAML with
    ``vectorize`` on and off), with each one's FLOPs per training episode (``torch.utils.flop_counter``, counted
    eagerly), the share of the device's peak that achieves, and its projected paper-length hours
    (:func:`benchmark.speed.paper_projection`), under :func:`benchmark.pipeline.machine.configure_determinism`;
    warnings about operations without a deterministic CUDA kernel are listed;
(capture) ``--capture`` (CUDA graphs), in its own share of the budget: ProtoNet's and Matching's 1-shot smoke runs
    eager and captured (two jobs side by side, Dynamo's recompilations logged), per-episode and mean accuracy of
    each captured run against the eager one on the same episodes, and the frames Dynamo compiled; captured results
    equal to the eager ones bit for bit say that capture probably did not happen. Then, while time is left, the
    same methods' paper-shape steps timed eager and captured. Not run without a C compiler and ``Python.h``
    (Triton needs both), said in one line. Informative: the default stays eager until it shows the same accuracy
    and a faster step;
(b) determinism: the smoke main job twice, into two results folders; every run both finished must have identical
    records (:func:`benchmark.store.compare.folders_differ`), and a run only one finished fails the part unless the
    other job was stopped at its time limit before reaching it;
(c) resume: a run stopped mid-way and resumed must equal an uninterrupted one (runner API);
(d) packing: the quick main job with ``--executor processes --workers K`` for K = 1, 2, 4, 8, each for an equal
    window: runs finished per minute, training episodes per second (finished runs' and stopped runs' checkpoints')
    and the GPU's mean utilisation (throughput runs: ``--no-deterministic``);
(e) the quick main job ``--methods all`` on the GPU with the most workers, to the end (or the part's deadline): wall
    clock, runs finished, utilisation (``--no-deterministic``);
(f) reproduce: the ``paper`` profile of the cheapest settings by projected cost (from (a); the paper's training
    episodes otherwise), as many as the time left allows, packed; each finished one with its published figure and
    the difference. "not run (time)" when no projection fits the time left, or when nothing could finish in it.

The check ends within ``--budget-s`` (its parts stop :data:`STOP_MARGIN_S` early, for stopping their jobs). Its
jobs run in their own process groups and are stopped (Ctrl-C, then killed) whenever the check ends: normally, on an
error, on Ctrl-C or on SIGTERM/SIGHUP. Everything it measured stays in its files folder (``--keep``; default
``<out>-files`` next to the summary): each job's full output (``logs/``), the runs' folders (records of what
finished, ``failed.json`` and ``traceback.txt`` of what failed, checkpoints of what was stopped), the GPU
utilisation samples (``utilisation-<part>.csv``), and the summary itself.

``--dry-run`` (or ``--device cpu``) runs the same parts at tiny sizes on the CPU, so the script itself is tested
without a GPU. Exit code: 0 when every part passed (or was not run for lack of time or a compiler), 1 otherwise, 2
on bad arguments.

Example: python -m benchmark.gpu_check --budget-s 540 --out gpu_check.md
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from ..cli.toolkit import Parser
from .determinism import part_determinism, part_resume
from .jobs import Jobs
from .plan import TITLES, Part, Plan, make_plan
from .reproduction import part_reproduce
from .summary import write_summary
from .throughput import part_packing, part_quick
from .timing import part_capture, part_speed

#: share of the budget each part may take (time a part leaves unused carries over to the next); (f) gets the rest
SHARES = {"speed": 0.15, "capture": 0.25, "determinism": 0.1, "resume": 0.05, "packing": 0.15, "quick": 0.12}
#: seconds at the end of the budget no part is given: stopping the last part's jobs (Ctrl-C, then up to
#: :data:`~benchmark.gpu_check.jobs.STOP_GRACE_S` for their checkpoints) and writing the summary (a tenth of the
#: budget when that is less)
STOP_MARGIN_S = 45.0


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m benchmark.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda[:N] (default) or cpu (the same as --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, to test the script")
    p.add_argument("--budget-s", type=float, default=540.0, help="total seconds for all parts; default 540")
    p.add_argument("--out", default="gpu_check.md", help="markdown summary; default gpu_check.md")
    p.add_argument("--keep", default=None, help="the check's files folder: the parts' results folders, the jobs' "
                   "logs, utilisation samples and a copy of the summary (default: <out>-files next to the summary)")
    p.add_argument("--parts", default=",".join(TITLES), help=f"comma list of the parts to run; default "
                   f"{','.join(TITLES)}")
    return p


def _stop_on_signal(signum, frame):
    """SIGTERM or SIGHUP: end the check as Ctrl-C would (its summary written, its jobs stopped)."""
    raise SystemExit(128 + signum)


def _parts(plan: Plan, work: Path, jobs: Jobs, measured: dict) -> dict:
    """Each part's call (its deadline -> :class:`~benchmark.gpu_check.plan.Part`), in the check's order, with the
    values it needs: the jobs (their logs, stopped when the check ends) and, for part (f), part (a)'s projections
    (``measured``, filled by :func:`main` once part (a) returns them)."""
    return {"speed": lambda deadline: part_speed(plan, deadline, work / "cache"),
            "capture": lambda deadline: part_capture(plan, deadline, work, jobs),
            "determinism": lambda deadline: part_determinism(plan, deadline, work, jobs),
            "resume": lambda deadline: part_resume(plan, deadline, work),
            "packing": lambda deadline: part_packing(plan, deadline, work, jobs),
            "quick": lambda deadline: part_quick(plan, deadline, work, jobs),
            "reproduce": lambda deadline: part_reproduce(plan, deadline, work, jobs, measured)}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    dry = args.dry_run or args.device == "cpu"
    device = "cpu" if dry else args.device
    started = time.monotonic()
    from ..pipeline.machine import tune_cpu

    tune_cpu()
    plan = make_plan(device, dry)
    wanted = [w.strip() for w in args.parts.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in TITLES]
    if unknown:
        print(f"error: unknown part(s) {', '.join(unknown)}; choose from {', '.join(TITLES)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    work = Path(args.keep) if args.keep else out.with_name(f"{out.stem}-files")
    work.mkdir(parents=True, exist_ok=True)
    jobs, measured = Jobs(work / "logs"), {}
    runners = _parts(plan, work, jobs, measured)
    usable = args.budget_s - min(STOP_MARGIN_S, 0.1 * args.budget_s)  # the rest: stopping the jobs, the summary
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            handlers[sig] = signal.signal(sig, _stop_on_signal)
    parts: list[Part] = []
    try:
        elapsed_share = 0.0
        for name in runners:
            if name not in wanted:
                continue
            elapsed_share += SHARES.get(name, 1.0 - sum(SHARES.values()))
            deadline = started + usable * min(1.0, elapsed_share)  # time left over carries to later parts
            t0 = time.monotonic()
            try:
                part = runners[name](deadline)
            except Exception as e:  # noqa: BLE001 - one part's failure is recorded, the others run
                part = Part(name, TITLES[name], ok=False, error="".join(traceback.format_exception_only(type(e), e)) +
                            traceback.format_exc(limit=-3))
            part.seconds = time.monotonic() - t0
            measured.update(part.projections)  # part (a)'s, for part (f)
            parts.append(part)
            write_summary(out, plan, parts, args.budget_s, started)  # nothing measured is lost
            print(f"{part.title}: {'PASS' if part.ok else 'FAIL' if part.ok is False else 'not run'} "
                  f"({part.seconds:.0f} s)", flush=True)
    finally:
        stopped = jobs.stop_all()  # on any exit: an error, Ctrl-C, SIGTERM/SIGHUP
        if stopped:
            print(f"stopped {stopped} job(s) still running", file=sys.stderr, flush=True)
        write_summary(out, plan, parts, args.budget_s, started)
        if out.resolve() != (work / out.name).resolve():
            shutil.copyfile(out, work / out.name)
        for sig, old in handlers.items():
            signal.signal(sig, old)
    print(f"summary: {args.out}; files: {work}")
    return 0 if parts and all(p.ok is not False for p in parts) and any(p.ok for p in parts) else 1

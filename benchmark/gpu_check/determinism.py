"""The GPU check's parts on records: (b) determinism (:func:`part_determinism`: the smoke main job twice) and (c)
resume (:func:`part_resume`: a run stopped and resumed against an uninterrupted one); see the package's docstring."""
from __future__ import annotations

import time
from pathlib import Path

from .jobs import Jobs, python_run
from .plan import TITLES, Part, Plan
from .summary import failure_lines, finished_runs


def part_determinism(plan: Plan, deadline: float, work: Path, jobs: Jobs) -> Part:
    part = Part("determinism", TITLES["determinism"])
    dirs = [work / "det-1", work / "det-2"]
    commands = [[*plan.job_args, "--results-dir", str(d)] for d in dirs]
    stopped = []  # per job: whether it was stopped at its time limit
    for k, args in enumerate(commands):
        cmd = python_run(args, plan.device)
        # each job may take up to its share of the time left (the first half of it)
        left = max(10.0, (deadline - time.monotonic()) / (len(commands) - k))
        t0 = time.monotonic()
        rc, tail = jobs.run_until(cmd, left, f"determinism-{k + 1}")
        stopped.append(rc is None)
        part.lines.append(f"- `benchmark.run {' '.join(a if '/' not in a else Path(a).name for a in args)}`: "
                          f"{'timed out' if rc is None else f'exit code {rc}'}, {time.monotonic() - t0:.0f} s")
        if rc != 0 and tail:
            part.lines.append(f"  - output tail: `{tail[:300]}`")
    from ..store.compare import folders_differ

    a, b = (finished_runs(d) for d in dirs)
    why = {r: folders_differ(a[r], b[r]) for r in a if r in b}
    same = sorted(r for r, w in why.items() if w is None)
    differ = sorted(r for r, w in why.items() if w is not None)
    unreached, missing = one_job_only(a, b, stopped[0], stopped[1])
    part.lines.append(f"- runs finished: {len(a)} and {len(b)}; identical per-episode accuracies and curves: "
                      f"{len(same)}; different: {len(differ)}; finished in one job only: {len(missing)}; not reached "
                      f"by the other job before its time limit: {len(unreached)}")
    for r in differ:
        part.lines.append(f"  - {r}: {why[r]}")
    for r in missing:
        part.lines.append(f"  - {r}: finished in one job only, though the other ran to its end")
    failed = failure_lines(dirs)  # a failed run is no effect of the time limit, whichever job it was in
    part.lines += failed
    part.ok = bool(same) and not differ and not missing and not failed
    return part


def one_job_only(a: dict, b: dict, a_stopped: bool, b_stopped: bool) -> tuple[list[str], list[str]]:
    """The runs finished in only one of two jobs, split into (not reached: the other job was stopped at its time
    limit, so it may simply not have got there; missing: the other job ran to its end without finishing the run, a
    real difference)."""
    unreached, missing = [], []
    for r in sorted(set(a) ^ set(b)):
        other_stopped = b_stopped if r in a else a_stopped
        (unreached if other_stopped else missing).append(r)
    return unreached, missing



def part_resume(plan: Plan, deadline: float, work: Path) -> Part:
    from ..pipeline import Interrupted, RunConfig, run
    from ..pipeline.machine import configure_determinism, resolve_device
    from ..store.compare import folders_differ
    from ..store.folders import RunFolder

    part = Part("resume", TITLES["resume"])
    device = resolve_device(plan.device)
    configure_determinism(device)
    ok = True
    for k, name in enumerate(plan.resume_methods):
        if k and time.monotonic() > deadline:  # the first method always runs (a smoke run: seconds on a GPU)
            part.lines.append(f"- {name}: skipped (time)")
            continue
        cfg = RunConfig(name, "omniglot", 5, 1, profile="smoke", test_episodes=20, val_episodes=5,
                        overrides=plan.resume_overrides)
        full_dir, part_dir = work / f"resume-{name}-full", work / f"resume-{name}-stopped"
        full = run(cfg, full_dir, device, save_model=False)
        try:
            run(cfg, part_dir, device, stop_after=plan.resume_stop, save_model=False)
            stopped = False
        except Interrupted:
            stopped = True
        resumed = run(cfg, part_dir, device, save_model=False)
        why = folders_differ(RunFolder(full_dir, cfg.run_id), RunFolder(part_dir, cfg.run_id))
        equal = stopped and why is None and resumed["resumed_at_steps"] == [plan.resume_stop]
        ok &= equal
        part.lines.append(f"- {name}: stopped at step {plan.resume_stop}: {stopped}; resumed at "
                          f"{resumed['resumed_at_steps']}; test accuracy {full['mean']:.2f} vs {resumed['mean']:.2f}; "
                          f"per-episode accuracies and curve identical: {why is None}" + (f" ({why})" if why else ""))
    part.ok = ok
    return part


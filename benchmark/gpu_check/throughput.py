"""The GPU check's throughput parts: (d) packing (:func:`part_packing`: K worker processes on one GPU, each K for
an equal window) and (e) the quick main job (:func:`part_quick`); see the package's docstring."""
from __future__ import annotations

import time
from pathlib import Path

from .jobs import Jobs, packed, python_run
from .plan import TITLES, Part, Plan
from .sampler import GpuSampler
from .summary import failure_lines


def trained_episodes(results_dir: Path) -> int:
    """Training episodes the runs under ``results_dir`` consumed, as the harness counted them: a finished run's
    ``train_episodes`` and, for a run stopped before its end, the episodes in its checkpoint (saved when it was
    stopped). A measure of a window's work that, unlike runs finished, does not round a short window down to the
    runs that happened to end in it (MTL's pretraining batches are not episodes and are not in it)."""
    from ..pipeline.training import load_checkpoint
    from ..store.folders import PARTIAL_SUFFIX, RunFolder, partial_runs, run_folders

    total = sum(int(f.read_summary().get("train_episodes") or 0) for f in run_folders(results_dir)
                if f.is_finished())
    for name in partial_runs(results_dir):
        checkpoint = RunFolder(results_dir, name[:-len(PARTIAL_SUFFIX)]).checkpoint
        if checkpoint.is_file():
            try:
                total += int(load_checkpoint(checkpoint)["state"]["episodes"])
            except Exception:  # noqa: BLE001 - a checkpoint cut off by the kill counts as no work
                pass
    return total


def _window(args: list[str], results_dir: Path, seconds: float, every: float, device: str, jobs: Jobs
            ) -> tuple[int | None, str, float, int, GpuSampler, int]:
    """Run ``benchmark.run args`` (a job of ``jobs``) on ``device`` into ``results_dir`` for at most ``seconds`` with
    non-deterministic kernels allowed (``--no-deterministic``: a throughput measurement), sampling the GPU (the
    samples saved next to the results folder, ``utilisation-<folder>.csv``): (exit code or None when stopped, last
    output line, minutes, runs finished, the sampler, training episodes consumed)."""
    from ..store.folders import run_folders

    t0 = time.monotonic()
    with GpuSampler(every=every) as sampler:
        rc, tail = jobs.run_until(python_run([*args, "--results-dir", str(results_dir)], device, deterministic=False),
                                  max(5.0, seconds), results_dir.name)
    sampler.save(results_dir.parent / f"utilisation-{results_dir.name}.csv")
    minutes = (time.monotonic() - t0) / 60
    done = sum(f.is_finished() for f in run_folders(results_dir))
    return rc, tail, minutes, done, sampler, trained_episodes(results_dir)


def part_packing(plan: Plan, deadline: float, work: Path, jobs: Jobs) -> Part:
    part = Part("packing", TITLES["packing"])
    part.lines += [f"`benchmark.run {' '.join(plan.quick_args)} --executor processes --workers K`, each K for an "
                   "equal window from an empty results folder (`--no-deterministic`: non-deterministic kernels "
                   "allowed, as a throughput run would). Training episodes: finished runs' and, for runs stopped at the window's end, their "
                   "checkpoints' (the work a window shorter than a run still did; the job's mix of methods differs "
                   "with K, since K runs start at once).", "",
                   "| K workers | window min | runs finished | runs per minute | training episodes per second | GPU "
                   "utilisation |", "|---|---|---|---|---|---|"]
    rates = []
    for n, k in enumerate(plan.workers):
        left = deadline - time.monotonic()
        window = left / (len(plan.workers) - n)
        if window < 10 and not plan.dry:
            part.lines.append(f"| {k} | skipped: {left:.0f} s left | | | | |")
            continue
        rc, tail, minutes, done, sampler, episodes = _window(packed(plan.quick_args, k), work / f"packing-{k}",
                                                             window, 0.5 if plan.dry else 1.0, plan.device, jobs)
        rates.append(episodes / max(minutes * 60, 1e-9))
        part.lines.append(f"| {k} | {minutes:.2f} | {done} | {done / max(minutes, 1e-9):.2f} | {rates[-1]:.1f} | "
                          f"{sampler.summary()} |")
        if rc not in (None, 0) and tail:
            part.lines.append(f"| {k} | exit code {rc}: `{tail[:200]}` | | | | |")
    part.ok = any(r > 0 for r in rates)  # some window trained
    return part


def part_quick(plan: Plan, deadline: float, work: Path, jobs: Jobs) -> Part:
    part = Part("quick", TITLES["quick"])
    k = plan.workers[-1]
    args = packed(plan.quick_args, k)
    rc, tail, minutes, done, sampler, episodes = _window(args, work / "quick", deadline - time.monotonic(),
                                                         0.5 if plan.dry else 1.0, plan.device, jobs)
    part.lines += [f"- `benchmark.run {' '.join(args)}`: "
                   f"{'stopped at the deadline' if rc is None else f'finished (exit code {rc})'} after "
                   f"{minutes:.2f} min of wall clock; runs finished: {done}; training episodes: {episodes} "
                   f"({episodes / max(minutes * 60, 1e-9):.1f} per second)", f"- {sampler.summary()}"]
    if rc not in (None, 0) and tail:
        part.lines.append(f"- last output line: `{tail[:300]}`")
    if rc is None:
        part.lines.append("- the job did not end within the part's share of the budget, so its whole wall clock "
                          "was not measured (a larger `--budget-s`, or the command alone, measures it); stopping it "
                          "is no failure: the part passes when it trained and nothing failed")
    failed = failure_lines([work / "quick"])
    part.lines += failed
    part.ok = not failed and (rc == 0 or (rc is None and episodes > 0))
    return part


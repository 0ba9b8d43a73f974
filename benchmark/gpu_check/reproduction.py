"""The GPU check's part (f), reproduce (:func:`part_reproduce`): the ``paper`` profile of the cheapest settings by the
hours part (a) projected, as many as the time left allows, packed; see the package's docstring."""
from __future__ import annotations

import time
from pathlib import Path

from .jobs import Jobs, packed, python_run
from .plan import TITLES, Part, Plan
from .sampler import GpuSampler
from .summary import failure_lines


def reproduction_order(methods: list[str], shots: list[int], measured: dict) -> list[tuple[str, int]]:
    """The (method, shots) settings cheapest first: by the hours part (a) projected (``measured``: (method, shots)
    -> hours), else by the paper's training episodes (:meth:`~methods.base.Method.paper_train_episodes`)."""
    from ..kit.context import Setting
    from ..pipeline import registry

    def cost(c):
        if c in measured:
            return (0, measured[c])
        return (1, registry.get(c[0]).paper_train_episodes(Setting("omniglot", 5, c[1])) or 0)

    return sorted(((m, s) for m in methods for s in shots), key=cost)


def choose_settings(order: list[tuple[str, int]], measured: dict, workers: int, left: float) -> list[tuple[str, int]]:
    """As many settings of ``order`` as ``left`` seconds hold, ``workers`` at a time: their projected hours (when
    measured) against the window; at most ``workers``, and at most two once one has no projection."""
    chosen, budget = [], workers * left / 3600
    for c in order:
        need = measured.get(c)
        if need is not None and need > budget and chosen:
            continue
        chosen.append(c)
        budget -= need or 0.0
        if len(chosen) >= workers or (need is None and len(chosen) >= 2):
            break
    return chosen


def part_reproduce(plan: Plan, deadline: float, work: Path, jobs: Jobs, measured: dict) -> Part:
    """Part (f): the settings :func:`choose_settings` picks, run to the paper's budget with ``plan.workers[-1]``
    workers in one job per shot count until ``deadline``; each finished one set against its published figure
    (``measured``: part (a)'s projections)."""
    part = Part("reproduce", TITLES["reproduce"])
    left = deadline - time.monotonic()
    order = reproduction_order(plan.speed_methods, plan.speed_shots, measured)
    k = plan.workers[-1]
    cheapest = min((measured[c] for c in order if c in measured), default=None)
    if cheapest is not None and cheapest * 3600 > left:  # part (a)'s projections: nothing can finish in time
        part.lines.append(f"- not run (time): the cheapest projected setting needs {cheapest * 3600:.0f} s of "
                          f"training and testing, {left:.0f} s are left (a larger `--budget-s` runs it)")
        return part  # ok None: not run
    if left < 10 and not plan.dry:
        part.lines.append(f"- not run (time): {left:.0f} s left")
        return part
    chosen = choose_settings(order, measured, k, left)
    part.lines.append(f"Order by projected cost: {', '.join(f'{m} {s}-shot' for m, s in order)}; started: "
                      f"{', '.join(f'{m} {s}-shot' for m, s in chosen)} ({k} workers, {left:.0f} s left). The "
                      "projections leave out validation and pretraining (MTL's 100 epochs), so a setting whose "
                      "projection fits may still not finish.")
    by_shots: dict[int, list[str]] = {}
    for m, s in chosen:
        by_shots.setdefault(s, []).append(m)
    d = work / "reproduce"
    args = {s: packed(["--methods", ",".join(names), "--shots", str(s), *plan.reproduce_args, "--results-dir",
                       str(d)], max(1, k // len(by_shots))) for s, names in by_shots.items()}
    commands = {s: " ".join(["python -m benchmark.run", *a, "--device", plan.device]) for s, a in args.items()}
    with GpuSampler(every=0.5 if plan.dry else 1.0) as sampler:
        jobs.run_together({s: (python_run(a, plan.device), f"reproduce-{s}shot", None) for s, a in args.items()},
                          max(5.0, left))
    sampler.save(work / "utilisation-reproduce.csv")
    rows, finished = _result_rows(chosen, d, work / "bundle", commands)
    part.lines += ["", "| setting | run | accuracy | published | difference | training episodes | minutes |",
                   "|---|---|---|---|---|---|---|", *rows, f"- {sampler.summary()}"]
    if (work / "bundle").is_dir():
        part.lines.append(f"- finished paper-budget runs in the bundle layout (records, model.pt, manifest.json): "
                          f"`{work / 'bundle'}`; copy their folders into `reproduce/omniglot/` and re-test them with "
                          "`python -m benchmark.reproduce verify`")
    failed = failure_lines([d])
    part.lines += failed
    if finished == 0 and not failed:  # stopped at the deadline with nothing finished: a matter of time, not a fault
        part.lines.append("- not run to the end (time): no setting finished within the time left")
        part.ok = None
    else:
        part.ok = finished > 0 and not failed
    return part


def _result_rows(chosen: list[tuple[str, int]], d: Path, bundle: Path, commands: dict) -> tuple[list[str], int]:
    """A table row for each setting of ``chosen`` from its run under ``d``, against its published figure; each
    finished paper-budget run copied into ``bundle`` (:func:`benchmark.reproduce.add`, with its command of
    ``commands``, by shot count). (rows, settings finished)."""
    from ..report.reference import load_reference
    from ..reproduce import add as add_to_bundle
    from ..store.folders import RunFolder

    ref = load_reference()
    rows, finished = [], 0
    for m, s in chosen:
        folders = [f for f in (RunFolder(d, p.name) for p in (sorted(d.iterdir()) if d.is_dir() else []))
                   if f.run_id.startswith(f"{m}-omniglot-5w{s}s")]
        done = [f for f in folders if f.is_finished()]
        pub = ref[(ref.method == m) & (ref.dataset == "omniglot") & (ref.ways == 5) & (ref.shots == s)]
        published = float(pub.accuracy.iloc[0]) if len(pub) else None
        if not done:
            rows.append(f"| {m} 5-way {s}-shot | not finished (stopped at the deadline) | | "
                        f"{published if published is not None else 'none'} | | | |")
            continue
        finished += 1
        sm = done[0].read_summary()
        if sm.get("budget_fraction") == 1.0:  # a paper-budget run, in the bundle layout (benchmark.reproduce)
            add_to_bundle([str(done[0].path)], bundle, commands[s])
        diff = f"{sm['mean'] - published:+.2f}" if published is not None else ""
        rows.append(f"| {m} 5-way {s}-shot | {done[0].run_id} | {sm['mean']:.2f} ± {sm['ci95']:.2f} | "
                    f"{published if published is not None else 'none'} | {diff} | {sm['train_episodes']} | "
                    f"{(sm['train_seconds'] + sm.get('val_seconds', 0)) / 60:.1f} |")
    return rows, finished

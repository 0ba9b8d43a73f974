"""The GPU check's timing parts: (a) speed (:func:`part_speed`, whose projections part (f) orders its settings by)
and (capture) ``--capture`` against eager (:func:`part_capture`); see the package's docstring."""
from __future__ import annotations

import json
import os
import shutil
import sysconfig
import time
import warnings
from pathlib import Path

from .jobs import Jobs, python_run
from .plan import TITLES, Part, Plan
from .summary import failure_lines, finished_runs

#: dense peak FLOP/s by device name, for the achieved share: (fp32 without tensor cores, bf16 tensor cores). The
#: fp32 share is against the CUDA-core peak: runs turn TF32 off (``configure_kernels``), so fp32 is fp32.
PEAKS = {"H200": (67e12, 989e12), "H100": (67e12, 989e12), "A100": (19.5e12, 312e12)}
#: the capture part starts a timed ``--capture`` case (compiling, then recording CUDA graphs) only with this many
#: seconds of its share left: on the CPU ``--compile`` took about 25 s per method (see docs/measurements.md), and a
#: case that overran would take its time from the later parts
CAPTURE_START_S = 60.0
#: the capture part's paired smoke jobs may take this share of the part's time (the rest: the timed cases)
CAPTURE_JOBS_SHARE = 0.6


# ------------------------------------------------------------------------------------------------ (a) speed
def part_speed(plan: Plan, deadline: float, results_dir: Path) -> Part:
    """Part (a): every case of :func:`speed_cases` timed while time is left (the first always); its
    ``projections``: the projected paper hours of each setting's default case (fp32, eager), for part (f)."""
    from ..pipeline.machine import configure_determinism, resolve_device

    part = Part("speed", TITLES["speed"])
    det = configure_determinism(resolve_device(plan.device))
    part.lines.append(f"Determinism settings: `{json.dumps(det)}`")
    paper = plan.speed_profile == "paper"
    part.lines.append(f"Training shapes and hyperparameters of the `{plan.speed_profile}` profile" +
                      (" (MTL with a shortened pretraining); projected hours: the paper's training episodes x the "
                       "median ms per episode, and 600 test episodes, validation and pretraining left out"
                       " (`benchmark.speed.paper_projection`)" if paper else "") + ".")
    peak = _peak(plan.device)
    part.lines.append(f"Achieved share: FLOPs per training episode / its median time, against {peak[2]}.")
    part.lines += ["", "| method | shots | precision | variant | ms/train episode (median) | ms/test episode (median)"
                   " | GFLOP/train episode | achieved TFLOP/s (share of peak) | peak MB | projected paper training h "
                   "| projected test h |",
                   "|---|---|---|---|---|---|---|---|---|---|---|"]
    cases = speed_cases(plan)
    failures, det_warnings, skipped = 0, set(), 0
    for k, case in enumerate(cases):
        if k and time.monotonic() > deadline:  # the first case always runs
            skipped += 1
            continue
        try:
            part.lines.append(_speed_row(plan, case, peak, results_dir, part.projections, det_warnings))
        except Exception as e:  # noqa: BLE001 - recorded; the other cases go on
            failures += 1
            name, shots, precision, label, _ = case
            part.lines.append(f"| {name} | {shots} | {precision} | {label} | FAILED: {_failure(e)} | | | | | | |")
    part.lines.append("")
    if skipped:
        part.lines.append(f"{skipped} of {len(cases)} cases skipped: the part's time ran out.")
    part.lines.append("Warnings about non-deterministic operations: " +
                      ("none" if not det_warnings else ""))
    part.lines += [f"- {w}" for w in sorted(det_warnings)]
    part.ok = failures == 0 and skipped < len(cases)
    return part


def speed_cases(plan: Plan) -> list[tuple]:
    """The speed part's cases, (method, shots, precision, variant, overrides): every fp32 case first (the paper's
    precision is the one the projection needs most), then bf16; MAML with ``vectorize`` on and off."""
    from ..speed import PAPER_MEASUREMENT_OVERRIDES

    paper = plan.speed_profile == "paper"
    cases = []
    for precision in plan.precisions:
        for name in plan.speed_methods:
            variants = [("vectorize=True", (("vectorize", True),)), ("vectorize=False", (("vectorize", False),))] \
                if name == "maml" else [("", ())]
            for shots in plan.speed_shots:
                for label, over in variants:
                    over = tuple(PAPER_MEASUREMENT_OVERRIDES.get(name, ()) if paper else ()) + over
                    cases.append((name, shots, precision, label, over))
    return cases


def _speed_row(plan: Plan, case: tuple, peak: tuple, results_dir: Path, projections: dict,
               det_warnings: set) -> str:
    """One case of :func:`speed_cases` timed: its table row; its projected paper hours of training + test go into
    ``projections`` when it is the setting's default case, its warnings about non-deterministic operations into
    ``det_warnings``."""
    from ..speed import paper_projection, prepare_measurement, time_run

    name, shots, precision, label, over = case
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = prepare_measurement(name, shots=shots, profile=plan.speed_profile, overrides=over)
        r = time_run(prepared, plan.device, plan.speed_steps, plan.speed_warmup, plan.speed_test_episodes,
                     results_dir, eval_group=0, precision=precision, flops=True)
    for w in caught:
        text = str(w.message)
        if "determinis" in text.lower():
            det_warnings.add(f"{name}: {text.splitlines()[0][:200]}")
    hours = " | |"
    if plan.speed_profile == "paper":
        cost = paper_projection(prepared, r)
        hours = f" {cost['projected_train_hours']:.2f} | {cost['projected_test_hours']:.3f} |"
        if precision == "fp32" and label in ("", "vectorize=True"):  # eager: the runs' default
            projections[(name, shots)] = cost["projected_train_hours"] + cost["projected_test_hours"]
    fl, ms = r.get("flops_per_train_episode"), r["ms_per_train_episode_median"]
    achieved = "" if not fl else f"{fl / (ms / 1e3) / 1e12:.2f}" + (
        f" ({100 * fl / (ms / 1e3) / peak[0 if precision == 'fp32' else 1]:.1f}%)" if peak[0] else "")
    return (f"| {name} | {shots} | {precision} | {label} | {ms:.2f} "
            f"| {r['ms_per_test_episode_median']:.2f} | {fl / 1e9 if fl else float('nan'):.2f} | "
            f"{achieved} | {r['peak_memory_mb']:.0f} |" + hours)


def _failure(e: Exception) -> str:
    """A case's exception in a table cell: its type and the start of its first line."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"


def _peak(device: str) -> tuple[float | None, float | None, str]:
    """(fp32 peak, bf16 peak, in words) of ``device`` from :data:`PEAKS`; (None, None, ...) when unknown."""
    try:
        import torch

        name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"
    except Exception:  # noqa: BLE001
        name = "?"
    for key, (fp32, bf16) in PEAKS.items():
        if key in name:
            return fp32, bf16, (f"the {key}'s dense peaks, {fp32 / 1e12:.0f} TFLOP/s fp32 (CUDA cores) and "
                                f"{bf16 / 1e12:.0f} TFLOP/s bf16 (tensor cores)")
    return None, None, f"no known peak for {name}"


# ------------------------------------------------------------------------------------------------ (capture)
def compiler_missing() -> str | None:
    """None when compiled kernels can be built here: a C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) and
    Python's ``Python.h`` (Triton builds a small C module with both, Inductor's CPU kernels need the compiler); else
    what is missing, in words."""
    cc = os.environ.get("CC")
    found = shutil.which(cc) if cc else next((shutil.which(c) for c in ("cc", "gcc", "clang") if shutil.which(c)),
                                             None)
    header = Path(sysconfig.get_paths().get("include") or "") / "Python.h"
    missing = ([] if found else [f"no C compiler ({'$CC=' + cc if cc else 'cc, gcc, clang'} not found)"]) + \
        ([] if header.is_file() else [f"no Python.h (looked in {header.parent}; install the Python headers, e.g. "
                                      "python3-dev)"])
    return "; ".join(missing) or None


def part_capture(plan: Plan, deadline: float, work: Path, jobs: Jobs) -> Part:
    """``--capture`` against eager (see the package's docstring): the paired smoke jobs first (side by side, each
    with :data:`CAPTURE_JOBS_SHARE` of the part's time at most; Dynamo's recompilations logged to the captured job's
    log), then the timed cases while time is left. The dry run (CPU, where ``--capture`` is refused) runs the
    "captured" job eager, which exercises the comparison (and its verdict that capture did not happen)."""
    part = Part("capture", TITLES["capture"])
    if plan.capture:
        missing = compiler_missing()
        if missing:
            part.lines.append(f"- not run: {missing}; Triton, which compiles the captured kernels, needs both")
            return part  # ok None: not run
    else:
        part.lines.append("- dry run: --capture needs CUDA; the \"captured\" job runs eager (the comparison's "
                          "plumbing is what is checked)")
    dirs = {"eager": work / "capture-eager", "captured": work / "capture-captured"}
    flags = {"eager": [], "captured": ["--capture"] if plan.capture else []}
    limit = max(10.0, CAPTURE_JOBS_SHARE * (deadline - time.monotonic()))
    outcome = jobs.run_together({kind: (python_run([*plan.capture_args, *flags[kind], "--results-dir", str(d)],
                                                   plan.device), f"capture-{kind}",
                                        {"TORCH_LOGS": "recompiles"} if kind == "captured" else None)
                                 for kind, d in dirs.items()}, limit)
    for kind, (rc, tail, secs) in outcome.items():
        part.lines.append(f"- `benchmark.run {' '.join(plan.capture_args)} {' '.join(flags[kind])}` ({kind}): "
                          f"{'stopped at its time limit' if rc is None else f'exit code {rc}'}, {secs:.0f} s" +
                          (f"; output tail: `{tail[:300]}`" if rc not in (0, None) and tail else ""))
    eager, captured = finished_runs(dirs["eager"]), finished_runs(dirs["captured"])
    part.lines += captured_against_eager(eager, captured)
    failed = failure_lines(list(dirs.values()))
    part.lines += failed
    part.lines += ["", "Timed steps (the speed part's profile and shapes, 1-shot; a captured case starts only with "
                   f"{CAPTURE_START_S:.0f} s of the part left; compiling falls in the warm-up):", "",
                   "| method | shots | variant | ms/train episode (median) | ms/test episode (median) | eval group | "
                   "frames compiled | peak MB |", "|---|---|---|---|---|---|---|---|"]
    lines, skipped = timed_cases(plan, deadline, work / "cache", ["eager", "captured"] if plan.capture
                                 else ["eager"])
    part.lines += lines
    if skipped:
        part.lines.append(f"{skipped} timed case(s) not run: the part's time ran out.")
    part.ok = bool(set(eager) & set(captured)) and not failed
    return part


def timed_cases(plan: Plan, deadline: float, results_dir: Path, variants: list[str]) -> tuple[list[str], int]:
    """The capture part's timed cases: each of ``plan.capture_methods`` (1-shot, the speed part's profile and
    shapes) measured once per variant ("eager", "captured"); a captured case (compiling first, tens of seconds) is
    started only with :data:`CAPTURE_START_S` of the part's time left, so it cannot overrun into the later parts.
    (table lines, cases skipped)."""
    from ..speed import PAPER_MEASUREMENT_OVERRIDES, prepare_measurement, time_run

    lines, skipped = [], 0
    for name in plan.capture_methods:
        for variant in variants:
            need = CAPTURE_START_S if variant == "captured" and not plan.dry else 0.0
            if time.monotonic() > deadline - need:
                skipped += 1
                continue
            over = PAPER_MEASUREMENT_OVERRIDES.get(name, ()) if plan.speed_profile == "paper" else ()
            try:
                prepared = prepare_measurement(name, shots=plan.speed_shots[0], profile=plan.speed_profile,
                                               overrides=over)
                r = time_run(prepared, plan.device, plan.speed_steps, plan.speed_warmup, plan.speed_test_episodes,
                             results_dir, eval_group=0, capture=variant == "captured")
                lines.append(f"| {name} | {plan.speed_shots[0]} | {variant} | {r['ms_per_train_episode_median']:.2f} | "
                             f"{r['ms_per_test_episode_median']:.2f} | {r['eval_group']} | "
                             f"{r['dynamo']['frames']} | {r['peak_memory_mb']:.0f} |")
            except Exception as e:  # noqa: BLE001 - recorded; the other cases go on
                lines.append(f"| {name} | {plan.speed_shots[0]} | {variant} | FAILED: {_failure(e)} | | | | |")
    return lines, skipped



def captured_against_eager(eager: dict, captured: dict) -> list[str]:
    """Lines comparing each captured run (``--capture``) with the eager run of the same id on the same test
    episodes: the fingerprints, episodes with the same accuracy, the mean accuracies and their difference, and the
    training seconds of each (compilation included). Informative, not a verdict: the default stays eager until these
    show the same accuracy and a faster step."""
    from ..store.compare import folders_differ

    lines = ["", "Captured (--capture) against eager, same runs and test episodes (training seconds include "
             "compiling; frames: Dynamo's frames compiled in the captured run):", "",
             "| run | same fingerprint | equal episodes | eager mean | captured mean | Δ | eager s | captured s | "
             "frames |", "|---|---|---|---|---|---|---|---|---|"]
    both = sorted(set(eager) & set(captured))
    identical = 0
    for r in both:
        e, c = eager[r], captured[r]
        se, sc = e.read_summary(), c.read_summary()
        ae, ac = (f.read_test_episodes()["accuracy"].tolist() for f in (e, c))
        equal = sum(x == y for x, y in zip(ae, ac))
        identical += folders_differ(e, c) is None
        frames = ((sc.get("execution") or {}).get("dynamo") or {}).get("frames", "?")
        lines.append(f"| {r} | {se['test_fingerprint'] == sc['test_fingerprint']} | {equal}/{len(ae)} | "
                     f"{se['mean']:.2f} | {sc['mean']:.2f} | {sc['mean'] - se['mean']:+.2f} | "
                     f"{se.get('train_seconds', float('nan')):.1f} | {sc.get('train_seconds', float('nan')):.1f} | "
                     f"{frames} |")
    if not both:
        lines.append("| (no captured run finished) | | | | | | | | |")
    elif identical == len(both):
        lines += ["", f"All {len(both)} captured run(s) equal the eager ones bit for bit (every test episode and "
                  "validation accuracy): capture probably did not happen (compiled kernels round differently from "
                  "eager ones); see the frames compiled and the captured job's log."]
    return lines

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
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .cli.toolkit import Parser

ROOT = Path(__file__).resolve().parents[1]
#: share of the budget each part may take (time a part leaves unused carries over to the next); (f) gets the rest
SHARES = {"speed": 0.15, "capture": 0.25, "determinism": 0.1, "resume": 0.05, "packing": 0.15, "quick": 0.12}
#: seconds at the end of the budget no part is given: stopping the last part's jobs (Ctrl-C, then up to
#: :data:`STOP_GRACE_S` for their checkpoints) and writing the summary (a tenth of the budget when that is less)
STOP_MARGIN_S = 45.0
#: seconds a stopped job has to save its checkpoints after Ctrl-C before it is killed
STOP_GRACE_S = 30.0
TITLES = {"speed": "(a) Speed: ms and FLOPs per training episode, ms per test episode, paper-profile shapes",
          "capture": "(capture) --capture (CUDA graphs) against eager: paired smoke runs, timed steps",
          "determinism": "(b) Determinism: the smoke main job twice",
          "resume": "(c) Resume: stopped mid-way and resumed = uninterrupted",
          "packing": "(d) Packing: K worker processes on one GPU, quick profile",
          "quick": "(e) The quick main job on one GPU",
          "reproduce": "(f) Reproduce: paper-profile runs of the cheapest settings"}
#: dense peak FLOP/s by device name, for the achieved share: (fp32 without tensor cores, bf16 tensor cores). The
#: fp32 share is against the CUDA-core peak: runs turn TF32 off (``configure_kernels``), so fp32 is fp32.
PEAKS = {"H200": (67e12, 989e12), "H100": (67e12, 989e12), "A100": (19.5e12, 312e12)}
#: the capture part starts a timed ``--capture`` case (compiling, then recording CUDA graphs) only with this many
#: seconds of its share left: on the CPU ``--compile`` took about 25 s per method (see docs/measurements.md), and a
#: case that overran would take its time from the later parts
CAPTURE_START_S = 60.0
#: the capture part's paired smoke jobs may take this share of the part's time (the rest: the timed cases)
CAPTURE_JOBS_SHARE = 0.6
#: what part (a) measured, for part (f): (method, shots) -> projected paper hours of training + test
MEASURED: dict[tuple[str, int], float] = {}


@dataclass
class Part:
    name: str
    title: str
    ok: bool | None = None  # None: not run / skipped
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Plan:
    """What each part runs: the full sizes on CUDA, tiny ones in the dry run."""

    device: str
    dry: bool
    speed_methods: list[str]
    speed_shots: list[int]
    precisions: list[str]
    speed_profile: str
    speed_steps: int
    speed_warmup: int
    speed_test_episodes: int
    job_args: list[str]  # benchmark.run arguments of the determinism job
    resume_methods: list[str]
    resume_overrides: tuple
    resume_stop: int
    quick_args: list[str]  # benchmark.run arguments of the packing and quick parts (the executor is added)
    workers: list[int]  # K of the packing part; the quick part uses the last
    reproduce_args: list[str]  # benchmark.run arguments of a reproduction, besides --methods and --shots
    capture: bool = False  # the capture part runs --capture (CUDA); else its jobs run eager twice (the dry run)
    capture_args: tuple = ()  # benchmark.run arguments of the capture part's paired jobs (eager, then --capture)
    capture_methods: tuple = ("protonet", "matching")  # the capture part's timed cases (1-shot)


def make_plan(device: str, dry: bool) -> Plan:
    from .pipeline import registry

    if dry:
        tiny = ["--set", "train_steps=2", "val_every=1", "--test-episodes", "4", "--val-episodes", "2"]
        return Plan(device, True, ["protonet", "maml"], [1], ["fp32", "bf16"], "smoke", 1, 1, 2,
                    ["--methods", "protonet", "--shots", "1", "--profile", "smoke", *tiny],
                    ["protonet"], (("train_steps", 4), ("val_every", 2), ("train_ways", 5), ("train_queries", 5)), 3,
                    ["--methods", "protonet", "--shots", "1", "--profile", "smoke", *tiny], [2],
                    ["--profile", "smoke", *tiny], False,
                    ("--methods", "protonet", "--shots", "1", "--profile", "smoke", *tiny), ("protonet",))
    return Plan(device, False, registry.main_methods(), [1, 5], ["fp32", "bf16"], "paper", 5, 2, 10,
                ["--methods", "all", "--profile", "smoke"],
                ["protonet", "maml"], (("train_steps", 12), ("val_every", 4)), 6,
                ["--methods", "all", "--profile", "quick"], [1, 2, 4, 8], ["--profile", "paper"],
                str(device).startswith("cuda"),
                ("--methods", "protonet,matching", "--shots", "1", "--profile", "smoke"))


# ------------------------------------------------------------------------------------------------ helpers
def _python_run(args: list[str], device: str, deterministic: bool = True) -> list[str]:
    """A ``python`` command running ``benchmark.run`` with ``args`` after configuring determinism in its process;
    ``deterministic=False`` also passes ``--no-deterministic``, so that the runs themselves (which configure
    determinism for each run) allow non-deterministic kernels, not only the driver."""
    code = ("import sys; from benchmark.pipeline.machine import configure_determinism, resolve_device; "
            f"configure_determinism(resolve_device({device!r}), deterministic={deterministic!r}); "
            "from benchmark.run import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", code, *args, "--device", device, "--no-report", "--no-progress",
            *([] if deterministic else ["--no-deterministic"])]


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


#: the check's running jobs (their process groups), stopped whenever the check ends (:func:`stop_children`)
_CHILDREN: set = set()
_CHILDREN_LOCK = threading.Lock()
#: where the jobs' full output goes (set by main: ``<files>/logs``); None: not kept
_LOGS: list = [None]


def stop_children(grace: float = STOP_GRACE_S) -> int:
    """Stop every job still running: Ctrl-C to its process group (its runs save their checkpoints), then, after
    ``grace`` seconds, SIGKILL to what is left. Returns the number of jobs stopped."""
    with _CHILDREN_LOCK:
        procs = [p for p in _CHILDREN if p.poll() is None]
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGINT)
        except OSError:
            pass
    end = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()
    return len(procs)


def _log_path(name: str) -> Path | None:
    if _LOGS[0] is None:
        return None
    _LOGS[0].mkdir(parents=True, exist_ok=True)
    stem, k = name, 1
    while (_LOGS[0] / f"{stem}.log").exists():
        k += 1
        stem = f"{name}-{k}"
    return _LOGS[0] / f"{stem}.log"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _packed(args: list[str], workers: int) -> list[str]:
    """``args`` run by ``workers`` processes of the processes executor (one GPU, several runs on it)."""
    return [*args, "--executor", "processes", "--workers", str(workers)]


def _run_until(cmd: list[str], timeout: float, name: str = "job", env: dict | None = None
               ) -> tuple[int | None, str]:
    """Run ``cmd`` (a new process group, registered so that the check stops it whenever it ends) for at most
    ``timeout`` seconds; (exit code, or None when it was stopped: Ctrl-C first, so runs save their checkpoints,
    then killed after :data:`STOP_GRACE_S`; last output line). Its whole output goes to ``logs/<name>.log`` of the
    check's files folder; ``env``: variables added to its environment."""
    log = _log_path(name)
    sink = open(log, "w") if log is not None else tempfile_sink()
    try:
        p = subprocess.Popen(cmd, cwd=ROOT, env={**_env(), **(env or {})}, stdout=sink, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
        with _CHILDREN_LOCK:
            _CHILDREN.add(p)
        try:
            p.wait(timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGINT)
            except OSError:
                pass
            try:
                p.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait()
            rc = None
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.discard(p)
        sink.flush()
        sink.seek(0)
        lines = sink.read().strip().splitlines() if log is None else log.read_text(errors="replace").strip().splitlines()
    finally:
        sink.close()
    return rc, (lines[-1] if lines else "")


def tempfile_sink():
    """A temporary file for a job's output when no logs folder is kept."""
    import tempfile

    return tempfile.TemporaryFile("w+")


class GpuSampler:
    """Samples GPU utilisation (%) and memory used (MiB) every ``every`` seconds in a thread: ``nvidia-smi`` when it
    is on the PATH, else ``torch.cuda.utilization()`` / ``memory_used`` when CUDA is available; nothing otherwise."""

    def __init__(self, every: float = 2.0):
        self.every, self.samples, self.source = every, [], None
        self._stop = threading.Event()
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
        else:
            import torch

            if torch.cuda.is_available():
                self.source = "torch.cuda.utilization"
        self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)

    def _sample(self) -> tuple[float, float] | None:
        try:
            if self.source == "nvidia-smi":
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                     timeout=10).stdout.strip().splitlines()
                util, mem = (float(v) for v in out[0].split(","))
                return util, mem
            if self.source:
                import torch

                return float(torch.cuda.utilization()), float(torch.cuda.memory_used()) / 2 ** 20
        except Exception:  # noqa: BLE001 - a missed sample is only a missed sample
            return None
        return None

    def _loop(self):
        while not self._stop.wait(self.every):
            s = self._sample()
            if s is not None:
                self.samples.append(s)

    def __enter__(self):
        if self.source:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def save(self, path: Path) -> None:
        """The samples as CSV (sample number, seconds since the first, utilisation %, memory used MiB)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = ["sample,seconds,utilisation_percent,memory_used_mib"]
        rows += [f"{i},{i * self.every:g},{u:g},{m:g}" for i, (u, m) in enumerate(self.samples)]
        path.write_text("\n".join(rows) + "\n")

    def summary(self) -> str:
        if not self.source:
            return "GPU utilisation: not sampled (no nvidia-smi and no CUDA)"
        if not self.samples:
            return f"GPU utilisation: no sample ({self.source})"
        util = [u for u, _ in self.samples]
        mem = [m for _, m in self.samples]
        return (f"GPU utilisation ({self.source}, {len(util)} samples every {self.every:g} s): mean "
                f"{sum(util) / len(util):.0f}%, max {max(util):.0f}%; memory used max {max(mem):.0f} MiB")


# ------------------------------------------------------------------------------------------------ the parts
def part_speed(plan: Plan, deadline: float, results_dir: Path) -> Part:
    from .pipeline.machine import configure_determinism, resolve_device
    from .speed import PAPER_MEASUREMENT_OVERRIDES, paper_projection, prepare_measurement, time_run

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
    cases = []  # every fp32 case first: the paper's precision is the one the projection needs most; then bf16
    for precision in plan.precisions:
        for name in plan.speed_methods:
            variants = [("vectorize=True", (("vectorize", True),)), ("vectorize=False", (("vectorize", False),))] \
                if name == "maml" else [("", ())]
            for shots in plan.speed_shots:
                for label, over in variants:
                    over = tuple(PAPER_MEASUREMENT_OVERRIDES.get(name, ()) if paper else ()) + over
                    cases.append((name, shots, precision, label, over))
    failures, det_warnings, skipped = 0, set(), 0
    for k, (name, shots, precision, label, over) in enumerate(cases):
        if k and time.monotonic() > deadline:  # the first case always runs
            skipped += 1
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                prepared = prepare_measurement(name, shots=shots, profile=plan.speed_profile, overrides=over)
                r = time_run(prepared, plan.device, plan.speed_steps, plan.speed_warmup, plan.speed_test_episodes,
                             results_dir, eval_group=0, precision=precision, flops=True)
            for w in caught:
                text = str(w.message)
                if "determinis" in text.lower():
                    det_warnings.add(f"{name}: {text.splitlines()[0][:200]}")
            hours = ""
            if paper:
                cost = paper_projection(prepared, r)
                hours = f" {cost['projected_train_hours']:.2f} | {cost['projected_test_hours']:.3f} |"
                if precision == "fp32" and label in ("", "vectorize=True"):  # eager: the runs' default
                    MEASURED[(name, shots)] = cost["projected_train_hours"] + cost["projected_test_hours"]
            fl, ms = r.get("flops_per_train_episode"), r["ms_per_train_episode_median"]
            achieved = "" if not fl else f"{fl / (ms / 1e3) / 1e12:.2f}" + (
                f" ({100 * fl / (ms / 1e3) / peak[0 if precision == 'fp32' else 1]:.1f}%)" if peak[0] else "")
            part.lines.append(f"| {name} | {shots} | {precision} | {label} | {ms:.2f} "
                              f"| {r['ms_per_test_episode_median']:.2f} | {fl / 1e9 if fl else float('nan'):.2f} | "
                              f"{achieved} | {r['peak_memory_mb']:.0f} |" + (hours or " | |"))
        except Exception as e:  # noqa: BLE001 - recorded; the other cases go on
            failures += 1
            part.lines.append(f"| {name} | {shots} | {precision} | {label} | FAILED: "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''} | | | | | | |")
    part.lines.append("")
    if skipped:
        part.lines.append(f"{skipped} of {len(cases)} cases skipped: the part's time ran out.")
    part.lines.append("Warnings about non-deterministic operations: " +
                      ("none" if not det_warnings else ""))
    part.lines += [f"- {w}" for w in sorted(det_warnings)]
    part.ok = failures == 0 and skipped < len(cases)
    return part


def timed_cases(plan: Plan, deadline: float, results_dir: Path, variants: list[str]) -> tuple[list[str], int]:
    """The capture part's timed cases: each of ``plan.capture_methods`` (1-shot, the speed part's profile and
    shapes) measured once per variant ("eager", "captured"); a captured case (compiling first, tens of seconds) is
    started only with :data:`CAPTURE_START_S` of the part's time left, so it cannot overrun into the later parts.
    (table lines, cases skipped)."""
    from .speed import PAPER_MEASUREMENT_OVERRIDES, prepare_measurement, time_run

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
                lines.append(f"| {name} | {plan.speed_shots[0]} | {variant} | FAILED: {type(e).__name__}: "
                             f"{str(e).splitlines()[0][:150] if str(e) else ''} | | | | |")
    return lines, skipped


def part_capture(plan: Plan, deadline: float, work: Path) -> Part:
    """``--capture`` against eager (see the module's docstring): the paired smoke jobs first (side by side, each
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
    outcome: dict = {}

    def job(kind: str) -> None:
        args = [*plan.capture_args, *flags[kind], "--results-dir", str(dirs[kind])]
        env = {"TORCH_LOGS": "recompiles"} if kind == "captured" else None
        t0 = time.monotonic()
        outcome[kind] = (*_run_until(_python_run(args, plan.device), limit, f"capture-{kind}", env),
                         time.monotonic() - t0)

    threads = [threading.Thread(target=job, args=(k,), daemon=True) for k in dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for kind, (rc, tail, secs) in outcome.items():
        part.lines.append(f"- `benchmark.run {' '.join(plan.capture_args)} {' '.join(flags[kind])}` ({kind}): "
                          f"{'stopped at its time limit' if rc is None else f'exit code {rc}'}, {secs:.0f} s" +
                          (f"; output tail: `{tail[:300]}`" if rc not in (0, None) and tail else ""))
    eager, captured = _finished(dirs["eager"]), _finished(dirs["captured"])
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


def _finished(results_dir: Path) -> dict:
    """Run id -> :class:`~benchmark.store.folders.RunFolder` of each finished run under ``results_dir``."""
    from .store.folders import run_folders

    return {f.run_id: f for f in run_folders(results_dir) if f.is_finished()}


def part_determinism(plan: Plan, deadline: float, work: Path) -> Part:
    part = Part("determinism", TITLES["determinism"])
    dirs = [work / "det-1", work / "det-2"]
    jobs = [[*plan.job_args, "--results-dir", str(d)] for d in dirs]
    stopped = []  # per job: whether it was stopped at its time limit
    for k, args in enumerate(jobs):
        cmd = _python_run(args, plan.device)
        # each job may take up to its share of the time left (the first half of it)
        left = max(10.0, (deadline - time.monotonic()) / (len(jobs) - k))
        t0 = time.monotonic()
        rc, tail = _run_until(cmd, left, f"determinism-{k + 1}")
        stopped.append(rc is None)
        part.lines.append(f"- `benchmark.run {' '.join(a if '/' not in a else Path(a).name for a in args)}`: "
                          f"{'timed out' if rc is None else f'exit code {rc}'}, {time.monotonic() - t0:.0f} s")
        if rc != 0 and tail:
            part.lines.append(f"  - output tail: `{tail[:300]}`")
    from .store.compare import folders_differ

    a, b = (_finished(d) for d in dirs)
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


def failure_lines(dirs: list[Path]) -> list[str]:
    """A line for each run recorded as failed under any of ``dirs`` (``<run>.partial/failed.json``; a run stopped
    at a time limit keeps its checkpoint and is not failed)."""
    from .store.folders import failed_runs

    return [f"- failed run: {f.run_id}: {f.read_failure().get('reason', '?')}" for d in dirs for f in failed_runs(d)]


def captured_against_eager(eager: dict, captured: dict) -> list[str]:
    """Lines comparing each captured run (``--capture``) with the eager run of the same id on the same test
    episodes: the fingerprints, episodes with the same accuracy, the mean accuracies and their difference, and the
    training seconds of each (compilation included). Informative, not a verdict: the default stays eager until these
    show the same accuracy and a faster step."""
    from .store.compare import folders_differ

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


def part_resume(plan: Plan, deadline: float, work: Path) -> Part:
    from .pipeline import Interrupted, RunConfig, run
    from .pipeline.machine import configure_determinism, resolve_device
    from .store.compare import folders_differ
    from .store.folders import RunFolder

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


def trained_episodes(results_dir: Path) -> int:
    """Training episodes the runs under ``results_dir`` consumed, as the harness counted them: a finished run's
    ``train_episodes`` and, for a run stopped before its end, the episodes in its checkpoint (saved when it was
    stopped). A measure of a window's work that, unlike runs finished, does not round a short window down to the
    runs that happened to end in it (MTL's pretraining batches are not episodes and are not in it)."""
    from .pipeline.training import load_checkpoint
    from .store.folders import PARTIAL_SUFFIX, RunFolder, partial_runs, run_folders

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


def _window(args: list[str], results_dir: Path, seconds: float, every: float) -> tuple[int | None, str, float,
                                                                                          int, "GpuSampler", int]:
    """Run ``benchmark.run args`` into ``results_dir`` for at most ``seconds`` with non-deterministic kernels allowed
    (``--no-deterministic``: a throughput measurement), sampling the GPU (the samples saved next to the results
    folder, ``utilisation-<folder>.csv``): (exit code or None when stopped, last output line, minutes, runs
    finished, the sampler, training episodes consumed)."""
    from .store.folders import run_folders

    t0 = time.monotonic()
    with GpuSampler(every=every) as sampler:
        rc, tail = _run_until(_python_run([*args, "--results-dir", str(results_dir)], _DEVICE[0],
                                          deterministic=False), max(5.0, seconds), results_dir.name)
    sampler.save(results_dir.parent / f"utilisation-{results_dir.name}.csv")
    minutes = (time.monotonic() - t0) / 60
    done = sum(f.is_finished() for f in run_folders(results_dir))
    return rc, tail, minutes, done, sampler, trained_episodes(results_dir)


_DEVICE = ["cuda"]  # the plan's device, for _window (set by main)


def part_packing(plan: Plan, deadline: float, work: Path) -> Part:
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
        rc, tail, minutes, done, sampler, episodes = _window(_packed(plan.quick_args, k), work / f"packing-{k}",
                                                             window, 0.5 if plan.dry else 1.0)
        rates.append(episodes / max(minutes * 60, 1e-9))
        part.lines.append(f"| {k} | {minutes:.2f} | {done} | {done / max(minutes, 1e-9):.2f} | {rates[-1]:.1f} | "
                          f"{sampler.summary()} |")
        if rc not in (None, 0) and tail:
            part.lines.append(f"| {k} | exit code {rc}: `{tail[:200]}` | | | | |")
    part.ok = any(r > 0 for r in rates)  # some window trained
    return part


def part_quick(plan: Plan, deadline: float, work: Path) -> Part:
    part = Part("quick", TITLES["quick"])
    k = plan.workers[-1]
    args = _packed(plan.quick_args, k)
    rc, tail, minutes, done, sampler, episodes = _window(args, work / "quick", deadline - time.monotonic(),
                                                         0.5 if plan.dry else 1.0)
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


def reproduction_order(methods: list[str], shots: list[int]) -> list[tuple[str, int]]:
    """The (method, shots) settings cheapest first: by the hours part (a) projected, else by the paper's training
    episodes (:meth:`~methods.base.Method.paper_train_episodes`)."""
    from .kit.context import Setting
    from .pipeline import registry

    def cost(c):
        if c in MEASURED:
            return (0, MEASURED[c])
        return (1, registry.get(c[0]).paper_train_episodes(Setting("omniglot", 5, c[1])) or 0)

    return sorted(((m, s) for m in methods for s in shots), key=cost)


def part_reproduce(plan: Plan, deadline: float, work: Path) -> Part:
    from .report.reference import load_reference
    from .reproduce import add as add_to_bundle
    from .store.folders import RunFolder

    part = Part("reproduce", TITLES["reproduce"])
    left = deadline - time.monotonic()
    order = reproduction_order(plan.speed_methods, plan.speed_shots)
    k = plan.workers[-1]
    cheapest = min((MEASURED[c] for c in order if c in MEASURED), default=None)
    if cheapest is not None and cheapest * 3600 > left:  # part (a)'s projections: nothing can finish in time
        part.lines.append(f"- not run (time): the cheapest projected setting needs {cheapest * 3600:.0f} s of "
                          f"training and testing, {left:.0f} s are left (a larger `--budget-s` runs it)")
        return part  # ok None: not run
    if left < 10 and not plan.dry:
        part.lines.append(f"- not run (time): {left:.0f} s left")
        return part
    # as many as the time left holds, K at a time: projected hours (when measured) against the window
    chosen, budget = [], k * left / 3600
    for c in order:
        need = MEASURED.get(c)
        if need is not None and need > budget and chosen:
            continue
        chosen.append(c)
        budget -= need or 0.0
        if len(chosen) >= k or (need is None and len(chosen) >= 2):
            break
    part.lines.append(f"Order by projected cost: {', '.join(f'{m} {s}-shot' for m, s in order)}; started: "
                      f"{', '.join(f'{m} {s}-shot' for m, s in chosen)} ({k} workers, {left:.0f} s left). The "
                      "projections leave out validation and pretraining (MTL's 100 epochs), so a setting whose "
                      "projection fits may still not finish.")
    by_shots: dict[int, list[str]] = {}
    for m, s in chosen:
        by_shots.setdefault(s, []).append(m)
    d = work / "reproduce"
    procs, commands = [], {}
    for s, names in by_shots.items():
        args = _packed(["--methods", ",".join(names), "--shots", str(s), *plan.reproduce_args,
                        "--results-dir", str(d)], max(1, k // len(by_shots)))
        commands[s] = " ".join(["python -m benchmark.run", *args, "--device", plan.device])
        procs.append(threading.Thread(target=_run_until, daemon=True,
                                      args=(_python_run(args, plan.device), max(5.0, left), f"reproduce-{s}shot")))
    with GpuSampler(every=0.5 if plan.dry else 1.0) as sampler:
        for t in procs:
            t.start()
        for t in procs:
            t.join()
    sampler.save(work / "utilisation-reproduce.csv")
    ref = load_reference()
    part.lines += ["", "| setting | run | accuracy | published | difference | training episodes | minutes |",
                   "|---|---|---|---|---|---|---|"]
    finished = 0
    for m, s in chosen:
        folders = [f for f in (RunFolder(d, p.name) for p in (sorted(d.iterdir()) if d.is_dir() else []))
                   if f.run_id.startswith(f"{m}-omniglot-5w{s}s")]
        done = [f for f in folders if f.is_finished()]
        pub = ref[(ref.method == m) & (ref.dataset == "omniglot") & (ref.ways == 5) & (ref.shots == s)]
        published = float(pub.accuracy.iloc[0]) if len(pub) else None
        if not done:
            part.lines.append(f"| {m} 5-way {s}-shot | not finished (stopped at the deadline) | | "
                              f"{published if published is not None else 'none'} | | | |")
            continue
        finished += 1
        sm = done[0].read_summary()
        if sm.get("budget_fraction") == 1.0:  # a paper-budget run, in the bundle layout (benchmark.reproduce)
            add_to_bundle([str(done[0].path)], work / "bundle", commands[s])
        diff = f"{sm['mean'] - published:+.2f}" if published is not None else ""
        part.lines.append(f"| {m} 5-way {s}-shot | {done[0].run_id} | {sm['mean']:.2f} ± {sm['ci95']:.2f} | "
                          f"{published if published is not None else 'none'} | {diff} | {sm['train_episodes']} | "
                          f"{(sm['train_seconds'] + sm.get('val_seconds', 0)) / 60:.1f} |")
    part.lines.append(f"- {sampler.summary()}")
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


# ------------------------------------------------------------------------------------------------ the report
def write_summary(path: Path, plan: Plan, parts: list[Part], budget_s: float, started: float) -> str:
    from .pipeline.machine import code_version, environment, resolve_device

    try:
        env = environment(resolve_device(plan.device))
    except Exception as e:  # noqa: BLE001
        env = {"error": str(e)}
    lines = ["# GPU check", "",
             f"Device `{plan.device}` ({env.get('device_name', '?')}), {'dry run (tiny sizes)' if plan.dry else 'full'}"
             f"; code {code_version()}; torch {env.get('torch', '?')}; budget {budget_s:.0f} s, took "
             f"{time.monotonic() - started:.0f} s.", "", "## Verdict", "", "| part | result | seconds |",
             "|---|---|---|"]
    for p in parts:
        verdict = "PASS" if p.ok else ("FAIL" if p.ok is False else "not run (time)" if any(
            "(time)" in line for line in p.lines) else "not run")
        lines.append(f"| {p.title} | {verdict} | {p.seconds:.0f} |")
    for p in parts:
        lines += ["", f"## {p.title}", ""] + p.lines
        if p.error:
            lines += ["", "Error:", "", "```", p.error.strip(), "```"]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    dry = args.dry_run or args.device == "cpu"
    device = "cpu" if dry else args.device
    started = time.monotonic()
    from .pipeline.machine import tune_cpu

    tune_cpu()
    plan = make_plan(device, dry)
    wanted = [w.strip() for w in args.parts.split(",") if w.strip()]
    _DEVICE[0] = device
    runners = {"speed": part_speed, "capture": part_capture, "determinism": part_determinism, "resume": part_resume,
               "packing": part_packing, "quick": part_quick, "reproduce": part_reproduce}
    unknown = [w for w in wanted if w not in runners]
    if unknown:
        print(f"error: unknown part(s) {', '.join(unknown)}; choose from {', '.join(runners)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    work = Path(args.keep) if args.keep else out.with_name(f"{out.stem}-files")
    work.mkdir(parents=True, exist_ok=True)
    _LOGS[0] = work / "logs"
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
                part = runners[name](plan, deadline, work / "cache" if name == "speed" else work)
            except Exception as e:  # noqa: BLE001 - one part's failure is recorded, the others run
                part = Part(name, TITLES[name], ok=False, error="".join(traceback.format_exception_only(type(e), e)) +
                            traceback.format_exc(limit=-3))
            part.seconds = time.monotonic() - t0
            parts.append(part)
            write_summary(out, plan, parts, args.budget_s, started)  # nothing measured is lost
            print(f"{part.title}: {'PASS' if part.ok else 'FAIL' if part.ok is False else 'not run'} "
                  f"({part.seconds:.0f} s)", flush=True)
    finally:
        stopped = stop_children()  # on any exit: an error, Ctrl-C, SIGTERM/SIGHUP
        if stopped:
            print(f"stopped {stopped} job(s) still running", file=sys.stderr, flush=True)
        write_summary(out, plan, parts, args.budget_s, started)
        if out.resolve() != (work / out.name).resolve():
            shutil.copyfile(out, work / out.name)
        for sig, old in handlers.items():
            signal.signal(sig, old)
        _LOGS[0] = None
    print(f"summary: {args.out}; files: {work}")
    return 0 if parts and all(p.ok is not False for p in parts) and any(p.ok for p in parts) else 1


if __name__ == "__main__":
    sys.exit(main())

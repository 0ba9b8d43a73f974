"""python -m benchmark.gpu_check: its dry mode runs every part on the CPU and writes the summary; one failing part
does not stop the others."""
from pathlib import Path

import benchmark.gpu_check as gc
from benchmark.gpu_check import determinism, jobs, reproduction, summary, throughput, timing
from benchmark.gpu_check.jobs import Jobs
from benchmark.gpu_check.sampler import GpuSampler

SECTIONS = ["## Verdict", "## (a) Speed", "## (capture)", "## (b) Determinism", "## (c) Resume", "## (d) Packing", "## (e) The quick",
            "## (f) Reproduce"]


def test_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu_check.md"
    rc = gc.main(["--dry-run", "--budget-s", "15", "--out", str(out), "--keep", str(tmp_path / "work")])
    text = out.read_text()
    for s in SECTIONS:
        assert s in text, s
    assert "Device `cpu`" in text and "dry run" in text
    table = text.split("## Verdict", 1)[1].split("\n## ", 1)[0]
    verdicts = [line for line in table.splitlines() if line.startswith("| (")]
    assert len(verdicts) == 7 and all(v.split(" | ")[1] in ("PASS", "FAIL", "not run (time)") for v in verdicts)
    assert "| protonet | 1 | fp32 |" in text  # the first speed case always runs
    assert (tmp_path / "work" / "gpu_check.md").read_text() == text  # the files folder holds the summary too
    assert list((tmp_path / "work" / "logs").glob("determinism-1.log"))  # and every job's output
    assert rc in (0, 1)


def test_a_failing_part_is_recorded_and_the_others_run(tmp_path, monkeypatch):
    calls = []

    def broken(plan, deadline, *values):
        calls.append("speed")
        raise RuntimeError("no kernel image")

    def fine(name):
        def part(plan, deadline, *values):
            calls.append(name)
            return gc.Part(name, gc.TITLES[name], ok=True, lines=[f"{name} figures"])
        return part

    monkeypatch.setattr(gc, "part_speed", broken)
    for name, fn in (("capture", "part_capture"), ("determinism", "part_determinism"), ("resume", "part_resume"),
                     ("packing", "part_packing"), ("quick", "part_quick"), ("reproduce", "part_reproduce")):
        monkeypatch.setattr(gc, fn, fine(name))
    out = tmp_path / "g.md"
    assert gc.main(["--dry-run", "--out", str(out)]) == 1
    text = out.read_text()
    assert calls == ["speed", "capture", "determinism", "resume", "packing", "quick", "reproduce"]
    assert "RuntimeError: no kernel image" in text and text.count("| PASS |") == 6 and text.count("| FAIL |") == 1
    assert gc.main(["--dry-run", "--parts", "nosuch", "--out", str(out)]) == 2


def test_full_speed_part_measures_the_paper_profile_and_projects_its_hours(tmp_path):
    """The CUDA plan times the paper profile's shapes (fp32 first) and turns each into paper-length hours: here the
    same part on the CPU, cut to one step of ProtoNet (60-way paper episodes) and MTL (shortened pretraining)."""
    import dataclasses

    full = gc.make_plan("cuda", False)
    assert full.speed_profile == "paper" and full.precisions[0] == "fp32" and len(full.speed_methods) == 8
    plan = dataclasses.replace(gc.make_plan("cpu", False), speed_methods=["protonet", "mtl"], speed_shots=[1],
                               precisions=["fp32"], speed_steps=1, speed_warmup=1, speed_test_episodes=2)
    part = gc.part_speed(plan, deadline=float("inf"), results_dir=tmp_path)
    assert part.ok, part.lines
    rows = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ") for line in part.lines
            if line.startswith("| protonet") or line.startswith("| mtl")}
    assert set(rows) == {"protonet", "mtl"}
    for name, episodes in (("protonet", 20_000), ("mtl", 12_000)):  # paper_train_episodes, 5-way 1-shot
        ms, gflop, hours = float(rows[name][4]), float(rows[name][6]), float(rows[name][9])
        assert gflop > 0.1, rows[name]  # FLOPs counted
        assert abs(hours - episodes * ms / 3.6e6) < 0.006, rows[name]


def test_reproduction_takes_the_cheapest_settings_first():
    """Part (f) orders settings by the hours part (a) projected; settings (a) did not measure follow, by the paper's
    training episodes."""
    measured = {("maml", 1): 0.2, ("protonet", 5): 0.05, ("protonet", 1): 0.1}
    order = reproduction.reproduction_order(["protonet", "maml", "reptile"], [1, 5], measured)
    assert order[:3] == [("protonet", 5), ("protonet", 1), ("maml", 1)]
    rest = order[3:]
    assert set(rest) == {("maml", 5), ("reptile", 1), ("reptile", 5)}
    from benchmark.kit.context import Setting
    from benchmark.pipeline import registry

    order = reproduction.reproduction_order(["protonet", "maml", "reptile"], [1], {})
    costs = [registry.get(m).paper_train_episodes(Setting("omniglot", 5, s)) for m, s in order]
    assert costs == sorted(costs)


def test_capture_is_timed_and_compared_on_cuda_only():
    cuda, cpu = gc.make_plan("cuda", False), gc.make_plan("cpu", True)
    assert cuda.capture and "--capture" not in cuda.capture_args and "protonet,matching" in cuda.capture_args
    assert not cpu.capture and not gc.make_plan("cpu", False).capture


def test_captured_runs_are_set_against_the_eager_runs_of_the_same_id(tmp_path):
    import torch

    from benchmark.pipeline import RunConfig, run

    cfg = RunConfig("protonet", shots=1, profile="smoke", test_episodes=5, val_episodes=2,
                    overrides=(("train_steps", 2), ("val_every", 2), ("train_ways", 5)))
    for d in ("eager", "captured"):
        run(cfg, tmp_path / d, torch.device("cpu"), save_model=False)
    lines = timing.captured_against_eager(summary.finished_runs(tmp_path / "eager"),
                                          summary.finished_runs(tmp_path / "captured"))
    (row,) = [line for line in lines if line.startswith(f"| {cfg.run_id}")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "True" and cells[2] == "5/5" and cells[5] == "+0.00"  # the same computation here
    assert cells[8] == "0"  # no frame compiled
    assert "capture probably did not happen" in "".join(lines)  # equal bit for bit
    assert "no captured run finished" in "".join(timing.captured_against_eager({}, {}))


def test_a_capture_case_starts_only_with_time_to_compile(tmp_path):
    """The capture part starts a captured timed case (compilation first) only with CAPTURE_START_S of its share
    left, so it cannot overrun into the later parts: with 30 s left the eager case runs and the captured one is
    skipped (started, it would compile for about 40 s on this CPU)."""
    import dataclasses
    import time

    plan = dataclasses.replace(gc.make_plan("cpu", False), speed_shots=[1], speed_profile="smoke", speed_steps=1,
                               speed_warmup=1, speed_test_episodes=2, capture_methods=("protonet",))
    lines, skipped = timing.timed_cases(plan, time.monotonic() + 30, tmp_path, ["eager", "captured"])
    assert skipped == 1 and len(lines) == 1 and lines[0].startswith("| protonet | 1 | eager |"), lines
    assert lines[0].split(" | ")[6] == "0"  # nothing compiled in the eager case


def test_the_capture_part_is_not_run_without_a_compiler(tmp_path, monkeypatch):
    """On CUDA the capture part first checks for a C compiler and Python.h (Triton needs both) and, when one is
    missing, says so in one line and is "not run", which does not fail the check."""
    import dataclasses

    plan = dataclasses.replace(gc.make_plan("cpu", True), capture=True)
    monkeypatch.setattr(timing, "compiler_missing", lambda: "no C compiler (cc, gcc, clang not found)")
    no_jobs = Jobs()
    monkeypatch.setattr(no_jobs, "run_until", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a job started")))
    part = gc.part_capture(plan, 0.0, tmp_path, no_jobs)
    assert part.ok is None and part.lines == ["- not run: no C compiler (cc, gcc, clang not found); Triton, which "
                                              "compiles the captured kernels, needs both"]


def test_compiler_check_names_what_is_missing(monkeypatch, tmp_path):
    import shutil
    import sysconfig

    assert timing.compiler_missing() is None  # this machine has both
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert timing.compiler_missing() == "no C compiler (cc, gcc, clang not found)"
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    assert "no Python.h" in timing.compiler_missing() and "no C compiler" in timing.compiler_missing()


def test_throughput_jobs_allow_non_deterministic_kernels_in_their_runs():
    """Parts (d) and (e) measure throughput: their runs get --no-deterministic (the flag reached only the driver
    before, and each run configured deterministic kernels again)."""
    assert "--no-deterministic" in jobs.python_run(["--methods", "protonet"], "cuda", deterministic=False)
    assert "--no-deterministic" not in jobs.python_run(["--methods", "protonet"], "cuda")


def test_the_checks_jobs_are_stopped_when_it_ends_on_an_interrupt(tmp_path, monkeypatch):
    """A job the check started (its own process group) does not outlive the check: Ctrl-C (or SIGTERM/SIGHUP,
    turned into an exit) stops it, and the summary is still written."""
    import sys
    import threading
    import time

    import pytest

    started, ready = [], tmp_path / "ready"

    def hanging(plan, deadline, work, check_jobs):
        # as python_run's jobs do: Ctrl-C's handler restored, even where the suite runs with SIGINT ignored; the check
        # is stopped once the job is up (stopped before, a job that ignores SIGINT waits out the grace, then is killed)
        cmd = [sys.executable, "-c", "import pathlib, signal, time; "
               "signal.signal(signal.SIGINT, signal.default_int_handler); "
               f"pathlib.Path({str(ready)!r}).touch(); time.sleep(600)"]
        threading.Thread(target=check_jobs.run_until, args=(cmd, 600, "hang"), daemon=True).start()
        end = time.monotonic() + 60
        while not (check_jobs.children and ready.exists()) and time.monotonic() < end:
            time.sleep(0.05)
        started.extend(check_jobs.children)
        raise KeyboardInterrupt

    monkeypatch.setattr(gc, "part_capture", hanging)
    out = tmp_path / "g.md"
    with pytest.raises(KeyboardInterrupt):
        gc.main(["--dry-run", "--parts", "capture", "--out", str(out)])
    (proc,) = started
    assert proc.poll() is not None and out.is_file()


def test_reproduction_is_not_run_when_no_projection_fits_the_time_left(tmp_path, monkeypatch):
    """Part (f) with part (a)'s projections all longer than the time left is "not run (time)", not a failure (it
    failed every check shorter than its cheapest projection before)."""
    import time

    no_jobs = Jobs()
    monkeypatch.setattr(no_jobs, "run_until", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a job started")))
    part = gc.part_reproduce(gc.make_plan("cpu", True), time.monotonic() + 60, tmp_path, no_jobs,
                             {("protonet", 1): 2.0, ("maml", 1): 5.0})
    assert part.ok is None and part.lines[0].startswith("- not run (time): the cheapest projected setting needs 7200 s")
    text = gc.write_summary(tmp_path / "g.md", gc.make_plan("cpu", True), [part], 60, time.monotonic())
    assert "| not run (time) |" in text


def test_runs_a_stopped_job_did_not_reach_are_no_determinism_failure():
    """Part (b) compares the runs both jobs finished; a run the other job never reached because it was stopped at
    its time limit is reported, not failed; one the other job ran past without finishing is a real difference."""
    a, b = {"r1": 1, "r2": 2, "r3": 3}, {"r1": 1, "r2": 2}
    assert determinism.one_job_only(a, b, a_stopped=False, b_stopped=True) == (["r3"], [])
    assert determinism.one_job_only(a, b, a_stopped=True, b_stopped=False) == ([], ["r3"])
    assert determinism.one_job_only(b, a, a_stopped=True, b_stopped=False) == (["r3"], [])
    assert determinism.one_job_only(a, a, a_stopped=False, b_stopped=False) == ([], [])


def test_a_window_counts_the_training_episodes_of_finished_and_stopped_runs(tmp_path):
    """Parts (d) and (e) measure a window's work by training episodes: a finished run's ``train_episodes`` plus a
    stopped run's checkpointed episodes, so a window shorter than a run still measures something."""
    import pytest
    import torch

    from benchmark.pipeline import Interrupted, RunConfig, run

    cpu = torch.device("cpu")
    tiny = (("train_steps", 6), ("val_every", 3), ("train_ways", 5))
    done = RunConfig("protonet", shots=1, profile="smoke", test_episodes=2, val_episodes=2, overrides=tiny)
    stopped = RunConfig("matching", shots=1, profile="smoke", test_episodes=2, val_episodes=2, overrides=tiny)
    assert throughput.trained_episodes(tmp_path) == 0
    full = run(done, tmp_path, cpu, save_model=False)
    with pytest.raises(Interrupted):
        run(stopped, tmp_path, cpu, stop_after=2, save_model=False)
    assert full["train_episodes"] == 6 and throughput.trained_episodes(tmp_path) == 6 + 2  # meta-batch 1, 2 steps


def test_the_quick_part_passes_when_stopped_at_its_deadline_having_trained(tmp_path, monkeypatch):
    """Part (e) passes a job stopped at the part's deadline that trained and had no failed run (its whole wall clock
    is then said to be unmeasured); it fails when nothing trained, or when a run failed."""
    import json

    plan = gc.make_plan("cpu", True)
    result = {"episodes": 5}
    monkeypatch.setattr(throughput, "_window", lambda *a, **k: (None, "", 0.1, 0, GpuSampler(), result["episodes"]))
    part = gc.part_quick(plan, 0.0, tmp_path, Jobs())
    assert part.ok and any("did not end within" in line for line in part.lines), part.lines
    result["episodes"] = 0
    assert not gc.part_quick(plan, 0.0, tmp_path, Jobs()).ok
    result["episodes"] = 5
    bad = tmp_path / "quick" / "protonet-omniglot-5w1s.partial"
    bad.mkdir(parents=True)
    (bad / "failed.json").write_text(json.dumps({"run_id": "protonet-omniglot-5w1s", "reason": "non-finite loss"}))
    part = gc.part_quick(plan, 0.0, tmp_path, Jobs())
    assert not part.ok and "- failed run: protonet-omniglot-5w1s: non-finite loss" in part.lines, part.lines


def test_the_determinism_part_fails_on_a_failed_run_even_in_a_stopped_job(tmp_path, monkeypatch):
    """Part (b): the runs both jobs finished are identical here, but the second job (stopped at its time limit)
    recorded a failed run: a failure is no effect of the time limit, so the part fails and names it."""
    import json
    import shutil

    import torch

    from benchmark.pipeline import RunConfig, run

    cfg = RunConfig("protonet", shots=1, profile="smoke", test_episodes=2, val_episodes=2,
                    overrides=(("train_steps", 2), ("val_every", 2), ("train_ways", 5)))
    run(cfg, tmp_path / "det-1", torch.device("cpu"), save_model=False)
    shutil.copytree(tmp_path / "det-1", tmp_path / "det-2")
    bad = tmp_path / "det-2" / "matching-omniglot-5w1s.partial"
    bad.mkdir()
    (bad / "failed.json").write_text(json.dumps({"run_id": "matching-omniglot-5w1s", "reason": "non-finite loss"}))
    stopped_jobs = Jobs()  # both jobs "stopped at the limit"
    monkeypatch.setattr(stopped_jobs, "run_until", lambda cmd, timeout, name="": (None, ""))
    part = gc.part_determinism(gc.make_plan("cpu", True), 0.0, tmp_path, stopped_jobs)
    assert not part.ok and "- failed run: matching-omniglot-5w1s: non-finite loss" in part.lines, part.lines
    bad.joinpath("failed.json").unlink()
    assert gc.part_determinism(gc.make_plan("cpu", True), 0.0, tmp_path, stopped_jobs).ok


def test_reproduction_keeps_finished_paper_budget_runs_in_the_bundle_layout(tmp_path, monkeypatch):
    """Part (f) copies each finished paper-budget run (records, model, a manifest with the command) into
    ``<work>/bundle``, ready for reproduce/omniglot and ``benchmark.reproduce verify``."""
    import json
    import time

    import torch

    from benchmark import reproduce
    from benchmark.pipeline import RunConfig, run

    def fake_job(cmd, timeout, name, env=None):  # the job's run, short, then marked as trained to the paper's budget
        d = Path(cmd[cmd.index("--results-dir") + 1])
        cfg = RunConfig("protonet", "omniglot", 5, 1, profile="smoke", test_episodes=4, val_episodes=2,
                        overrides=(("train_steps", 2), ("val_every", 2)))
        run(cfg, d, torch.device("cpu"))
        s = d / cfg.run_id / "summary.json"
        s.write_text(json.dumps({**json.loads(s.read_text()), "budget_fraction": 1.0}))
        return 0, ""

    fake_jobs = Jobs()
    monkeypatch.setattr(fake_jobs, "run_until", fake_job)
    part = gc.part_reproduce(gc.make_plan("cpu", True), time.monotonic() + 60, tmp_path, fake_jobs,
                             {("protonet", 1): 0.001})
    (shipped,) = reproduce.bundle_runs(tmp_path / "bundle")
    manifest = json.loads((shipped / reproduce.MANIFEST).read_text())
    cmd = manifest["command"].split()
    assert cmd[:4] == ["python", "-m", "benchmark.run", "--methods"] and "protonet" in cmd[4].split(",")
    assert cmd[cmd.index("--shots") + 1] == "1" and cmd[-2:] == ["--device", "cpu"]
    assert any("bundle layout" in line for line in part.lines)

"""How runs execute, from the command line to the records: --precision, --prefetch, --no-deterministic, --compile,
what the summary, the per-run leaderboard and the report say about them, and bad values refused in one line."""
import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark import run as run_cli
from benchmark.pipeline.config import RunConfig
from benchmark.pipeline.execution import Execution, parse_prefetch

SMOKE = ["--methods", "protonet", "--shots", "1", "--profile", "smoke", "--test-episodes", "12", "--val-episodes",
         "4", "--set", "train_steps=4", "val_every=2", "train_ways=5", "train_queries=5", "--no-progress"]


def run(tmp_path, name, *extra):
    results = tmp_path / name
    code = run_cli.main(SMOKE + ["--results-dir", str(results), "--reports-dir", str(tmp_path / f"{name}-rep"),
                                 *extra])
    assert code == 0
    return results


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    """One SMOKE run through the command line with prefetch off (--prefetch 0, the CPU's default, asked for), trained
    once for the module; a test that changes its records works on a copy (:func:`copy_of`)."""
    return run(tmp_path_factory.mktemp("execution"), "shared", "--prefetch", "0", "--no-report")


def copy_of(results, tmp_path, name):
    shutil.copytree(results, tmp_path / name)
    return tmp_path / name


def summary(results):
    (folder,) = [d for d in results.iterdir() if (d / "summary.json").is_file()]
    return folder, json.loads((folder / "summary.json").read_text())


@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp16"], "--precision: unknown precision 'fp16'; choose from fp32, bf16"),
    (["--prefetch", "-1"], "--prefetch must be at least 0"),
    (["--prefetch", "two"], "--prefetch must be auto or a number"),
])
def test_bad_values_get_one_line_and_exit_code_2(tmp_path, capsys, argv, message):
    assert run_cli.main(SMOKE + ["--results-dir", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r").exists()


def test_precision_is_part_of_the_run_id_only_when_not_fp32():
    base = RunConfig("protonet")
    assert RunConfig("protonet", precision="fp32").run_id == base.run_id == "protonet-omniglot-5w1s-conv4-quick-s0"
    bf16 = RunConfig("protonet", precision="bf16").run_id
    assert bf16 != base.run_id and bf16.startswith(base.run_id + "-")
    assert parse_prefetch("auto") is None and parse_prefetch("3") == 3
    assert Execution().prefetch_for("cpu") == 0 and Execution().prefetch_for("cuda") == 2
    assert Execution(prefetch=0).prefetch_for("cuda") == 0
    with pytest.raises(ValueError):
        Execution(prefetch=-2)


def test_prefetch_changes_no_record_and_execution_is_recorded(tmp_path, smoke_results):
    off = smoke_results  # --prefetch 0
    on = run(tmp_path, "on", "--prefetch", "2", "--no-deterministic", "--no-report")
    (f_off, s_off), (f_on, s_on) = summary(off), summary(on)
    assert f_off.name == f_on.name  # how a run executes is not part of what it is
    a = pd.read_csv(f_off / "test_episodes.csv")["accuracy"].to_numpy()
    b = pd.read_csv(f_on / "test_episodes.csv")["accuracy"].to_numpy()
    np.testing.assert_array_equal(a, b)
    assert pd.read_csv(f_off / "curve.csv")["val_acc"].tolist() == pd.read_csv(f_on / "curve.csv")["val_acc"].tolist()
    assert s_off["precision"] == "fp32" and s_off["execution"]["prefetch"] == 0
    assert s_on["execution"]["prefetch"] == 2
    # the CPU's kernels are deterministic at a fixed thread count, asked or not; what was asked is kept
    assert s_off["deterministic"] is True and s_on["deterministic"] is True
    assert s_on["execution"]["deterministic_requested"] is False
    assert s_off["execution"]["compiled"] == [] and s_off["execution_attempts"][0]["from_step"] == 0
    board = pd.read_csv(off / "leaderboard.csv")
    assert board.loc[0, "precision"] == "fp32" and bool(board.loc[0, "deterministic"]) is True


def test_a_bf16_run_is_its_own_labelled_entry_in_the_report(tmp_path, smoke_results):
    copy_of(smoke_results, tmp_path, "mixed")  # the fp32 run
    results = run(tmp_path, "mixed", "--precision", "bf16")
    folders = sorted(d.name for d in results.iterdir() if (d / "summary.json").is_file())
    assert len(folders) == 2  # the fp32 run was not replaced
    bf16 = [json.loads((results / f / "summary.json").read_text()) for f in folders]
    assert sorted(s["precision"] for s in bf16) == ["bf16", "fp32"]
    board = pd.read_csv(results / "leaderboard.csv")
    assert sorted(board["precision"]) == ["bf16", "fp32"]
    from benchmark.report import build_report

    report = build_report(results, tmp_path / "both").read_text()  # the command's report has its own run only
    assert "train_queries=5] [bf16]" in report and "bfloat16 autocast" in report
    settings = pd.read_csv(tmp_path / "both" / "leaderboard.csv")
    assert sorted(settings["precision"]) == ["bf16", "fp32"] and len(settings) == 2


def test_the_report_names_a_non_deterministic_run_and_its_operation(tmp_path, smoke_results):
    from benchmark.report import build_report

    results = copy_of(smoke_results, tmp_path, "nondet")
    folder, s = summary(results)
    s["deterministic"] = False  # as a CUDA run where an operation warned records it
    s["execution"]["nondeterministic_ops"] = ["adaptive_avg_pool2d_backward_cuda"]
    (folder / "summary.json").write_text(json.dumps(s))
    text = build_report(results, tmp_path / "rep").read_text()
    assert f"Non-deterministic run {folder.name}" in text and "adaptive_avg_pool2d_backward_cuda" in text
    assert pd.read_csv(tmp_path / "rep" / "leaderboard.csv").loc[0, "deterministic"] in (False, "False")


def test_the_report_names_a_run_that_any_attempt_compiled(tmp_path, smoke_results):
    from benchmark.report import build_report

    results = copy_of(smoke_results, tmp_path, "comp")
    folder, s = summary(results)
    assert "torch.compile" not in build_report(results, tmp_path / "eager").read_text()
    # as a run first trained eagerly, then resumed with --compile, records it
    s["execution_attempts"] = [dict(s["execution"]), dict(s["execution"], compile=True, compiled=["encoder"],
                                                          from_step=2)]
    (folder / "summary.json").write_text(json.dumps(s))
    text = build_report(results, tmp_path / "rep").read_text()
    assert f"1 run(s) trained with torch.compile (--compile): {folder.name}" in text
    assert "CUDA graphs" not in text
    # a run resumed with --capture is named as captured, not (also) as merely compiled
    s["execution_attempts"][1]["capture"] = True
    (folder / "summary.json").write_text(json.dumps(s))
    text = build_report(results, tmp_path / "rep2").read_text()
    assert f"1 run(s) trained with captured CUDA graphs (--capture: torch.compile mode reduce-overhead): " \
        f"{folder.name}" in text and "(--compile)" not in text
    assert s["execution"]["capture"] is False  # recorded for every run: eager here


def test_capture_is_refused_on_the_cpu_in_one_line(tmp_path, capsys):
    from benchmark.run import main

    assert main(["--methods", "protonet", "--profile", "smoke", "--device", "cpu", "--capture", "--results-dir",
                 str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--capture records CUDA graphs and needs --device cuda" in err, err
    assert not (tmp_path / "r").exists()


def test_capture_compiles_with_the_reduce_overhead_mode(monkeypatch):
    """--capture hands torch.compile mode reduce-overhead (CUDA graphs) for the method's compilable modules; a
    method that compiles nothing captures nothing."""
    from benchmark.pipeline.execution import CAPTURE_MODE
    from benchmark.pipeline.training import compile_method

    calls = []

    class Mod(torch.nn.Module):
        def compile(self, **kw):
            calls.append(kw)

    class Method:
        def __init__(self, mods):
            self.mods = mods

        def compile_modules(self):
            return self.mods

    assert compile_method(Method({"encoder": Mod()}), CAPTURE_MODE) == ["encoder"]
    assert compile_method(Method({"encoder": Mod()})) == ["encoder"]
    assert calls == [{"mode": "reduce-overhead"}, {}]
    assert compile_method(Method({}), CAPTURE_MODE) == []


def test_warnings_of_non_deterministic_operations_are_collected_others_shown():
    from benchmark.pipeline.machine import NondeterministicOps

    names, calls = [], []
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with NondeterministicOps(True, names, lambda: calls.append(1)):
            for _ in range(2):
                warnings.warn("adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation, but "
                              "you set 'torch.use_deterministic_algorithms(True, warn_only=True)'.")
            warnings.warn("something else")
        with NondeterministicOps(False, names, lambda: calls.append(1)):
            warnings.warn("index_add_cuda_ does not have a deterministic implementation, but ...")
    assert names == ["adaptive_avg_pool2d_backward_cuda"] and len(calls) == 2
    assert [str(w.message) for w in shown][0] == "something else" and len(shown) == 2


def test_methods_that_run_their_networks_functionally_compile_nothing_and_say_why():
    from benchmark.pipeline import registry

    for name in ("maml", "reptile", "meta_lstm"):
        assert "functional" in registry.get(name).compile_note
    for name in ("protonet", "matching", "relation", "tadam", "mtl"):
        assert registry.get(name).compile_note is None


def test_speed_refuses_capture_on_the_cpu_in_one_line(capsys):
    from benchmark import speed

    assert speed.main(["--method", "protonet", "--device", "cpu", "--capture"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--capture records CUDA graphs" in err, err

"""Methods from outside the package: a method file (--method-file / $BENCHMARK_METHODS) and an installed package's
entry point, with their origin recorded; name clashes refused; saved models of plugins reload."""
import hashlib
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from benchmark.pipeline import registry

EXAMPLE = ROOT / "examples" / "cosine-protonet"
FILE = EXAMPLE / "cosine_protonet.py"
SMOKE = ["--profile", "smoke", "--shots", "1", "--test-episodes", "5", "--val-episodes", "2", "--set", "train_steps=2",
         "val_every=1", "--no-progress", "--no-report"]


def env(**extra):
    e = {k: v for k, v in os.environ.items() if k != registry.FILES_ENV}
    return {**e, "PYTHONPATH": str(ROOT), **extra}


def bench(*args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env(**kw), capture_output=True, text=True,
                          timeout=600)


def test_method_file_runs_and_records_its_origin(tmp_path, monkeypatch, capsys):
    """The real command trains the file's method; the saved model, benchmark.evaluate and the report then run in
    this process (their main), the registry reset between them as a new process would start it."""
    from benchmark import evaluate, load_run
    from benchmark.report import cli as report

    r = bench("benchmark.run", "--method-file", str(FILE), "--methods", "cosine-protonet", *SMOKE,
              "--results-dir", str(tmp_path / "res"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (run_dir,) = [p for p in (tmp_path / "res").iterdir() if p.name.startswith("cosine-protonet-")]
    origin = json.loads((run_dir / "summary.json").read_text())["method_facts"]["origin"]
    assert origin == {"kind": "file", "path": str(FILE), "sha256": hashlib.sha256(FILE.read_bytes()).hexdigest()}
    # the saved model names its origin: without the file the error says how to load it, with it the model loads
    monkeypatch.delenv(registry.FILES_ENV, raising=False)
    monkeypatch.setattr(registry, "_REGISTRY", None)
    with pytest.raises(Exception, match=f"load it with --method-file {FILE}"):
        load_run(run_dir)
    monkeypatch.setenv(registry.FILES_ENV, str(FILE))
    monkeypatch.setattr(registry, "_REGISTRY", None)
    assert load_run(run_dir).name == "cosine-protonet"
    monkeypatch.delenv(registry.FILES_ENV)
    monkeypatch.setattr(registry, "_REGISTRY", None)
    capsys.readouterr()
    assert evaluate.main(["--runs", str(run_dir), "--method-file", str(FILE), "--ways", "3", "--no-progress"]) == 0
    assert "1 evaluations done" in capsys.readouterr().err
    assert report.main(["--results-dir", str(tmp_path / "res"), "--reports-dir", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "latest" / "report.md").read_text()
    assert f"`cosine-protonet`: file {FILE} (SHA-256 {origin['sha256'][:12]})" in md
    rows = [line for line in md.splitlines() if line.startswith("|") and "cosine-protonet" in line
            and "cosine-protonet-omniglot" not in line]  # method rows; provenance rows name run ids
    assert len(rows) >= 3 and all("[ext]" in line for line in rows), rows  # Table 1, Table 2, the others
    tex = (tmp_path / "rep" / "latest" / "tables.tex").read_text()
    assert "{[}ext{]}" in tex  # brackets braced by the LaTeX escaping


def _installed(tmp_path):
    """The example package made importable with its entry point, as pip would install it (a dist-info folder)."""
    site = tmp_path / "site"
    dist = site / "fewshot_cosine_protonet-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fewshot-cosine-protonet\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[fewshot_benchmark.methods]\ncosine-protonet = cosine_protonet\n")
    (site / "cosine_protonet.py").write_bytes(FILE.read_bytes())
    return site


def test_entry_point_plugin_is_found_listed_and_recorded(tmp_path):
    site = _installed(tmp_path)
    path = f"{site}{os.pathsep}{ROOT}"
    r = bench("benchmark.run", "--help", cwd=tmp_path, PYTHONPATH=path)
    assert r.returncode == 0
    external = r.stdout[r.stdout.index("methods (external):"):]
    assert "cosine-protonet" in external.splitlines()[1] and "installed plugin cosine_protonet" in external
    r = bench("benchmark.run", "--methods", "cosine-protonet", *SMOKE, "--results-dir", str(tmp_path / "res"),
              cwd=tmp_path, PYTHONPATH=path)
    assert r.returncode == 0, r.stderr
    (run_dir,) = list((tmp_path / "res").glob("cosine-protonet-*"))
    origin = json.loads((run_dir / "summary.json").read_text())["method_facts"]["origin"]
    assert origin == {"kind": "entry_point", "entry_point": "cosine-protonet", "value": "cosine_protonet",
                      "package": "fewshot-cosine-protonet", "version": "0.1.0"}


@pytest.mark.parametrize("source,message", [
    ("from methods.protonet import ProtoNet\nclass Mine(ProtoNet):\n    name = 'protonet'\n",
     "method name 'protonet' is registered twice: by the built-in methods and by file"),
    ("raise RuntimeError('half written')\n", "raised on import: RuntimeError: half written"),
    ("x = 1\n", "defines no Method subclass with a name"),
])
def test_bad_method_files_are_refused_in_one_line(tmp_path, source, message):
    f = tmp_path / "mine.py"
    f.write_text(source)
    r = bench("benchmark.run", "--method-file", str(f), "--methods", "protonet", *SMOKE, "--results-dir",
              str(tmp_path / "res"), cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "res").exists()


def test_two_plugins_with_one_name_are_refused(tmp_path):
    site = _installed(tmp_path)
    r = bench("benchmark.run", "--method-file", str(FILE), "--methods", "cosine-protonet", *SMOKE, cwd=tmp_path,
              PYTHONPATH=f"{site}{os.pathsep}{ROOT}")
    assert r.returncode == 2
    assert "'cosine-protonet' is registered twice: by package fewshot-cosine-protonet 0.1.0" in r.stderr


def test_method_file_reaches_ray_workers(tmp_path):
    pytest.importorskip("ray")
    r = bench("benchmark.run", "--method-file", str(FILE), "--methods", "cosine-protonet,protonet", *SMOKE,
              "--executor", "ray", "--cpus-per-run", "1", "--results-dir", str(tmp_path / "res"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 runs done" in r.stderr


def test_groups_keep_all_to_the_builtin_papers(monkeypatch):
    monkeypatch.delenv(registry.FILES_ENV, raising=False)
    builtin_all = registry.resolve("all")
    try:
        registry.load_files([FILE])
        assert registry.resolve("all") == builtin_all
        assert registry.resolve("external") == ["cosine-protonet"] == registry.external_methods()
        assert "cosine-protonet" in registry.resolve("variants")
        assert registry.origin("cosine-protonet")["kind"] == "file" and registry.origin("protonet") == {"kind": "builtin"}
    finally:
        monkeypatch.delenv(registry.FILES_ENV, raising=False)
        registry._REGISTRY = None


def test_evaluate_warns_when_the_method_file_changed():
    """benchmark.evaluate names a method file that is not the one the run was trained with (its SHA-256), and a
    package of another version; the same file says nothing."""
    from benchmark.evaluate import origin_changed

    trained = {"kind": "file", "path": "/x/m.py", "sha256": "a" * 64}
    assert origin_changed(trained, dict(trained)) is None
    assert "is not the one the run was trained with" in origin_changed(trained, {**trained, "sha256": "b" * 64})
    pkg = {"kind": "entry_point", "package": "p", "version": "1.0"}
    assert origin_changed(pkg, dict(pkg)) is None and "1.1" in origin_changed(pkg, {**pkg, "version": "1.1"})
    assert origin_changed({"kind": "builtin"}, {"kind": "builtin"}) is None

"""The rooms of the code, pinned: what a method may import, what the report may read, what the kit and the store
reach. Each rule is a check over the imports of the source files (read with ``ast``, nothing imported), and each
check is shown to catch a breach on a made-up module."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> list[str]:
    """The absolute names of the project modules ``path`` imports (``benchmark.*`` and ``methods.*``), relative
    imports resolved against the file's package."""
    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # "from . import x" imports the module x of the package; "from .m import x" imports m
            out += [f"{mod}.{a.name}" for a in node.names] if not node.module else [mod]
    return [m for m in out if m.split(".")[0] in ("benchmark", "methods")]


def breaches(files, allowed) -> list[str]:
    """``file: module`` for every project import of ``files`` that no prefix of ``allowed`` admits."""
    return [f"{f.relative_to(ROOT)}: {m}" for f in files for m in imports(f)
            if not any(m == a or m.startswith(a + ".") for a in allowed)]


METHOD_ALLOWED = ("benchmark.kit", "methods.base", "methods.blocks")
REPORT_ALLOWED = ("benchmark.store", "benchmark.report")
KIT_ALLOWED = ("benchmark.kit", "benchmark.data")
STORE_ALLOWED = ("benchmark.store",)


def method_files():
    return [p for p in (ROOT / "methods").glob("*.py") if p.name != "__init__.py"]


def test_methods_import_only_the_kit():
    assert breaches(method_files(), METHOD_ALLOWED) == []


def test_the_report_imports_only_the_store():
    """The report reads records through the store; its command module (``python -m benchmark.report``) also uses
    the commands' one-line errors (the toolkit, which imports nothing of the harness at module level)."""
    report = sorted((ROOT / "benchmark" / "report").glob("*.py"))
    assert breaches([p for p in report if p.name != "cli.py"], REPORT_ALLOWED) == []
    assert breaches([p for p in report if p.name == "cli.py"], REPORT_ALLOWED + ("benchmark.cli.toolkit",)) == []


def test_the_kit_reaches_only_the_data_and_the_store_nothing_above_it():
    assert breaches(sorted((ROOT / "benchmark" / "kit").glob("*.py")), KIT_ALLOWED) == []
    assert breaches(sorted((ROOT / "benchmark" / "store").glob("*.py")), STORE_ALLOWED) == []


def test_the_toolkit_and_the_data_reach_nothing_above_them():
    """The commands' toolkit is the lowest room of the commands (the data checker and the report use it)."""
    assert breaches(sorted((ROOT / "benchmark" / "cli").glob("*.py")), ("benchmark.cli",)) == []
    assert breaches(sorted((ROOT / "benchmark" / "data").glob("*.py")), ("benchmark.data", "benchmark.cli.toolkit")) == []


def test_only_the_registry_imports_the_methods():
    harness = [p for p in (ROOT / "benchmark").rglob("*.py") if p.name != "registry.py"]
    assert [b for b in breaches(harness, ("benchmark",)) if ": methods" in b and not b.endswith(": methods.base")] \
        == [], "the harness reaches the methods only through benchmark.pipeline.registry"


@pytest.mark.parametrize("source, allowed, caught", [
    ("from benchmark.pipeline.training import evaluate\n", METHOD_ALLOWED, "benchmark.pipeline.training"),
    ("import methods.protonet\n", METHOD_ALLOWED, "methods.protonet"),
    ("from ..pipeline import run\n", REPORT_ALLOWED, "benchmark.pipeline"),
    ("from ..kit.episodes import Episode\n", REPORT_ALLOWED, "benchmark.kit.episodes"),
])
def test_a_breach_is_caught(tmp_path, monkeypatch, source, allowed, caught):
    """The checks above can fail: a made-up module in the room's folder that breaks its rule is named."""
    folder = ROOT / ("methods" if allowed is METHOD_ALLOWED else "benchmark/report")
    probe = folder / "_rooms_probe_tmp.py"
    probe.write_text(source)
    try:
        assert breaches([probe], allowed) == [f"{probe.relative_to(ROOT)}: {caught}"]
    finally:
        probe.unlink()


def test_the_pipeline_face_names_what_it_hands_on():
    import benchmark.pipeline as pipeline

    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None, name
    with pytest.raises(AttributeError):
        pipeline.no_such_name  # noqa: B018

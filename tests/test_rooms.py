"""The rooms of the code, pinned: what a method may import, what the report may read, what the kit, the store, the
pipeline and the commands reach. Each rule is a check over the imports of the source files under a root (read with
``ast``, nothing imported), and each rule is shown to catch a breach in a temporary copy of the sources, never in the
checkout."""
from __future__ import annotations

import ast
import functools
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path, root: Path = ROOT) -> list[str]:
    """The absolute names of the project modules ``path`` imports (``benchmark.*`` and ``methods.*``), relative
    imports resolved against the file's package (``path`` lies under ``root``)."""
    rel = path.relative_to(root).with_suffix("")
    package = list(rel.parts[:-1])
    out = []
    for level, module, names in _import_nodes(path.read_text()):
        if level is None:
            out += names
            continue
        if level:
            base = package[: len(package) - (level - 1)]
            mod = ".".join(base + ([module] if module else []))
        else:
            mod = module or ""
        # "from . import x" imports the module x of the package; "from .m import x" imports m, or m.x where x is a
        # module of the package m ("from benchmark import run")
        if not module:
            out += [f"{mod}.{n}" for n in names]
        else:
            subs = [f"{mod}.{n}" for n in names if _is_module(root, f"{mod}.{n}")]
            out += subs + ([mod] if len(subs) < len(names) else [])
    return [m for m in out if m.split(".")[0] in ("benchmark", "methods")]


@functools.lru_cache(maxsize=None)
def _import_nodes(text: str) -> tuple:
    """(level, module, names) of each import statement of a source text (level None: ``import a, b``); by text, so
    the temporary copies of the probes below parse nothing twice."""
    out = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            out.append((None, None, [a.name for a in node.names]))
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module, [a.name for a in node.names]))
    return tuple(out)


def _is_module(root: Path, name: str) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _under(module: str, prefixes) -> bool:
    return any(module == a or module.startswith(a + ".") for a in prefixes)


def breaches(files, allowed, root: Path = ROOT, forbidden=()) -> list[str]:
    """``file: module`` for every project import of ``files`` that no prefix of ``allowed`` admits, or that a prefix
    of ``forbidden`` names (a forbidden room inside an allowed one)."""
    return [f"{f.relative_to(root)}: {m}" for f in files for m in imports(f, root)
            if not _under(m, allowed) or _under(m, forbidden)]


def module_name(path: Path, root: Path) -> str:
    """The dotted name of the module ``path`` (a package's ``__init__.py``: the package's name)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


METHOD_ALLOWED = ("benchmark.kit", "methods.base", "methods.blocks")
REPORT_ALLOWED = ("benchmark.store", "benchmark.report")
KIT_ALLOWED = ("benchmark.kit", "benchmark.data")
STORE_ALLOWED = ("benchmark.store",)
# the pipeline runs a job: the kit, the data, the store, the commands' toolkit and (through the registry) the methods
PIPELINE_ALLOWED = ("benchmark.pipeline", "benchmark.kit", "benchmark.data", "benchmark.store", "benchmark.cli",
                    "methods")
# the commands are the top floor: they reach the harness through its rooms (the report's built report included)
COMMAND_ALLOWED = ("benchmark.pipeline", "benchmark.kit", "benchmark.data", "benchmark.store", "benchmark.cli",
                   "benchmark.report", "methods.base")
# the rooms: the packages of benchmark/ below the commands; any other package of benchmark/ is a command package
# (``benchmark/gpu_check/``: one command in several modules, each of them a command module)
ROOMS = ("cli", "data", "kit", "pipeline", "report", "store")
# the only arrows from one command to another: the GPU check times with benchmark.speed; the report's __main__ is
# its command module (a command package's modules also import each other)
COMMAND_USES = {"benchmark.gpu_check": ("benchmark.speed", "benchmark.reproduce"),
                "benchmark.report.__main__": ("benchmark.report.cli",)}


def method_files(root: Path = ROOT):
    return sorted(p for p in (root / "methods").glob("*.py") if p.name != "__init__.py")


def room(root: Path, folder: str):
    """The modules of a room, its subpackages' included (``benchmark/pipeline/executors/``)."""
    return sorted((root / "benchmark" / folder).rglob("*.py"))


def command_packages(root: Path = ROOT) -> list[Path]:
    """The command packages: every package at the top of ``benchmark/`` that is no room (``benchmark/gpu_check/``)."""
    return sorted(p.parent for p in (root / "benchmark").glob("*/__init__.py") if p.parent.name not in ROOMS)


def command_files(root: Path = ROOT):
    """The command modules: every module at the top of ``benchmark/`` (``python -m benchmark.run`` and its
    siblings), every module of a command package, every ``__main__.py``, and the report's command module that its
    ``__main__`` hands over to."""
    top = [p for p in (root / "benchmark").glob("*.py") if p.name != "__init__.py"]
    packages = [p for d in command_packages(root) for p in d.glob("*.py")]
    return sorted(set(top + packages + list((root / "benchmark").rglob("__main__.py"))
                      + [root / "benchmark" / "report" / "cli.py"]))


def command_of(path: Path, root: Path = ROOT) -> str:
    """The command the module ``path`` belongs to: its command package's, else its own."""
    package = next((d for d in command_packages(root) if path.parent == d), None)
    return module_name(package if package else path, root)


def commands(root: Path = ROOT) -> tuple[str, ...]:
    return tuple(module_name(p, root) for p in command_files(root))


# ---- the rules: each returns its breaches in the sources under root
def methods_rule(root: Path = ROOT) -> list[str]:
    return breaches(method_files(root), METHOD_ALLOWED, root)


def report_rule(root: Path = ROOT) -> list[str]:
    report = room(root, "report")
    return (breaches([p for p in report if p.name not in ("cli.py", "__main__.py")], REPORT_ALLOWED, root)
            + breaches([p for p in report if p.name in ("cli.py", "__main__.py")],
                       REPORT_ALLOWED + ("benchmark.cli.toolkit",), root))


def kit_rule(root: Path = ROOT) -> list[str]:
    return breaches(room(root, "kit"), KIT_ALLOWED, root)


def store_rule(root: Path = ROOT) -> list[str]:
    return breaches(room(root, "store"), STORE_ALLOWED, root)


def toolkit_rule(root: Path = ROOT) -> list[str]:
    return breaches(room(root, "cli"), ("benchmark.cli",), root)


def data_rule(root: Path = ROOT) -> list[str]:
    return breaches(room(root, "data"), ("benchmark.data", "benchmark.cli.toolkit"), root,
                    forbidden=("benchmark.data.__main__",))


def registry_rule(root: Path = ROOT) -> list[str]:
    harness = [p for p in sorted((root / "benchmark").rglob("*.py")) if p.name != "registry.py"]
    return [b for b in breaches(harness, ("benchmark",), root) if ": methods" in b and not b.endswith(": methods.base")]


def pipeline_rule(root: Path = ROOT) -> list[str]:
    return breaches(room(root, "pipeline"), PIPELINE_ALLOWED, root, forbidden=commands(root))


def commands_rule(root: Path = ROOT) -> list[str]:
    cmds = commands(root)
    out = []
    for p in command_files(root):
        own = command_of(p, root)
        uses = COMMAND_USES.get(own, ()) + (own,)  # a command package's modules import each other
        out += breaches([p], COMMAND_ALLOWED + uses, root, forbidden=tuple(c for c in cmds if not _under(c, uses)))
    return out


def upward_rule(root: Path = ROOT) -> list[str]:
    """A package's face (its ``__init__``) may hand on its own command (``benchmark.report.main``); nothing else
    below the commands imports one."""
    cmds, files = commands(root), set(command_files(root))
    below = [p for d in ("benchmark", "methods") for p in sorted((root / d).rglob("*.py")) if p not in files]
    return [b for p in below
            for b in breaches([p], ("benchmark", "methods"), root,
                              forbidden=tuple(c for c in cmds if not (p.name == "__init__.py" and c.startswith(
                                  module_name(p.parent, root) + "."))))]


# ---- the rules hold in the checkout
def test_methods_import_only_the_kit():
    assert methods_rule() == []


def test_the_report_imports_only_the_store():
    """The report reads records through the store; its command module (``python -m benchmark.report``) also uses
    the commands' one-line errors (the toolkit, which imports nothing of the harness at module level)."""
    assert report_rule() == []


def test_the_kit_reaches_only_the_data_and_the_store_nothing_above_it():
    assert kit_rule() == []
    assert store_rule() == []


def test_the_toolkit_and_the_data_reach_nothing_above_them():
    """The commands' toolkit is the lowest room of the commands (the data checker and the report use it)."""
    assert toolkit_rule() == []
    assert data_rule() == []


def test_only_the_registry_imports_the_methods():
    assert registry_rule() == [], "the harness reaches the methods only through benchmark.pipeline.registry"


def test_the_pipeline_imports_neither_the_report_nor_the_commands():
    """The pipeline runs jobs: the kit, the data, the store, the toolkit and the methods (through the registry);
    nothing of the report (the commands build it) and no command module."""
    assert pipeline_rule() == []


def test_the_commands_reach_the_harness_through_its_rooms_and_nothing_imports_them():
    """The commands are the top floor: they import the pipeline, the kit, the data, the store, the toolkit and the
    report (never a method, never another command but the pinned arrows), and no module below them imports one."""
    assert commands_rule() == []
    assert upward_rule() == []


def test_the_commands_are_the_modules_at_the_top_and_the_main_modules():
    """A new module at the top of ``benchmark/`` is a command (and fenced as one); so is every module of a package
    at the top of ``benchmark/`` that is no room (the GPU check's)."""
    assert {"benchmark.check", "benchmark.data.__main__", "benchmark.evaluate", "benchmark.gpu_check",
            "benchmark.gpu_check.__main__", "benchmark.gpu_check.timing", "benchmark.report.__main__",
            "benchmark.report.cli", "benchmark.run", "benchmark.speed"} <= set(commands())
    assert not {"benchmark.pipeline.runner", "benchmark.cli.toolkit", "benchmark.report.build"} & set(commands())
    assert [d.name for d in command_packages()] == ["gpu_check"]


# ---- each rule catches a breach: a temporary copy of the sources, one module added or changed
RULES = {"methods": methods_rule, "report": report_rule, "kit": kit_rule, "store": store_rule,
         "toolkit": toolkit_rule, "data": data_rule, "registry": registry_rule, "pipeline": pipeline_rule,
         "commands": commands_rule, "upward": upward_rule}
PROBE = "_rooms_probe.py"


@pytest.mark.parametrize("rule, where, source, caught", [
    ("methods", f"methods/{PROBE}", "from benchmark.pipeline.training import evaluate\n",
     "benchmark.pipeline.training"),
    ("methods", f"methods/{PROBE}", "import methods.protonet\n", "methods.protonet"),
    ("report", f"benchmark/report/{PROBE}", "from ..pipeline import run\n", "benchmark.pipeline"),
    ("report", f"benchmark/report/{PROBE}", "from ..kit.episodes import Episode\n", "benchmark.kit.episodes"),
    ("report", "benchmark/report/cli.py", "from ..pipeline import run\n", "benchmark.pipeline"),
    ("kit", f"benchmark/kit/{PROBE}", "from ..pipeline.training import evaluate\n", "benchmark.pipeline.training"),
    ("store", f"benchmark/store/{PROBE}", "from ..kit.episodes import Episode\n", "benchmark.kit.episodes"),
    ("toolkit", f"benchmark/cli/{PROBE}", "from ..data import load_dataset\n", "benchmark.data"),
    ("data", f"benchmark/data/{PROBE}", "from ..store.files import read_csv\n", "benchmark.store.files"),
    ("data", f"benchmark/data/{PROBE}", "from .__main__ import main\n", "benchmark.data.__main__"),
    ("registry", "benchmark/pipeline/runner.py", "import methods.protonet\n", "methods.protonet"),
    ("registry", "benchmark/speed.py", "from methods import maml\n", "methods.maml"),
    ("pipeline", f"benchmark/pipeline/{PROBE}", "from ..report import build_report\n", "benchmark.report"),
    ("pipeline", f"benchmark/pipeline/{PROBE}", "from benchmark.report.common import FAMILY_ORDER\n",
     "benchmark.report.common"),
    ("pipeline", f"benchmark/pipeline/{PROBE}", "from ..run import main\n", "benchmark.run"),
    ("pipeline", "benchmark/pipeline/runner.py", "from .. import speed\n", "benchmark.speed"),
    ("pipeline", f"benchmark/pipeline/executors/{PROBE}", "from ...report import build_report\n", "benchmark.report"),
    ("pipeline", f"benchmark/pipeline/{PROBE}", "from ..data.__main__ import main\n", "benchmark.data.__main__"),
    ("commands", "benchmark/run.py", "import methods.protonet\n", "methods.protonet"),
    ("commands", "benchmark/evaluate.py", "from .check import check_method\n", "benchmark.check"),
    ("commands", "benchmark/speed.py", "from .gpu_check import main\n", "benchmark.gpu_check"),
    ("commands", "benchmark/speed.py", "from .gpu_check.jobs import Jobs\n", "benchmark.gpu_check.jobs"),
    ("commands", "benchmark/gpu_check/timing.py", "from ..run import main\n", "benchmark.run"),
    ("commands", "benchmark/gpu_check/timing.py", "import methods.protonet\n", "methods.protonet"),
    ("commands", f"benchmark/gpu_check/{PROBE}", "from ..check import main\n", "benchmark.check"),
    ("commands", "benchmark/run.py", "from .report.cli import main\n", "benchmark.report.cli"),
    ("commands", f"benchmark/{PROBE}", "from .run import main\n", "benchmark.run"),
    ("upward", "benchmark/kit/episodes.py", "from ..evaluate import main\n", "benchmark.evaluate"),
    ("upward", "benchmark/report/build.py", "from .cli import main\n", "benchmark.report.cli"),
    ("upward", f"methods/{PROBE}", "from benchmark import gpu_check\n", "benchmark.gpu_check"),
    ("upward", f"benchmark/pipeline/{PROBE}", "from ..gpu_check.summary import failure_lines\n",
     "benchmark.gpu_check.summary"),
])
def test_a_breach_is_caught(tmp_path, rule, where, source, caught):
    """The rules above can fail: in a copy of the sources (``tmp_path``), a module that breaks the rule (a new one in
    the room's folder, or a line added to one of its modules) is named, and nothing else is."""
    def sources_only(folder, names):
        return [n for n in names if n == "__pycache__" or (not n.endswith(".py") and not (Path(folder) / n).is_dir())]

    for top in ("benchmark", "methods"):
        shutil.copytree(ROOT / top, tmp_path / top, ignore=sources_only)
    assert RULES[rule](tmp_path) == [], "the copy breaks the rule before the probe"
    probe = tmp_path / where
    probe.write_text((probe.read_text() if probe.exists() else "") + source)
    assert RULES[rule](tmp_path) == [f"{where}: {caught}"]
    checkout = ROOT / where  # untouched
    assert not checkout.exists() if PROBE in where else checkout.read_text() != probe.read_text()


def test_the_pipeline_face_names_what_it_hands_on():
    import benchmark.pipeline as pipeline

    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None, name
    with pytest.raises(AttributeError):
        pipeline.no_such_name  # noqa: B018

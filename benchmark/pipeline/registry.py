"""Method registry: every :class:`~methods.base.Method` subclass with a ``name``, found in the modules of the
``methods`` package (built-in) and in external methods (plugins). The one place of the harness that imports the
methods.

Adding a built-in method is adding one module to ``methods/``; nothing else changes. ``all`` means the main entry of each
built-in paper (in the family order of the survey's Table 1); ``variants`` adds the ablations and switchable variants
(entries whose ``variant_of`` names a main method) and every external method. Entries of an opt-in family
(:data:`GROUPS`) are in neither: they run only when named, alone or by their group, e.g. ``baselines`` = the
transfer-learning baselines of Chen et al. (ICLR 2019), ``baseline`` and ``baseline++`` (``--methods all,baselines``
runs them beside the main job's methods); ``external`` = every external method.

External methods, without editing this package:

* an installed package declares them under the entry-point group :data:`ENTRY_POINT_GROUP` in its
  ``pyproject.toml`` (``[project.entry-points."fewshot_benchmark.methods"]``, ``name = "module"`` or
  ``name = "module:Class"``); every ``Method`` subclass with a ``name`` in the module (or the one class) registers;
* a single file, for work in progress: ``--method-file PATH.py`` (repeatable) or the environment variable
  :data:`FILES_ENV` (``PATH[:PATH]``), loaded by :func:`load_files` (the command line also puts its files into that
  variable, so Ray workers and child processes find them).

A name that clashes with a built-in method or another plugin is refused (:class:`PluginError`, one line). Each
registered class carries ``origin`` (:func:`origin`): built-in, the package and version of an entry point, or a
file's path and SHA-256; runs record it in their summary and model.
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import methods

if TYPE_CHECKING:
    from methods.base import Method

FAMILY_ORDER = ("metric", "initialization", "optimizer", "transfer")
#: Opt-in groups: group name -> family. The family's built-in entries are left out of ``all`` and ``variants``.
GROUPS = {"baselines": "transfer"}
ENTRY_POINT_GROUP = "fewshot_benchmark.methods"  # installed packages declare their methods here
FILES_ENV = "BENCHMARK_METHODS"  # PATH[:PATH]: method files to load (os.pathsep-separated)
_REGISTRY: dict[str, type[Method]] | None = None
_FILES: dict[str, dict] = {}  # resolved path -> origin, the method files loaded so far
_NOT_METHODS = ("base", "blocks")  # modules of the methods package that define no method


class PluginError(ValueError):
    """An external method that cannot be registered (its file is missing or raises, a clashing name); one line."""


def _method_modules() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(methods.__path__) if m.name not in _NOT_METHODS and not m.name.startswith("_")]


def _classes(module) -> list:
    """The registrable classes a module defines: ``Method`` subclasses with a ``name``."""
    from methods.base import Method

    return [c for _, c in inspect.getmembers(module, inspect.isclass)
            if issubclass(c, Method) and c.__module__ == module.__name__ and c.name]


#: what a method name may be (docs/your-method.md): lower case, starting with a letter or digit,
#: then letters, digits and ``_ + . -`` (no comma or space: ``--methods`` takes a comma list)
NAME_RULE = re.compile(r"[a-z0-9][a-z0-9_+.-]*")


def _add(found: dict, cls, origin: dict) -> None:
    if not isinstance(cls.name, str) or not NAME_RULE.fullmatch(cls.name):
        raise PluginError(f"method name {cls.name!r} of {describe(origin)} is not allowed: names are lower case "
                          "(letters, digits, '_', '+', '.', '-'; e.g. "
                          f"{re.sub(r'[^a-z0-9_+.-]+', '-', str(cls.name).lower()).strip('-') or 'my-method'!r}), "
                          "as --methods selects them")
    if cls.name in found:
        raise PluginError(f"method name {cls.name!r} is registered twice: by {describe(found[cls.name].origin)} and "
                          f"by {describe(origin)}; rename one (its class's name attribute){_same_code_hint(found[cls.name], origin)}")
    cls.origin = origin
    found[cls.name] = cls


def _same_code_hint(existing, origin: dict) -> str:
    """When an installed package's method is given again as a file with the same contents: say to uninstall it."""
    first = existing.origin
    if first.get("kind") != "entry_point" or origin.get("kind") != "file":
        return ""
    try:
        same = hashlib.sha256(Path(inspect.getsourcefile(existing)).read_bytes()).hexdigest() == origin.get("sha256")
    except (OSError, TypeError):
        same = False
    if not same:
        return ""
    return (f"; the file is the installed package {first.get('package')}'s module: uninstall the package "
            f"(pip uninstall {first.get('package')}) to work on the file, or drop --method-file to use the package")


def registry() -> dict[str, type[Method]]:
    """Name -> method class, for every registered entry (built-in ones first, by family and then name; then the
    external ones, by name). PluginError when an external method cannot be registered."""
    global _REGISTRY
    if _REGISTRY is None:
        found: dict[str, type[Method]] = {}
        for name in _method_modules():
            for cls in _classes(importlib.import_module(f"methods.{name}")):
                _add(found, cls, {"kind": "builtin"})
        builtin = dict(sorted(found.items(), key=lambda kv: _order({k: getattr(kv[1], k) for k in FACTS})))
        external: dict[str, type[Method]] = dict(builtin)
        for ep in _entry_points():
            for cls in _entry_point_classes(ep):
                _add(external, cls, _entry_point_origin(ep))
        for path in _env_files():
            for cls in _file_classes(path):
                _add(external, cls, _FILES[str(path)])
        _REGISTRY = {**builtin, **dict(sorted((n, c) for n, c in external.items() if n not in builtin))}
    return _REGISTRY


def main_methods() -> list[str]:
    """The main entry of each built-in paper, opt-in groups excluded (the ``all`` group)."""
    return [n for n, c in registry().items() if c.variant_of is None and _builtin(c) and not _opt_in(c)]


def _builtin(cls) -> bool:
    return cls.origin["kind"] == "builtin"


def _opt_in(cls) -> bool:
    return _builtin(cls) and cls.family in GROUPS.values()


def groups() -> dict[str, list[str]]:
    """Group name -> registry names: ``all``, ``variants`` (all plus ablations and external methods), ``external``
    and each of :data:`GROUPS`."""
    out = {"all": main_methods(), "variants": [n for n, c in registry().items() if not _opt_in(c)]}
    out.update({g: [n for n, c in registry().items() if _builtin(c) and c.family == fam] for g, fam in GROUPS.items()})
    out["external"] = external_methods()
    return out


def external_methods() -> list[str]:
    return [n for n, c in registry().items() if c.origin["kind"] != "builtin"]


def origin(name: str) -> dict:
    """Where the method ``name`` comes from: ``{"kind": "builtin"}``, ``{"kind": "entry_point", "entry_point",
    "value", "package", "version"}`` or ``{"kind": "file", "path", "sha256"}``."""
    return dict(registry()[name].origin)


def describe(origin: dict) -> str:
    """An origin in words, for messages and the report."""
    if origin.get("kind") == "entry_point":
        return f"package {origin.get('package')} {origin.get('version')} (entry point {origin.get('value')})"
    if origin.get("kind") == "file":
        return f"file {origin.get('path')} (sha256 {str(origin.get('sha256'))[:12]})"
    return "the built-in methods"


# ------------------------------------------------------------------------------------------------ plugins
def load_files(paths) -> None:
    """Make the method files ``paths`` part of the registry (``--method-file``): each is added to
    :data:`FILES_ENV` of this process (so child processes and Ray workers load them too) and the registry is
    rebuilt. PluginError (one line) for a missing file, one that raises on import or defines no method, or a name
    that clashes."""
    global _REGISTRY
    files = [str(Path(p).resolve()) for p in paths]
    for f in files:
        if not Path(f).is_file():
            raise PluginError(f"--method-file {f}: no such file")
    known = [str(p) for p in _env_files()]
    os.environ[FILES_ENV] = os.pathsep.join(dict.fromkeys(known + files))
    _REGISTRY = None
    try:
        registry()
    except PluginError:
        os.environ[FILES_ENV] = os.pathsep.join(known)
        _REGISTRY = None
        raise


def _env_files() -> list[Path]:
    return [Path(p).resolve() for p in os.environ.get(FILES_ENV, "").split(os.pathsep) if p.strip()]


def _file_classes(path: Path) -> list:
    """The methods of one file, imported once per process as module ``fewshot_method_file_<sha>``; its import runs
    watched (:mod:`benchmark.pipeline.guard`: e.g. importing the harness's data or store fails it)."""
    from .guard import watching

    key = str(path)
    if not path.is_file():
        raise PluginError(f"method file {path} (from --method-file or ${FILES_ENV}) does not exist")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    mod_name = f"fewshot_method_file_{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    module = sys.modules.get(mod_name)
    if module is None or _FILES.get(key, {}).get("sha256") != digest:
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            with watching(module, f"the import of {path.name}"):  # the method's own code: the rules hold
                spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - the author's code: say where it failed, in one line
            del sys.modules[mod_name]
            raise PluginError(f"method file {path} raised on import: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")) from None
        _FILES[key] = {"kind": "file", "path": key, "sha256": digest}
    classes = _classes(module)
    if not classes:
        raise PluginError(f"method file {path} defines no Method subclass with a name")
    return classes


def _entry_points() -> list:
    from importlib.metadata import entry_points

    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def _entry_point_classes(ep) -> list:
    from methods.base import Method

    try:
        obj = ep.load()
    except Exception as e:  # noqa: BLE001 - an installed plugin that does not import: name it
        raise PluginError(f"the installed method plugin {ep.name!r} ({ep.value}) does not import: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if inspect.isclass(obj):
        if not (issubclass(obj, Method) and obj.name):
            raise PluginError(f"the method plugin {ep.name!r} ({ep.value}) is not a Method subclass with a name")
        return [obj]
    classes = _classes(obj)
    if not classes:
        raise PluginError(f"the method plugin {ep.name!r} ({ep.value}) defines no Method subclass with a name")
    return classes


def _entry_point_origin(ep) -> dict:
    dist = getattr(ep, "dist", None)
    return {"kind": "entry_point", "entry_point": ep.name, "value": ep.value,
            "package": dist.metadata["Name"] if dist is not None else None,
            "version": dist.version if dist is not None else None}


def resolve(names: str | list[str]) -> list[str]:
    """Expand a comma list (group names of :func:`groups`: 'all', the built-in papers' main entries; 'variants',
    all plus ablations and external methods; 'external'; 'baselines'; or method names) to registry names;
    ValueError lists the valid ones."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    known = groups()
    valid = ", ".join([*known, *registry()])
    for raw in items:
        n = raw.strip().lower()
        if not n:
            continue
        group = known.get(n)
        if group is None:
            if n not in registry():
                raise ValueError(f"unknown method {raw.strip()!r}; valid: {valid}")
            group = [n]
        out += [g for g in group if g not in out]
    if not out:
        raise ValueError(f"no method given; valid: {valid}")
    return out


def get(name: str) -> type[Method]:
    return registry()[resolve(name)[0]]


# ------------------------------------------------------------------------------------------------ without importing
FACTS = ("name", "family", "idea", "variant_of")


def catalogue() -> list[dict[str, str | None]]:
    """The class facts (:data:`FACTS`) of every built-in entry and of the method files of :data:`FILES_ENV`, read
    from their source text without importing them (so ``--help`` needs neither torch nor the methods), built-in
    entries first in the registry's order; a file's entries have ``"file"``. Installed plugins (entry points) are
    not imported for this: :func:`entry_point_names` lists them. ``tests/test_cli.py`` checks this equals
    :func:`registry`."""
    found: dict[str, dict] = {}
    for mod in _method_modules():
        for facts in source_facts(Path(methods.__file__).parent / f"{mod}.py"):
            found[facts["name"]] = facts
    out = [found[n] for n in sorted(found, key=lambda n: _order(found[n]))]
    for path in _env_files():
        try:
            facts = source_facts(path) if path.is_file() else []
        except (OSError, SyntaxError, ValueError):  # unreadable or not Python: load_files says so, in one line
            continue
        out += sorted(({**f, "file": str(path)} for f in facts), key=lambda f: f["name"])
    return out


def entry_point_names() -> list[tuple[str, str]]:
    """(name, value) of each installed plugin's entry point, without importing it."""
    return [(ep.name, ep.value) for ep in _entry_points()]


def source_facts(path: Path) -> list[dict]:
    """The facts of each class with a ``name`` in the module at ``path``, read from its source text; a class
    inherits the facts it does not set from its bases in the same module."""
    tree = ast.parse(Path(path).read_text())
    classes: dict[str, tuple[list[str], dict]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            own = {}
            for st in node.body:
                target = st.targets[0] if isinstance(st, ast.Assign) and len(st.targets) == 1 else \
                    st.target if isinstance(st, ast.AnnAssign) else None
                if isinstance(target, ast.Name) and target.id in FACTS and st.value is not None:
                    try:
                        own[target.id] = ast.literal_eval(st.value)
                    except ValueError:
                        pass
            classes[node.name] = ([b.id for b in node.bases if isinstance(b, ast.Name)], own)

    def fact(cls: str, key: str):
        bases, own = classes[cls]
        if key in own:
            return own[key]
        for b in bases:
            if b in classes:
                return fact(b, key)
        return None

    out = [{k: fact(c, k) for k in FACTS} for c in classes]
    return [f for f in out if f["name"]]


def _order(facts: dict) -> tuple:
    fam, variant_of, name = facts["family"], facts["variant_of"], facts["name"]
    return (FAMILY_ORDER.index(fam) if fam in FAMILY_ORDER else 99, variant_of or name, variant_of is not None, name)

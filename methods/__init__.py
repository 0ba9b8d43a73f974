"""Method registry: every :class:`~methods.base.Method` subclass with a ``name``, found in this package's modules.

Adding a method is adding one module here; nothing else changes. ``all`` means the main entry of each paper (in the
family order of the survey's Table 1); ``variants`` adds the ablations and switchable variants (entries whose
``variant_of`` names a main method).
"""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Method

FAMILY_ORDER = ("metric", "initialization", "optimizer")
_REGISTRY: dict[str, type[Method]] | None = None
_NOT_METHODS = ("base", "blocks")  # modules of the package that define no method


def _method_modules() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_METHODS and not m.name.startswith("_")]


def registry() -> dict[str, type[Method]]:
    """Name -> method class, for every registered entry, ordered by family and then name."""
    global _REGISTRY
    if _REGISTRY is None:
        from .base import Method

        found: dict[str, type[Method]] = {}
        for name in _method_modules():
            module = importlib.import_module(f"{__name__}.{name}")
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, Method) and cls.__module__ == module.__name__ and cls.name:
                    if cls.name in found:
                        raise RuntimeError(f"method name {cls.name!r} registered twice")
                    found[cls.name] = cls
        _REGISTRY = dict(sorted(found.items(), key=lambda kv: _order({k: getattr(kv[1], k) for k in FACTS})))
    return _REGISTRY


def main_methods() -> list[str]:
    return [n for n, c in registry().items() if c.variant_of is None]


def resolve(names: str | list[str]) -> list[str]:
    """Expand a comma list ('all', 'variants' or names) to registry names; ValueError lists the valid ones."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    for raw in items:
        n = raw.strip().lower()
        if not n:
            continue
        group = {"all": main_methods(), "variants": list(registry())}.get(n)
        if group is None:
            if n not in registry():
                raise ValueError(f"unknown method {raw.strip()!r}; valid: all, variants, {', '.join(registry())}")
            group = [n]
        out += [g for g in group if g not in out]
    if not out:
        raise ValueError(f"no method given; valid: all, variants, {', '.join(registry())}")
    return out


def get(name: str) -> type[Method]:
    return registry()[resolve(name)[0]]


# ------------------------------------------------------------------------------------------------ without importing
FACTS = ("name", "family", "idea", "variant_of")


def catalogue() -> list[dict[str, str | None]]:
    """The class facts (:data:`FACTS`) of every registered entry, read from the modules' source text without
    importing them (so ``--help`` needs neither torch nor the methods), in the registry's order. A class inherits the
    facts it does not set from its bases in the same module; ``tests/test_cli.py`` checks this equals
    :func:`registry`."""
    found: dict[str, dict] = {}
    for mod in _method_modules():
        tree = ast.parse((Path(__file__).parent / f"{mod}.py").read_text())
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

        for cls in classes:
            facts = {k: fact(cls, k) for k in FACTS}
            if facts["name"]:
                found[facts["name"]] = facts
    return [found[n] for n in sorted(found, key=lambda n: _order(found[n]))]


def _order(facts: dict) -> tuple:
    fam, variant_of, name = facts["family"], facts["variant_of"], facts["name"]
    return (FAMILY_ORDER.index(fam) if fam in FAMILY_ORDER else 99, variant_of or name, variant_of is not None, name)


def __getattr__(name: str):  # the base types, imported on first use (they import torch)
    if name in ("Context", "Hyper", "Method", "Setting"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module 'methods' has no attribute {name!r}")


__all__ = ["Context", "Hyper", "Method", "Setting", "catalogue", "registry", "main_methods", "resolve", "get"]

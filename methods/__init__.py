"""Method registry: every :class:`~methods.base.Method` subclass with a ``name``, found in this package's modules.

Adding a method is adding one module here; nothing else changes. ``all`` means the main entry of each paper (in the
family order of the survey's Table 1); ``variants`` adds the ablations and switchable variants (entries whose
``variant_of`` names a main method). Entries of an opt-in family (:data:`GROUPS`) are in neither: they run only when
named, alone or by their group, e.g. ``baselines`` = the transfer-learning baselines of Chen et al. (ICLR 2019),
``baseline`` and ``baseline++`` (``--methods all,baselines`` runs them beside the main job's methods).
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil

from .base import Context, Hyper, Method, Setting

FAMILY_ORDER = ("metric", "initialization", "optimizer", "transfer")
#: Opt-in groups: group name -> family. The family's entries are left out of ``all`` and ``variants``.
GROUPS = {"baselines": "transfer"}
_REGISTRY: dict[str, type[Method]] | None = None


def registry() -> dict[str, type[Method]]:
    """Name -> method class, for every registered entry, ordered by family and then name."""
    global _REGISTRY
    if _REGISTRY is None:
        found: dict[str, type[Method]] = {}
        for mod in pkgutil.iter_modules(__path__):
            if mod.name == "base" or mod.name.startswith("_"):
                continue
            module = importlib.import_module(f"{__name__}.{mod.name}")
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, Method) and cls.__module__ == module.__name__ and cls.name:
                    if cls.name in found:
                        raise RuntimeError(f"method name {cls.name!r} registered twice")
                    found[cls.name] = cls
        _REGISTRY = dict(sorted(found.items(), key=lambda kv: (
            FAMILY_ORDER.index(kv[1].family) if kv[1].family in FAMILY_ORDER else 99, kv[1].variant_of or kv[0],
            kv[1].variant_of is not None, kv[0])))
    return _REGISTRY


def _opt_in(cls: type[Method]) -> bool:
    return cls.family in GROUPS.values()


def main_methods() -> list[str]:
    """The main entry of each paper, opt-in groups excluded (the ``all`` group)."""
    return [n for n, c in registry().items() if c.variant_of is None and not _opt_in(c)]


def groups() -> dict[str, list[str]]:
    """Group name -> registry names: ``all``, ``variants`` (all plus ablations) and each of :data:`GROUPS`."""
    out = {"all": main_methods(), "variants": [n for n, c in registry().items() if not _opt_in(c)]}
    out.update({g: [n for n, c in registry().items() if c.family == fam] for g, fam in GROUPS.items()})
    return out


def resolve(names: str | list[str]) -> list[str]:
    """Expand a comma list (group names of :func:`groups`, e.g. 'all', 'variants', 'baselines', or method names) to
    registry names; ValueError lists the valid ones."""
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


__all__ = ["Context", "Hyper", "Method", "Setting", "registry", "main_methods", "groups", "resolve", "get"]

"""Facts about a run's method and backbone, written into its ``summary.json`` so that a report needs only records.

The report (:mod:`benchmark.report`) reads these instead of importing today's method registry or backbone table,
so a report of old results does not change when the code changes. :func:`record_facts` gives::

    {"method_facts": {"family", "idea", "paper", "variant_of", "adapts_at_test", "metric_facts", "origin",
                      "transductive" (under the run's hyperparameters)},
     "backbone_facts": {"name", "kind", "width" (conv4 kinds) or "widths" (resnet kinds)}}
"""
from __future__ import annotations

from ..kit.backbones import BACKBONES


def method_facts(method_cls) -> dict:
    """The class facts of a :class:`methods.base.Method` subclass (plain JSON values)."""
    return {"family": method_cls.family, "idea": method_cls.idea, "paper": method_cls.paper,
            "variant_of": method_cls.variant_of, "adapts_at_test": bool(method_cls.adapts_at_test),
            "metric_facts": dict(method_cls.metric_facts) if method_cls.metric_facts else None,
            "origin": dict(getattr(method_cls, "origin", None) or {"kind": "builtin"})}  # built-in or a plugin


def backbone_facts(name: str) -> dict:
    """Kind and width of the backbone ``name`` (:data:`benchmark.kit.backbones.BACKBONES`): ``width`` (filters) for
    Conv-4 kinds, ``widths`` (per stage) for ResNet kinds; only the name for an unknown one."""
    cfg = BACKBONES.get(name)
    if cfg is None:
        return {"name": name}
    if cfg.kind == "conv4":
        return {"name": name, "kind": cfg.kind, "width": int(cfg.width)}
    return {"name": name, "kind": cfg.kind, "widths": [int(w) for w in cfg.widths]}


def record_facts(method_cls, backbone_name: str, hp=None) -> dict:
    """``{"method_facts": ..., "backbone_facts": ...}`` for a run's summary (see the module docstring); with the
    run's hyperparameters ``hp``, ``method_facts`` also says whether the method is ``transductive`` under them."""
    facts = method_facts(method_cls)
    if hp is not None:
        facts["transductive"] = bool(method_cls.is_transductive(hp))
    return {"method_facts": facts, "backbone_facts": backbone_facts(backbone_name)}

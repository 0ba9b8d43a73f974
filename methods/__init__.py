"""The built-in methods, one module per paper (``methods/<name>.py``), and what a method author builds on:
:mod:`methods.base` (the :class:`~methods.base.Method` contract) and :mod:`methods.blocks` (shared building blocks).

The registry that finds them, and external methods (plugins), is harness machinery:
:mod:`benchmark.pipeline.registry`. A method module imports only the method kit (:mod:`benchmark.kit`),
:mod:`methods.base` and :mod:`methods.blocks`; no method imports another.
"""


def __getattr__(name: str):  # the base types, imported on first use (they import torch)
    if name in ("Context", "Hyper", "Method", "Setting"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module 'methods' has no attribute {name!r}")


__all__ = ["Context", "Hyper", "Method", "Setting"]

"""Few-shot meta-learning benchmark. ``from benchmark import load_run, Episode`` loads a trained run's saved model
and builds an episode from your own tensors (:mod:`benchmark.pipeline.models`, :meth:`benchmark.kit.episodes.Episode.from_tensors`).

The names are imported lazily, so ``import benchmark`` (and the report package) does not import torch.
"""

_LAZY = {"load_run": "benchmark.pipeline.models", "ModelError": "benchmark.pipeline.models", "Episode": "benchmark.kit.episodes"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'benchmark' has no attribute {name!r}")


__all__ = list(_LAZY)

"""The one builder of a ready method: a run (:mod:`benchmark.pipeline.runner`), ``benchmark.speed`` and
``benchmark.check`` build the method they train, time or check here, so each gets the method a run gets.

It is built in two steps, so that a caller can watch or measure the second alone (a run's peak memory and its watch
for non-deterministic operations cover the method, not its context) or look into the context between them (the
check's spying sampler):

* :func:`method_context`: the process's global generators seeded from the run's seed
  (:func:`~benchmark.pipeline.steps.seed_everything`), then the method's context
  (:func:`~benchmark.pipeline.method_context.make_context`: training sampler, artefact cache, validation service);
* :func:`build_method`: the method built from the run's hyperparameters and that context, its construction watched
  (:func:`~benchmark.pipeline.guard.watching`), placed on the context's device, and its compilable modules compiled
  (``compile``) or compiled for CUDA graphs (``capture``: :data:`~benchmark.pipeline.execution.CAPTURE_MODE`;
  :func:`~benchmark.pipeline.steps.compile_method`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..kit.context import Context
from .config import PreparedRun
from .execution import CAPTURE_MODE
from .guard import watching
from .method_context import make_context
from .steps import compile_method, seed_everything


def method_context(prepared: PreparedRun, device: torch.device, results_dir: str | Path | None = None,
                   progress: Callable | None = None, images=None) -> Context:
    """The global generators seeded from ``prepared``'s seed, then its method's context on ``device`` (artefacts
    cached under ``results_dir``, None: computed, not cached; ``images``: the dataset's pixels on the device)."""
    seed_everything(prepared.cfg.seed)
    return make_context(prepared, device, results_dir, progress, images)


def build_method(prepared: PreparedRun, ctx: Context, compile: bool = False, capture: bool = False) -> tuple:
    """(the method, the names of the modules compiled): ``prepared``'s method class built with its hyperparameters
    and ``ctx`` under the rules (construction watched), on ``ctx.device``; with ``compile`` or ``capture``, its
    compilable modules compiled (``capture``: for CUDA graphs), else nothing compiled (an empty list)."""
    with watching(prepared.cls, "construction"):
        method = prepared.cls(prepared.hp, ctx).to(ctx.device)
    compiled = compile_method(method, CAPTURE_MODE if capture else None) if compile or capture else []
    return method, compiled

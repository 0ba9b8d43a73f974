"""The run pipeline: what runs a job. Its public face is this module; the names are imported lazily, so
``benchmark.pipeline.registry`` (which ``--help`` reads) does not import PyTorch.

* :mod:`~benchmark.pipeline.registry`: the methods, built-in and external (the one place that imports ``methods``);
* :mod:`~benchmark.pipeline.config`: a run's configuration, its hyperparameters and ``prepare``;
* :mod:`~benchmark.pipeline.plan`: the frozen plan of a command line (runs, execution, executor settings);
* :mod:`~benchmark.pipeline.episode_sets`: a run's validation and test episode sets;
* :mod:`~benchmark.pipeline.method_context`: the method's context and the artefact cache;
* :mod:`~benchmark.pipeline.builder`: the one builder of a ready method (seeded context, instance, device, compile),
  used by runs, ``benchmark.speed`` and ``benchmark.check``;
* :mod:`~benchmark.pipeline.execution`: how a run executes (prefetch, determinism, compile, evaluation groups);
* :mod:`~benchmark.pipeline.prefetch`: episodes drawn ahead of the step;
* :mod:`~benchmark.pipeline.steps`: the timed training step, the FLOP counter, compiling, seeding and evaluation;
* :mod:`~benchmark.pipeline.training`: the training loop, its checkpoints and the RNG states they keep;
* :mod:`~benchmark.pipeline.runner`: one run, end to end (:class:`RunJob` in, :class:`Outcome` out);
* :mod:`~benchmark.pipeline.executors`: the sequential, process-pool and Ray executors;
* :mod:`~benchmark.pipeline.method_checks`, :mod:`~benchmark.pipeline.call_checks`: the method contract's checks
  that ``benchmark.check`` runs;
* :mod:`~benchmark.pipeline.models`, :mod:`~benchmark.pipeline.facts`, :mod:`~benchmark.pipeline.eta`,
  :mod:`~benchmark.pipeline.machine`: saved models, method facts, the ETA and the machine (provenance, device,
  determinism, memory, CPU tuning).
"""

_LAZY = {
    "RunConfig": "config", "PreparedRun": "config", "build_hyper": "config", "parse_overrides": "config",
    "Execution": "execution",
    "make_context": "method_context", "ArtefactCache": "method_context",
    "Interrupted": "training", "evaluate": "steps", "seed_everything": "steps", "Trainer": "training",
    "RunJob": "runner", "JobTemplate": "runner", "Checkpointing": "training",
    "Plan": "plan", "RaySettings": "plan", "ProcessSettings": "plan",
    "Outcome": "runner", "RunFailed": "runner", "Locked": "runner", "run": "runner",
    "run_job": "runner", "prepare": "runner", "failure_record": "runner",
    "test_set": "episode_sets", "validation_set": "episode_sets",
    "load_run": "models", "ModelError": "models",
    "resolve_device": "machine",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)

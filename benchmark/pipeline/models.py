"""Trained models as artefacts: what a finished run saves (``model.pt``) and how to load it back.

A finished run keeps its best-validation model in ``results/<run-id>/model.pt`` (:func:`model_payload`, written
atomically by :class:`benchmark.store.folders.RunFolder`; ``--no-save-model`` turns it off). The file holds the method's
state (``state_dict``, on the CPU) and what rebuilding it needs, nothing else: method name, hyperparameters as run,
the training setting (dataset, ways, shots, queries), backbone, image shape, the dataset's normalisation and its
number of training classes, and provenance (run id, split, dataset fingerprint, profile, seed, code version).
It loads with ``torch.load(weights_only=True)``: plain containers and tensors, no pickled code.

:func:`load_run` rebuilds the method from the package alone (the method registry and the backbone table) and loads
the state::

    from benchmark import Episode, load_run

    method = load_run("results/protonet-omniglot-5w1s-conv4-quick-s0")
    logits = method.predict(Episode.from_tensors(support_x, support_y, query_x))  # [n_query, ways]

``python -m benchmark.evaluate`` (:mod:`benchmark.evaluate`) re-tests saved models on other episode sets.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..store.folders import RunFolder, model_path
from .guard import watching

FORMAT = 1  # model.pt layout version


class ModelError(Exception):
    """A run without a usable saved model; the message is one line for the user."""


class RestoredSampler:
    """The ``ctx.sampler`` of a restored method: it knows the training split's class count (e.g. TADAM's auxiliary
    head is that wide) and draws nothing, since a restored model is for testing."""

    def __init__(self, n_classes: int):
        self.n_classes = n_classes

    def episode(self, *args, **kwargs):
        raise RuntimeError("a model loaded with load_run has no training data; train it with benchmark.run")

    batch = episode


def model_payload(prepared, method) -> dict[str, Any]:
    """The contents of ``model.pt`` for ``prepared``'s run with ``method`` holding its best-validation state."""
    from .machine import code_version

    cfg, ds = prepared.cfg, prepared.dataset
    return {
        "format": FORMAT, "method": cfg.method, "method_origin": dict(prepared.cls.origin),
        "hyperparameters": dataclasses.asdict(prepared.hp),
        "hyperparameter_class": type(prepared.hp).__name__, "setting": dataclasses.asdict(prepared.setting),
        "backbone": cfg.backbone, "image_shape": list(ds.image_shape),
        "normalisation": {"mean": list(ds.mean), "std": list(ds.std)},
        "train_classes": len(ds.splits["train"]), "run_id": cfg.run_id, "dataset": cfg.dataset,
        "split": ds.split_name, "dataset_fingerprint": ds.fingerprint, "profile": cfg.profile, "seed": cfg.seed,
        "code_version": code_version(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in method.state_dict().items()},
    }


def read_model(run: str | Path) -> dict[str, Any]:
    """The saved payload of ``run`` (a run folder or its ``model.pt``, :func:`benchmark.store.folders.model_path`);
    :class:`ModelError` when there is none."""
    path = model_path(run)
    if not path.is_file():
        raise ModelError(f"{path.parent} has no saved model ({RunFolder.MODEL}): it is not a finished run, or it ran "
                         "with --no-save-model (or before models were saved); re-run it to keep one")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file; say which
        raise ModelError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else e!r}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path} is not a {RunFolder.MODEL} of format {FORMAT}")
    return payload


def info(payload: dict[str, Any]) -> dict[str, Any]:
    """Everything in a payload but the weights (``method.model_info`` of a loaded method)."""
    return {k: v for k, v in payload.items() if k != "state_dict"}


def rebuild(payload: dict[str, Any], device: str | torch.device = "cpu"):
    """The method of a ``model.pt`` payload, rebuilt from the registry and loaded with its state, in eval mode;
    ``method.model_info`` holds the payload's facts. Global random state is left as it was."""
    from ..kit.context import Context, Setting
    from . import registry

    device = torch.device(device)
    name = payload["method"]
    try:
        known = name in registry.registry()
    except registry.PluginError as e:
        raise ModelError(str(e)) from None
    if not known:
        raise ModelError(f"the saved model is a {name!r}, which this code's method registry does not have"
                         f"{_missing_plugin_hint(payload.get('method_origin') or {})}")
    cls = registry.registry()[name]
    setting = Setting(**payload["setting"])
    hp = cls.hyper(payload["profile"], setting)
    fields = {f.name for f in dataclasses.fields(hp)}
    unknown = sorted(set(payload["hyperparameters"]) - fields)
    if unknown:
        raise ModelError(f"the saved {name} has hyperparameters this code's {type(hp).__name__} lacks "
                         f"({', '.join(unknown)}); load it with the code version it was made with "
                         f"({payload.get('code_version')})")
    hp = dataclasses.replace(hp, **payload["hyperparameters"])
    ctx = Context(setting=setting, image_shape=tuple(payload["image_shape"]), backbone_name=payload["backbone"],
                  sampler=RestoredSampler(int(payload["train_classes"])), eval_seed=None, device=device,
                  seed=int(payload["seed"]), profile=payload["profile"], restoring=True)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        with watching(cls, "construction"):
            method = cls(hp, ctx).to(device)
    try:
        method.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise ModelError(f"the saved {name}'s weights do not fit this code's {name} "
                         f"({str(e).splitlines()[0]}); load it with the code version it was made with "
                         f"({payload.get('code_version')})") from None
    method.eval()
    method.model_info = info(payload)
    return method


def _missing_plugin_hint(origin: dict) -> str:
    """How to make an external method of a saved model known again."""
    from . import registry

    if origin.get("kind") == "entry_point":
        return f"; it came from {registry.describe(origin)}: install that package"
    if origin.get("kind") == "file":
        return (f"; it came from {registry.describe(origin)}: load it with --method-file {origin.get('path')} "
                f"(or ${registry.FILES_ENV}, or registry.load_files in Python)")
    return ""


def load_run(run: str | Path, device: str | torch.device = "cpu"):
    """Load a trained run: ``run`` is its folder (``results/<run-id>``) or its ``model.pt``. Returns the method
    (a :class:`methods.base.Method`, in eval mode) with its best-validation weights; call
    ``method.predict(Episode.from_tensors(support_x, support_y, query_x))`` for query logits ``[n_query, ways]``
    (``method.check_test_ways(ways)`` says whether a number of ways is possible). ``method.model_info``: method,
    hyperparameters, setting, backbone, image shape, normalisation and provenance. Raises :class:`ModelError`."""
    return rebuild(read_model(run), device)

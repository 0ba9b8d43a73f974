"""Vocabulary shared by the report's modules: the error type, the keys of a setting and of an entry, labels."""
from __future__ import annotations

import re


class ReportError(Exception):
    """A problem that stops the report; its message is one line for the user."""


#: ``split``: the dataset's named class split when it is not the dataset's default (e.g. ``lake`` for Omniglot's
#: background/evaluation split), else empty; runs of different splits are never aggregated or paired.
SETTING_KEYS = ["dataset", "ways", "shots", "queries", "backbone", "profile", "split"]
#: ``precision``: "fp32" or "bf16" (records older than the field: fp32); a bf16 entry is its own entry, labelled
#: "[bf16]", so it is never averaged with fp32 runs and its paired comparisons name it.
ENTRY_KEYS = SETTING_KEYS + ["method", "overrides", "test_fingerprint", "precision"]

FAMILY_LABEL = {"metric": "metric-based", "initialization": "initialization-based", "optimizer": "optimizer-based",
                "transfer": "transfer learning (fine-tuning)"}
#: the survey's three meta-learning families, then the transfer-learning baselines they are compared with; a copy of
#: ``benchmark.pipeline.registry.FAMILY_ORDER`` (the report imports only the store), held equal by tests/test_report.py
FAMILY_ORDER = ("metric", "initialization", "optimizer", "transfer")


def norm_dataset(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


#: The default split of each dataset that existed before runs recorded theirs (``split``, ``default_split`` in
#: ``summary.json``): a frozen copy of ``benchmark.data.DATASETS`` then, for older records (the report does not
#: import the data package).
LEGACY_DEFAULT_SPLITS = {"omniglot": "vinyals", "cifar-fs": "bertinetto", "fc100": "oreshkin", "miniimagenet": "ravi"}


def split_key(record: dict) -> str:
    """The ``split`` key of a run or evaluation record: its split's name, or empty for the dataset's default (also for
    records older than the split field, which all used the default)."""
    default = record.get("default_split") or LEGACY_DEFAULT_SPLITS.get(record.get("dataset"), "")
    split = record.get("split") or default
    return "" if split == default else split


def setting_label(dataset: str, ways: int, shots: int, split: str = "") -> str:
    data = f"{dataset} ({split} split)" if split else dataset
    return f"{data} {int(ways)}-way {int(shots)}-shot"


def short(fp: str | None, n: int = 12) -> str:
    return str(fp)[:n] if fp else "—"


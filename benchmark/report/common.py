"""Vocabulary shared by the report's modules: the error type, the keys of a setting and of an entry, labels."""
from __future__ import annotations

import re


class ReportError(Exception):
    """A problem that stops the report; its message is one line for the user."""


SETTING_KEYS = ["dataset", "ways", "shots", "queries", "backbone", "profile"]
ENTRY_KEYS = SETTING_KEYS + ["method", "overrides", "test_fingerprint"]

FAMILY_LABEL = {"metric": "metric-based", "initialization": "initialization-based", "optimizer": "optimizer-based"}
FAMILY_ORDER = ("metric", "initialization", "optimizer")


def norm_dataset(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def setting_label(dataset: str, ways: int, shots: int) -> str:
    return f"{dataset} {int(ways)}-way {int(shots)}-shot"


def short(fp: str | None, n: int = 12) -> str:
    return str(fp)[:n] if fp else "—"


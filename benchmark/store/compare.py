"""Whether two runs' records are identical, answered once for ``benchmark.check`` (same seed, resume),
``benchmark.gpu_check`` (determinism, resume) and the report (a run found in several results directories).

Records are compared as they are stored: per-episode test accuracies, the curve, and on request the summary, the
configuration and the per-episode seconds. NaN equals NaN.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from .folders import RunFolder

#: What :func:`records_differ` compares by default: the results two identical runs share (not their timings).
RESULTS = ("accuracy", "val_acc")


def first_difference(a, b, what: str) -> str | None:
    """None when the two sequences are identical, else where they first differ, in words."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return f"{what}: {len(a)} against {len(b)} values"
    bad = np.flatnonzero(~((a == b) | (np.isnan(a) & np.isnan(b))))
    if len(bad) == 0:
        return None
    i = int(bad[0])
    return f"{what} differ at {len(bad)} of {len(a)} (first: #{i}, {a[i]:.4f} against {b[i]:.4f})"


def read_records(folder: RunFolder) -> dict:
    """A finished run's records as :func:`records_differ` takes them."""
    return {"summary": folder.read_summary(), "config": folder.read_config(),
            "episodes": folder.read_test_episodes(), "curve": folder.read_curve()}


def _canon(d: dict) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def records_differ(a: dict, b: dict, full: bool = False) -> str | None:
    """None when the two runs' records (dicts of :func:`read_records`' keys) are identical, else the first
    difference in words. By default the results: per-episode test accuracies and validation accuracies of the
    curve. ``full``: also the summary, the configuration, the per-episode seconds and the whole curve (a copy of the
    same run)."""
    why = first_difference(a["episodes"]["accuracy"], b["episodes"]["accuracy"], "per-episode test accuracies")
    ca, cb = a["curve"], b["curve"]
    why = why or first_difference(ca["val_acc"] if "val_acc" in ca else [], cb["val_acc"] if "val_acc" in cb else [],
                                  "validation accuracies")
    if why or not full:
        return why
    if _canon(a["summary"]) != _canon(b["summary"]):
        return "summaries differ"
    if _canon(a["config"]) != _canon(b["config"]):
        return "configurations differ"
    sa = a["episodes"]["adapt_seconds"] if "adapt_seconds" in a["episodes"] else pd.Series(dtype=float)
    sb = b["episodes"]["adapt_seconds"] if "adapt_seconds" in b["episodes"] else pd.Series(dtype=float)
    why = first_difference(sa, sb, "per-episode seconds")
    if why:
        return why
    if ca.shape != cb.shape or list(ca.columns) != list(cb.columns) or not ca.equals(cb):
        return "curves differ"
    return None


def folders_differ(a: RunFolder, b: RunFolder, full: bool = False) -> str | None:
    """:func:`records_differ` of two finished run folders."""
    return records_differ(read_records(a), read_records(b), full)

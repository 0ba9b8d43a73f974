"""Whether two runs' records are identical, answered once for ``benchmark.check`` (same seed, resume),
``benchmark.gpu_check`` (determinism, resume) and the report (a run found in several results directories).

Records are compared as they are stored: per-episode test accuracies, the curve, and on request the summary, the
configuration and the per-episode seconds. NaN equals NaN. When two runs' results differ, the answer also says which
of the recorded facts their numbers depend on differ between them (:func:`provenance_differences`: device, CPU
instruction set, thread count, CPU model, library versions, code version), or that none of them does.

``python scripts/compare_runs.py RUN_A RUN_B`` compares two run folders from the command line.
"""
from __future__ import annotations

import json
import re

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


#: The recorded facts that decide, besides a run's configuration, whether another run of it gives bit-identical
#: numbers: (key of :func:`provenance`, label). The CPU's instruction set picks PyTorch's kernels (and so the rounding),
#: the thread count how sums are split, and the libraries' and code's versions the kernels and the code themselves.
PROVENANCE = (("device", "device"), ("gpu", "GPU"), ("cpu_capability", "CPU instruction set"),
              ("threads", "CPU threads"), ("cpu_model", "CPU model"), ("torch", "PyTorch"), ("onednn", "oneDNN"),
              ("mkl", "MKL"), ("blas", "BLAS"), ("lapack", "LAPACK"), ("openmp", "OpenMP"), ("cuda", "CUDA"),
              ("cudnn", "cuDNN"), ("numpy", "NumPy"), ("python", "Python"), ("deterministic", "deterministic"),
              ("code_version", "code version"))

_OLD_CPU_NAME = re.compile(r"^(.*) \(\d+ logical cores, \d+ threads\)$")


def provenance(summary: dict) -> dict:
    """The facts of :data:`PROVENANCE` as a run's ``summary.json`` records them (None: not recorded, as in records
    older than the field). Records from before ``cpu_model`` was recorded give the CPU model from their CPU
    ``device_name`` ("<model> (<n> logical cores, <t> threads)")."""
    env = summary.get("environment") or {}
    device = summary.get("device")
    cuda = str(device or "").startswith("cuda")
    out = {k: env.get(k) for k, _ in PROVENANCE}
    out.update(device=device, code_version=summary.get("code_version"), deterministic=summary.get("deterministic"),
               gpu=env.get("device_name") if cuda else None)
    if out["cpu_model"] is None and not cuda:
        m = _OLD_CPU_NAME.match(str(env.get("device_name") or ""))
        out["cpu_model"] = m.group(1) if m else None
    return out


def provenance_differences(a: dict, b: dict) -> list[str]:
    """The facts of :data:`PROVENANCE` in which two runs' summaries differ, in words ("CPU instruction set: AVX2
    against AVX512"; a fact one of them did not record: "... against not recorded"); empty when they agree wherever
    both recorded it. A fact neither recorded is left out."""
    pa, pb = provenance(a), provenance(b)
    out = []
    for k, label in PROVENANCE:
        va, vb = pa[k], pb[k]
        if va is None and vb is None or str(va) == str(vb):
            continue
        out.append(f"{label}: {'not recorded' if va is None else va} against {'not recorded' if vb is None else vb}")
    return out


def unrecorded(a: dict, b: dict) -> list[str]:
    """The labels of the facts of :data:`PROVENANCE` that neither summary records (older records)."""
    pa, pb = provenance(a), provenance(b)
    skip = {"gpu", "cuda", "cudnn"} if not str(pa["device"] or "").startswith("cuda") else set()
    return [label for k, label in PROVENANCE if pa[k] is None and pb[k] is None and k not in skip]


def explain(a: dict, b: dict) -> str:
    """Why two runs of one configuration may have given different numbers, from their summaries: the recorded facts
    that differ (:func:`provenance_differences`), or that none does (then the difference is not explained by what
    the runs recorded), naming any fact neither recorded."""
    diffs = provenance_differences(a, b)
    missing = unrecorded(a, b)
    gap = f" ({', '.join(missing)} not recorded)" if missing else ""
    if diffs:
        return "the runs differ in " + "; ".join(diffs) + gap
    return "the runs' recorded device, CPU, threads, libraries and code version are the same" + gap


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
    same run). When the results differ and both records have a summary, the answer goes on with
    :func:`explain` (which recorded facts differ between the runs)."""
    why = first_difference(a["episodes"]["accuracy"], b["episodes"]["accuracy"], "per-episode test accuracies")
    ca, cb = a["curve"], b["curve"]
    why = why or first_difference(ca["val_acc"] if "val_acc" in ca else [], cb["val_acc"] if "val_acc" in cb else [],
                                  "validation accuracies")
    if why and a.get("summary") is not None and b.get("summary") is not None:
        return f"{why}; {explain(a['summary'], b['summary'])}"
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


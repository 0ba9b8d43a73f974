"""Statistics shared by the runner, the evaluations and the report: a mean with its 95% confidence interval.

A leaf module (numpy only): it imports nothing from the harness, torch or the method registry, so the report
(:mod:`benchmark.report.stats`) can use it.
"""
from __future__ import annotations

import math

import numpy as np


def mean_ci95(acc: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and 95% confidence half-width, 1.96 * sd / sqrt(n) (sample sd, ddof=1), of per-episode accuracies."""
    a = np.asarray(acc, dtype=np.float64)
    if len(a) == 0:
        return math.nan, math.nan
    sd = a.std(ddof=1) if len(a) > 1 else 0.0
    return float(a.mean()), float(1.96 * sd / math.sqrt(len(a)))

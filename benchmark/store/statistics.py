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


#: How near chance (100 / ways %) a run's test accuracy must be to be flagged ``at_chance``: the mean within this many
#: points with a 95% interval of at most :data:`CHANCE_CI95` points, i.e. (nearly) every episode at chance.
CHANCE_MARGIN = 1.0
CHANCE_CI95 = 0.1


def at_chance(acc: np.ndarray | list[float], ways: int) -> bool:
    """Whether per-episode test accuracies (fractions in [0, 1]) are those of a model that guesses: every episode
    exactly at chance, 1 / ``ways`` (a model that predicts one class for every query, as a meta-learner whose
    parameters diverged to a constant output does), or the mean within :data:`CHANCE_MARGIN` points of it with a 95%
    interval of at most :data:`CHANCE_CI95` points. A run so flagged trained with a finite loss (a non-finite one
    fails the run) and learned nothing: ``summary.json``'s ``at_chance``, noted in the report ("diverged?")."""
    a = np.asarray(acc, dtype=np.float64)
    if len(a) == 0 or int(ways) < 1:
        return False
    chance = 1.0 / int(ways)
    if np.all(np.abs(a - chance) < 1e-9):
        return True
    mean, ci = mean_ci95(a)
    return abs(100 * mean - 100 * chance) <= CHANCE_MARGIN and 100 * ci <= CHANCE_CI95

"""Statistics behind the report: paired tests on per-episode accuracy, Holm's correction, ranks with ties, and
episode counts to accuracy thresholds. Pure functions of arrays and data frames (no files, no plotting).

Decisions (documented in the report and docs/reports.md):

* **Paired test**: two-sided paired t-test (``scipy.stats.ttest_rel``) on per-episode accuracy. Every method of a
  setting is tested on the same episodes (same ``test_fingerprint``), so episode ``i`` of one method is paired with
  episode ``i`` of the other. With several seeds the per-episode accuracy is first averaged over each method's seeds
  (the episode is the unit of replication; seed spread is reported separately as the sd of per-seed means).
  Degenerate cases: identical accuracies on every episode give p = 1; a constant non-zero difference gives p = 0.
* **Holm's step-down correction** over all pairs of methods within one setting (family-wise error rate ``alpha``).
* **Ranks with ties**: ``rank(m) = 1 + number of methods significantly better than m`` (Holm-adjusted p < alpha and a
  higher mean). Methods that no method beats significantly share rank 1, and two methods beaten by the same set of
  methods share a rank. Non-significance is not transitive: with A ~ B, B ~ C and A > C significant the ranks are
  A 1, B 1, C 2, so every rank table also lists, per method, the methods it is *not* significantly different from.
* **Seeds**: the tests see the variation over test episodes only. With fewer than :data:`MIN_SEEDS` seeds for an
  entry they compare trained models, not methods (another seed can move an entry by more than its CI), so nothing is
  set in bold and the report says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..store.statistics import mean_ci95

#: Seeds every compared entry needs before a significant difference is read as one between methods (and set in bold):
#: with fewer, the paired tests compare the trained models (one per seed), whose training variance they do not see.
MIN_SEEDS = 3

__all__ = ["MIN_SEEDS", "mean_ci95", "paired_t", "holm", "PairedResult", "paired_comparison", "first_reaching", "seed_curve"]


def paired_t(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sided paired t-test of ``a`` against ``b`` (same episodes): (t statistic, p value)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    d = a - b
    if len(d) < 2:
        return math.nan, math.nan
    if np.allclose(d, d[0], rtol=0.0, atol=1e-12):  # zero variance of the differences
        if abs(d[0]) <= 1e-12:
            return 0.0, 1.0
        return math.copysign(math.inf, d[0]), 0.0
    from scipy import stats  # imported here so that error paths of the CLI stay fast

    res = stats.ttest_rel(a, b)
    return float(res.statistic), float(res.pvalue)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p values (NaN counts as 1)."""
    p = np.asarray(pvalues, dtype=np.float64)
    p = np.where(np.isnan(p), 1.0, p)
    m = len(p)
    adj = np.empty(m)
    running = 0.0
    for k, idx in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (m - k) * p[idx]))
        adj[idx] = running
    return adj


@dataclass
class PairedResult:
    pairs: pd.DataFrame  # a, b, mean_a, mean_b, difference, t, p, p_holm, significant, n_episodes
    ranks: pd.DataFrame  # label, mean, rank, better_than, tied_with


def paired_comparison(acc: dict[str, np.ndarray], alpha: float = 0.05) -> PairedResult:
    """Paired t-tests between every pair of ``acc`` (label -> per-episode accuracy on the same episodes), Holm's
    correction across the pairs, and ranks with ties (see the module docstring). Pairs are ordered by mean
    (``a`` the higher), ties in mean keeping the order of ``acc``."""
    means = {k: float(np.mean(v)) for k, v in acc.items()}
    labels = sorted(acc, key=lambda k: -means[k])  # pairs (a, b) with a the higher mean: differences >= 0
    rows = []
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            t, p = paired_t(acc[a], acc[b])
            rows.append({"a": a, "b": b, "mean_a": means[a], "mean_b": means[b], "difference": means[a] - means[b],
                         "t": t, "p": p, "n_episodes": len(acc[a])})
    pairs = pd.DataFrame(rows, columns=["a", "b", "mean_a", "mean_b", "difference", "t", "p", "n_episodes"])
    pairs["p_holm"] = holm(pairs["p"].to_numpy()) if len(pairs) else []
    pairs["significant"] = pairs["p_holm"] < alpha
    pairs = pairs[["a", "b", "mean_a", "mean_b", "difference", "t", "p", "p_holm", "significant", "n_episodes"]]
    sig = {(r.a, r.b): bool(r.significant) for r in pairs.itertuples()}
    sig.update({(b, a): s for (a, b), s in list(sig.items())})
    rank_rows = []
    for m in labels:
        better = [o for o in labels if o != m and sig[(m, o)] and means[o] > means[m]]
        worse = [o for o in labels if o != m and sig[(m, o)] and means[o] < means[m]]
        tied = [o for o in labels if o != m and not sig[(m, o)]]
        rank_rows.append({"label": m, "mean": means[m], "rank": 1 + len(better), "better_than": worse,
                          "tied_with": tied})
    ranks = pd.DataFrame(rank_rows, columns=["label", "mean", "rank", "better_than", "tied_with"])
    ranks = ranks.sort_values(["rank", "mean"], ascending=[True, False], kind="stable", ignore_index=True)
    return PairedResult(pairs, ranks)


def seed_curve(curves: list[pd.DataFrame]) -> pd.DataFrame:
    """Mean validation curve over seeds, aligned on the training step: step, episodes, train_seconds, val_acc (mean),
    val_sd (sd over seeds, NaN for one seed), val_ci95 (mean of the runs' own CIs), n_seeds."""
    cols = ["step", "episodes", "train_seconds", "val_acc", "val_sd", "val_ci95", "n_seeds"]
    frames = [c[["step", "episodes", "train_seconds", "val_acc", "val_ci95"]].assign(seed_i=i)
              for i, c in enumerate(curves) if len(c) and {"step", "val_acc"} <= set(c.columns)]
    if not frames:
        return pd.DataFrame(columns=cols)
    df = pd.concat(frames, ignore_index=True)
    g = df.groupby("step", sort=True)
    out = pd.DataFrame({"episodes": g["episodes"].mean(), "train_seconds": g["train_seconds"].mean(),
                        "val_acc": g["val_acc"].mean(), "val_sd": g["val_acc"].std(ddof=1),
                        "val_ci95": g["val_ci95"].mean(), "n_seeds": g["val_acc"].size()}).reset_index()
    return out[cols]


def first_reaching(curve: pd.DataFrame, threshold: float) -> dict | None:
    """The first validation point of ``curve`` (seed-averaged, see :func:`seed_curve`) whose accuracy is at least
    ``threshold`` %: {step, episodes, train_seconds, val_acc}; None when never reached."""
    if not len(curve):
        return None
    hit = curve[curve["val_acc"] >= threshold - 1e-9]
    if not len(hit):
        return None
    r = hit.iloc[0]
    return {"step": int(r["step"]), "episodes": float(r["episodes"]), "train_seconds": float(r["train_seconds"]),
            "val_acc": float(r["val_acc"])}

"""Tables derived from the entries: paired statistics per setting, episode counts to accuracy thresholds, and
the shared cached artefacts the runs used."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .common import SETTING_KEYS, ReportError, norm_dataset, setting_label, short
from .entries import Entry
from .records import Evaluation, Run
from .stats import first_reaching, paired_comparison

#: Accuracy thresholds (%) for the episode-count table, per dataset; "*" for any other dataset.
DEFAULT_THRESHOLDS: dict[str, tuple[float, ...]] = {"omniglot": (50.0, 80.0, 90.0, 95.0), "*": (40.0, 50.0, 60.0, 70.0)}
FINAL_FRACTION = 0.95  # the extra column: 95% of the method's own final validation accuracy


@dataclass
class SettingStats:
    setting: tuple
    groups: list[tuple[str, list[Entry], object]]  # (fingerprint, entries, PairedResult)
    refusals: list[str]
    #: each entry's rank among the entries on its test episodes (entry :attr:`~benchmark.report.entries.Entry.ident`
    #: -> rank; see :func:`~benchmark.report.stats.paired_comparison`)
    ranks: dict[tuple, int] = field(default_factory=dict)


def paired_statistics(entries: list[Entry], alpha: float) -> list[SettingStats]:
    """Per setting: paired tests within each set of entries that share a test fingerprint, and each entry's rank
    among them; pairs across different fingerprints are refused (listed in ``refusals``)."""
    by_setting: dict[tuple, list[Entry]] = {}
    for e in entries:
        by_setting.setdefault(e.setting, []).append(e)
    out = []
    for setting, es in by_setting.items():
        by_fp: dict[str, list[Entry]] = {}
        for e in es:
            by_fp.setdefault(e.key["test_fingerprint"], []).append(e)
        groups, refusals, ranks = [], [], {}
        for fp, ges in by_fp.items():
            res = paired_comparison({e.label: e.accuracy for e in ges}, alpha)
            rank = dict(zip(res.ranks["label"], res.ranks["rank"]))
            ranks.update({e.ident: int(rank[e.label]) for e in ges})
            groups.append((fp, ges, res))
        fps = list(by_fp)
        for i, a in enumerate(fps):
            for b in fps[i + 1:]:
                ea, eb = by_fp[a], by_fp[b]
                refusals.append(
                    f"{setting_label(*setting[:3], setting[6])} ({setting[4]}, {setting[5]}): not paired: "
                    f"{', '.join(e.label for e in ea)} (test fingerprint {short(a)}, {len(ea[0].accuracy)} episodes) "
                    f"and {', '.join(e.label for e in eb)} (test fingerprint {short(b)}, {len(eb[0].accuracy)} "
                    "episodes) were tested on different episodes, so a per-episode paired test would compare "
                    "unrelated episodes; re-run them with the same --eval-seed and --test-episodes")
        out.append(SettingStats(setting, groups, refusals, ranks))
    return out


def entry_ranks(stats: list[SettingStats]) -> dict[tuple, int]:
    """Every entry's rank (:attr:`SettingStats.ranks` of all settings), by entry
    :attr:`~benchmark.report.entries.Entry.ident`."""
    return {k: v for st in stats for k, v in st.ranks.items()}


def setting_rows(table: pd.DataFrame, setting: tuple) -> pd.DataFrame:
    """The rows of a long table (columns :data:`~benchmark.report.common.SETTING_KEYS` among others) of one
    setting."""
    return table[(table[SETTING_KEYS].astype(str) == pd.Series(dict(zip(SETTING_KEYS, map(str, setting))))).all(axis=1)]


# ------------------------------------------------------------------------------------------------ thresholds
def parse_thresholds(items: list[str] | None) -> dict[str, tuple[float, ...]]:
    """Accuracy thresholds (%) per dataset ("*": any other) from the CLI: plain numbers (``50 80 90`` or ``50,80``)
    replace the defaults for every dataset; ``DATASET:50,80,90`` sets one dataset's. No items: the defaults
    (:data:`DEFAULT_THRESHOLDS`). Raises ReportError on bad input."""
    if not items:
        return dict(DEFAULT_THRESHOLDS)
    plain: list[float] = []
    per: dict[str, tuple[float, ...]] = {}
    for it in items:
        try:
            if ":" in it:
                ds, vals = it.split(":", 1)
                per[norm_dataset(ds)] = tuple(float(v) for v in vals.split(",") if v.strip())
            else:
                plain += [float(v) for v in it.split(",") if v.strip()]
        except ValueError:
            raise ReportError(f"--thresholds expects numbers in % (e.g. 50 80 90) or DATASET:50,80,90, got {it!r}") \
                from None
    for v in plain + [x for vs in per.values() for x in vs]:
        if not 0 < v <= 100:
            raise ReportError(f"--thresholds must lie in (0, 100] %, got {v:g}")
    out = {"*": tuple(plain)} if plain else dict(DEFAULT_THRESHOLDS)
    out.update(per)
    return out


def thresholds_for(thresholds: dict[str, tuple[float, ...]], dataset: str) -> tuple[float, ...]:
    return tuple(sorted(thresholds.get(norm_dataset(dataset), thresholds.get("*", ()))))


def episode_counts(entries: list[Entry], thresholds: dict[str, tuple[float, ...]]) -> pd.DataFrame:
    """Long table: one row per entry and target (fixed threshold or 95% of own final validation accuracy)."""
    rows = []
    for e in entries:
        c = e.curve
        final = float(c["val_acc"].iloc[-1]) if len(c) else math.nan
        best = float(c["val_acc"].max()) if len(c) else math.nan
        targets = [(f"{t:g}%", t) for t in thresholds_for(thresholds, e.key["dataset"])]
        targets.append((f"{FINAL_FRACTION:.0%} of final", FINAL_FRACTION * final))
        resolution = int(c["step"].diff().min()) if len(c) > 1 else (int(c["step"].iloc[0]) if len(c) else 0)
        every_ep = float(c["episodes"].diff().min()) if len(c) > 1 else (float(c["episodes"].iloc[0]) if len(c)
                                                                           else 0.0)
        for name, thr in targets:
            hit = first_reaching(c, thr) if not math.isnan(thr) else None
            rows.append({**{k: e.key[k] for k in SETTING_KEYS}, "method": e.label, "target": name,
                         "threshold": thr, "reached": hit is not None,
                         "train_episodes": hit["episodes"] if hit else math.nan,
                         "train_seconds": hit["train_seconds"] if hit else math.nan,
                         "step": hit["step"] if hit else math.nan, "val_acc_at": hit["val_acc"] if hit else math.nan,
                         "best_val_acc": best, "final_val_acc": final, "n_seeds": len(e.runs),
                         "val_every_steps": resolution, "val_every_episodes": every_ep})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ compute
#: At most this many common compute budgets per setting in the "accuracy at equal compute" table
MAX_BUDGETS = 5


def compute_curve(e: Entry) -> pd.DataFrame:
    """The entry's seed-averaged validation curve with ``flops``: cumulative meta-training FLOPs at each validation
    point (``flops_per_train_episode`` x meta-training episodes seen; forward and backward of training steps, no
    validation or test, no pretraining: no record holds a pretraining's FLOPs). Empty when the runs recorded no
    FLOPs (runs older than the count, methods that train no episodes)."""
    fpe = e.row["flops_per_train_episode"]
    if not len(e.curve) or fpe is None or math.isnan(fpe) or fpe <= 0:
        return e.curve.iloc[0:0].assign(flops=pd.Series(dtype=float))
    return e.curve.assign(flops=e.curve["episodes"].astype(float) * float(fpe))


def total_compute(e: Entry) -> float:
    """The meta-training FLOPs an entry's runs spent in all (mean over seeds): training episodes, or the last
    validation point's episodes if more, x FLOPs per training episode; NaN without a FLOP count."""
    c = compute_curve(e)
    if not len(c):
        return math.nan
    episodes = max(float(e.row["train_episodes"]) if not math.isnan(e.row["train_episodes"]) else 0.0,
                   float(e.curve["episodes"].max()))
    return episodes * float(e.row["flops_per_train_episode"])


def compute_budgets(entries: list[Entry], most: int = MAX_BUDGETS) -> list[float]:
    """Common compute budgets for a setting's entries: the powers of ten from the earliest validation point's FLOPs
    to the largest total spent (the ``most`` largest of them); where fewer than three powers of ten lie in that
    range, 1, 2 and 5 x 10^k instead."""
    firsts, totals = [], []
    for e in entries:
        c = compute_curve(e)
        c = c[c["flops"] > 0]
        if len(c):
            firsts.append(float(c["flops"].min()))
            totals.append(total_compute(e))
    if not firsts:
        return []
    lo, hi = min(firsts), max(totals)
    out = [10.0 ** k for k in range(math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9) + 1)]
    if len(out) < 3:
        out = sorted({m * 10.0 ** k for k in range(math.floor(math.log10(lo)), math.floor(math.log10(hi)) + 1)
                      for m in (1.0, 2.0, 5.0) if lo * (1 - 1e-9) <= m * 10.0 ** k <= hi * (1 + 1e-9)})
    return out[-most:]


def accuracy_at_compute(entries: list[Entry], budgets: list[float] | None = None) -> pd.DataFrame:
    """Long table "accuracy at equal compute": per entry (with a FLOP count) and budget (default
    :func:`compute_budgets` of each setting's entries), the seed-averaged validation accuracy of the last
    validation point at or below the budget (what the run had learnt with that much compute, to one validation
    interval). ``status``: "reached"; "not reached" where the run stopped before spending the budget (``total_flops``
    below it); "before first validation" where the budget lies below the first validation point."""
    cols = SETTING_KEYS + ["method", "budget_flops", "status", "val_acc", "at_flops", "at_episodes", "total_flops",
                           "flops_per_train_episode", "n_seeds"]
    by_setting: dict[tuple, list[Entry]] = {}
    for e in entries:
        by_setting.setdefault(e.setting, []).append(e)
    rows = []
    for setting, es in by_setting.items():
        bs = compute_budgets(es) if budgets is None else sorted(budgets)
        for e in es:
            c = compute_curve(e)
            if not len(c):
                continue
            total = total_compute(e)
            for b in bs:
                at = c[c["flops"] <= b * (1 + 1e-9)]
                status = "not reached" if total < b * (1 - 1e-9) else "reached" if len(at) else \
                    "before first validation"
                last = at.iloc[-1] if status == "reached" else None
                rows.append({**{k: e.key[k] for k in SETTING_KEYS}, "method": e.label, "budget_flops": b,
                             "status": status, "val_acc": float(last["val_acc"]) if last is not None else math.nan,
                             "at_flops": float(last["flops"]) if last is not None else math.nan,
                             "at_episodes": float(last["episodes"]) if last is not None else math.nan,
                             "total_flops": total, "flops_per_train_episode": float(e.row["flops_per_train_episode"]),
                             "n_seeds": len(e.runs)})
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------------------------ shared artefacts
def shared_artefacts(runs: list[Run]) -> pd.DataFrame:
    arts: dict[str, dict] = {}
    for r in runs:
        for c in r["cache"] or []:
            k = c.get("file") or c.get("name")
            a = arts.setdefault(k, {"artefact": c.get("name", k), "file": c.get("file", ""),
                                    "seconds": float(c.get("seconds") or 0.0), "computed_by": "", "used_by": []})
            a["used_by"].append(r.path.name)
            if c.get("computed_in_this_run"):
                a["computed_by"] = r.path.name
    df = pd.DataFrame(list(arts.values()), columns=["artefact", "file", "seconds", "computed_by", "used_by"])
    df["n_runs"] = df["used_by"].map(len)
    return df


# ------------------------------------------------------------------------------------------------ cross-evaluation
CROSS_COLUMNS = ["row", "method", "overrides", "trained_dataset", "trained_split", "trained_ways", "trained_shots",
                 "backbone", "profile", "column", "dataset", "split", "ways", "shots", "queries", "test_fingerprint",
                 "kind", "mean", "ci95", "n_episodes", "n_seeds", "rank", "tied_with", "seen_classes", "run_ids",
                 "evaluations"]


def cross_evaluation(entries: list[Entry], evaluations: list[Evaluation], alpha: float) -> pd.DataFrame:
    """One row per (trained entry, test episode set) for the entries with evaluations: the entry's own test and each
    re-test (per-episode accuracy averaged over the seeds evaluated), columns :data:`CROSS_COLUMNS`. Within one test
    episode set (one fingerprint) the rows are compared with the paired tests of the report (Holm over its pairs),
    giving ``rank``; rows on different episodes are never paired."""
    from .stats import mean_ci95

    index = {id(r): i for i, e in enumerate(entries) for r in e.runs}
    cells: dict[tuple, list] = {}
    for ev in evaluations:
        i = index.get(id(ev.run))
        if i is None:
            continue
        col = (ev["dataset"], ev["split"], int(ev["ways"]), int(ev["shots"]), int(ev["queries"]),
               ev["test_fingerprint"])
        cells.setdefault((i, col), []).append(ev)
    rows = []
    for i in sorted({i for i, _ in cells}):
        e = entries[i]
        k = e.key
        label = f"{e.label} — trained {setting_label(k['dataset'], k['ways'], k['shots'], k['split'])}, " \
                f"{k['backbone']}, {k['profile']}"
        if any(x is not e and x.label == e.label and x.key["dataset"] == k["dataset"] and x.key["split"] == k["split"]
               and (x.key["ways"], x.key["shots"], x.key["backbone"], x.key["profile"]) ==
               (k["ways"], k["shots"], k["backbone"], k["profile"]) for x in entries):
            label += f", tested {k['queries']} queries on episodes {short(k['test_fingerprint'], 8)}"
        base = {"row": label,
                "method": e.label, "overrides": k["overrides"], "trained_dataset": k["dataset"],
                "trained_split": k["split"], "trained_ways": int(k["ways"]), "trained_shots": int(k["shots"]),
                "backbone": k["backbone"], "profile": k["profile"]}
        own = (k["dataset"], k["split"], int(k["ways"]), int(k["shots"]), int(k["queries"]), k["test_fingerprint"])
        if (i, own) not in cells:
            rows.append({**base, **_cell(own), "kind": "own test", "acc": e.accuracy, "n_seeds": len(e.runs),
                         "seen_classes": 0, "run_ids": " ".join(r.path.name for r in e.runs), "evaluations": ""})
        for (j, col), evs in cells.items():
            if j != i:
                continue
            seen = [ev["test_classes_seen_in_training"] for ev in evs]
            rows.append({**base, **_cell(col), "kind": "evaluation",
                         "acc": np.mean([ev.accuracy for ev in evs], axis=0), "n_seeds": len(evs),
                         "seen_classes": max((s for s in seen if s is not None), default=None),
                         "run_ids": " ".join(ev.run.path.name for ev in evs),
                         "evaluations": " ".join(str(ev["eval_id"]) for ev in evs)})
    for r in rows:
        r["mean"], r["ci95"] = mean_ci95(r["acc"])
        r["n_episodes"] = len(r["acc"])
    for fp in dict.fromkeys(r["test_fingerprint"] for r in rows):
        group = [r for r in rows if r["test_fingerprint"] == fp]
        if len({len(r["acc"]) for r in group}) != 1:
            raise ReportError(f"records with test fingerprint {short(fp)} differ in episode count")
        res = paired_comparison({r["row"]: r["acc"] for r in group}, alpha)
        ranks = res.ranks.set_index("label")
        for r in group:
            r["rank"] = int(ranks.loc[r["row"], "rank"])
            r["tied_with"] = "; ".join(ranks.loc[r["row"], "tied_with"])
    return pd.DataFrame(rows, columns=CROSS_COLUMNS)


def _cell(col: tuple) -> dict:
    dataset, split, ways, shots, queries, fp = col
    return {"column": f"{setting_label(dataset, ways, shots, split)}, {queries} queries, episodes {short(fp, 8)}",
            "dataset": dataset, "split": split, "ways": ways, "shots": shots, "queries": queries,
            "test_fingerprint": fp}

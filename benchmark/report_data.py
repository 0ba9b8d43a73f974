"""The report's data: run records read from a results directory, published figures, and every table as a pandas
DataFrame (rendering is :mod:`benchmark.report_render`'s job). Nothing here trains or evaluates anything.

Aggregation: runs that share method, hyperparameter overrides, dataset, ways, shots, test queries, backbone, profile
and test-episode fingerprint form one *entry* (one leaderboard row); its seeds are its runs. The entry's per-episode
accuracy is the mean over its seeds on each (shared) test episode; ``mean`` and ``ci95`` (1.96 sd / sqrt(n)) are taken
over those episodes, and ``seed_sd`` is the sd (ddof 1) of the per-seed mean accuracies.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from .report_stats import first_reaching, mean_ci95, paired_comparison, seed_curve


class ReportError(Exception):
    """A problem that stops the report; its message is one line for the user."""


# ------------------------------------------------------------------------------------------------ constants
SETTING_KEYS = ["dataset", "ways", "shots", "queries", "backbone", "profile"]
ENTRY_KEYS = SETTING_KEYS + ["method", "overrides", "test_fingerprint"]

#: Column order of ``leaderboard.csv`` (one row per entry; stable: append new columns at the end only).
REPORT_LEADERBOARD_COLUMNS = [
    "method", "variant_of", "family", "overrides", "dataset", "ways", "shots", "queries", "backbone", "profile",
    "mean", "ci95", "n_episodes", "n_seeds", "seeds", "seed_sd", "rank",
    "published", "published_ci95", "published_source", "published_comparable", "protocol_differences", "difference",
    "train_episodes", "train_seconds", "ms_per_train_episode", "ms_per_test_episode", "peak_memory_mb", "memory_kind",
    "trainable_params", "adapted_params", "shared_seconds",
    "device", "test_fingerprint", "dataset_fingerprint", "code_version", "run_ids",
]

#: Accuracy thresholds (%) for the episode-count table, per dataset; "*" for any other dataset.
DEFAULT_THRESHOLDS: dict[str, tuple[float, ...]] = {"omniglot": (50.0, 80.0, 90.0, 95.0), "*": (40.0, 50.0, 60.0, 70.0)}
FINAL_FRACTION = 0.95  # the extra column: 95% of the method's own final validation accuracy

FAMILY_LABEL = {"metric": "metric-based", "initialization": "initialization-based", "optimizer": "optimizer-based"}
FAMILY_ORDER = ("metric", "initialization", "optimizer")

#: Test protocol of the published figures, where the reference records it (benchmark/reference/README.md:
#: "MAML and MTL report 1 query per class, ProtoNets 15"; ProtoNets used 1000 test episodes on Omniglot).
PUBLISHED_TEST_QUERIES = {"maml": 1, "mtl": 1, "protonet": 15}
PUBLISHED_TEST_EPISODES = {("protonet", "omniglot"): 1000}
PUBLISHED_CONV4_FILTERS = 64  # "conv4" in the reference is a 4-layer conv net; 64 filters unless its note says 32

REQUIRED_FILES = ("summary.json", "test_episodes.csv", "curve.csv")


def norm_dataset(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def setting_label(dataset: str, ways: int, shots: int) -> str:
    return f"{dataset} {int(ways)}-way {int(shots)}-shot"


def short(fp: str | None, n: int = 12) -> str:
    return str(fp)[:n] if fp else "—"


# ------------------------------------------------------------------------------------------------ loading
@dataclass
class Run:
    path: Path
    summary: dict
    config: dict
    accuracy: np.ndarray  # per test episode, in %
    adapt_seconds: np.ndarray
    curve: pd.DataFrame

    def __getitem__(self, k):
        return self.summary.get(k)


@dataclass
class Runs:
    runs: list[Run]
    notes: list[str] = field(default_factory=list)


def _overrides_text(config: dict) -> str:
    ov = config.get("overrides") or []
    return " ".join(f"{k}={v}" for k, v in ov)


def load_runs(results_dir: Path, run_ids: list[str] | None = None) -> Runs:
    """Finished runs under ``results_dir`` (only ``run_ids`` when given). ``*.partial`` folders are ignored with a
    note; a finished folder missing a file or with unreadable records raises :class:`ReportError`."""
    results_dir = Path(results_dir)
    if not results_dir.exists():
        raise ReportError(f"results directory {results_dir} does not exist; run python -m benchmark.run first "
                          "or pass --results-dir")
    if not results_dir.is_dir():
        raise ReportError(f"results directory {results_dir} is not a folder")
    notes = []
    partial = sorted(p.name for p in results_dir.iterdir() if p.is_dir() and p.name.endswith(".partial"))
    if partial:
        notes.append(f"{len(partial)} unfinished run(s) ignored ({', '.join(partial)}); the same benchmark.run "
                     "command resumes them")
    dirs = sorted(p for p in results_dir.iterdir() if p.is_dir() and not p.name.endswith(".partial")
                  and p.name != "cache" and not p.name.startswith("."))
    if run_ids is not None:
        wanted = set(run_ids)
        dirs = [d for d in dirs if d.name in wanted]
    runs = []
    for d in dirs:
        present = [f for f in REQUIRED_FILES if (d / f).is_file()]
        if not present:
            continue  # not a run folder
        missing = [f for f in REQUIRED_FILES if f not in present]
        if missing:
            raise ReportError(f"run folder {d} is incomplete (missing {', '.join(missing)}); a finished run has "
                              f"{', '.join(REQUIRED_FILES)}: delete the folder and re-run it")
        try:
            summary = json.loads((d / "summary.json").read_text())
            config = json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else {}
            ep = pd.read_csv(d / "test_episodes.csv")
            try:
                curve = pd.read_csv(d / "curve.csv")
            except pd.errors.EmptyDataError:
                curve = pd.DataFrame()
        except (OSError, ValueError, pd.errors.ParserError) as e:
            raise ReportError(f"cannot read the records of {d}: {str(e).splitlines()[0] if str(e) else e!r}") from None
        need = ("method", "dataset", "ways", "shots", "backbone", "profile", "seed", "test_fingerprint")
        lacking = [k for k in need if summary.get(k) is None]
        if lacking or "accuracy" not in ep.columns:
            raise ReportError(f"records of {d} lack {', '.join(lacking) or 'the accuracy column'}; "
                              "were they written by benchmark.run?")
        acc = 100.0 * ep["accuracy"].to_numpy(dtype=np.float64)
        if summary.get("n_episodes") is not None and len(acc) != int(summary["n_episodes"]):
            raise ReportError(f"run folder {d} is inconsistent: test_episodes.csv has {len(acc)} rows, summary.json "
                              f"says {summary['n_episodes']} episodes")
        summary.setdefault("queries", config.get("queries", 15))
        summary["overrides"] = _overrides_text(config)
        runs.append(Run(d, summary, config, acc,
                        ep["adapt_seconds"].to_numpy(dtype=np.float64) if "adapt_seconds" in ep else np.array([]),
                        curve))
    if not runs:
        where = f"{results_dir}" + (f" among the runs {', '.join(run_ids)}" if run_ids is not None else "")
        extra = f" ({len(partial)} unfinished *.partial run(s) ignored: resume them with the same benchmark.run " \
                "command)" if partial else ""
        raise ReportError(f"no finished runs in {where}{extra}; run python -m benchmark.run first")
    # duplicate seeds of one entry: keep the latest finished
    seen: dict[tuple, Run] = {}
    for r in sorted(runs, key=lambda r: str(r["finished_at"] or "")):
        key = tuple(r[k] for k in ENTRY_KEYS) + (r["seed"],)
        if key in seen:
            notes.append(f"run {seen[key].path.name} ignored: {r.path.name} has the same method, setting, "
                         "overrides and seed and finished later")
        seen[key] = r
    runs = [r for r in runs if seen[tuple(r[k] for k in ENTRY_KEYS) + (r["seed"],)] is r]
    return Runs(runs, notes)


# ------------------------------------------------------------------------------------------------ methods
@dataclass
class MethodInfo:
    name: str
    family: str
    idea: str
    paper: str
    variant_of: str | None
    adapts_at_test: bool
    metric_facts: dict | None
    registered: bool
    order: int


def method_infos(names: list[str], summary_family: dict[str, str]) -> dict[str, MethodInfo]:
    """Registry facts for every registered method plus ``names`` (methods in the results but not registered get
    their family from the run summary and are sorted last)."""
    try:
        import methods

        reg = methods.registry()
    except Exception:  # a broken method module must not stop the report from the records
        reg = {}
    out: dict[str, MethodInfo] = {}
    for i, (n, c) in enumerate(reg.items()):
        out[n] = MethodInfo(n, c.family, c.idea, c.paper, c.variant_of, bool(c.adapts_at_test), c.metric_facts,
                            True, i)
    mains = {n for n, m in out.items() if m.variant_of is None} | set(load_reference()["method"])
    for j, n in enumerate(sorted(set(names) - set(out))):
        prefix = n.split("-")[0]
        variant_of = prefix if prefix != n and prefix in mains else None
        out[n] = MethodInfo(n, summary_family.get(n, ""), "", "", variant_of, False, None, False, 1000 + j)
    return out


# ------------------------------------------------------------------------------------------------ reference
def _ref_file(name: str):
    return resources.files("benchmark").joinpath("reference", name)


def load_reference() -> pd.DataFrame:
    with _ref_file("paper_results.csv").open("r") as f:
        df = pd.read_csv(f, dtype={"note": str, "source": str})
    df["note"] = df["note"].fillna("")
    df["dataset_key"] = df["dataset"].map(norm_dataset)
    return df


def load_survey() -> pd.DataFrame:
    with _ref_file("survey_table1.csv").open("r") as f:
        return pd.read_csv(f)


def survey_figure(survey: pd.DataFrame, method: str, dataset: str, ways: int, shots: int) -> float | None:
    col = f"{norm_dataset(dataset)}_{int(ways)}w{int(shots)}s"
    row = survey[survey["method"] == method]
    if not len(row) or col not in survey.columns or pd.isna(row.iloc[0][col]):
        return None
    return float(row.iloc[0][col])


_ABLATION = re.compile(r"without\s+([A-Za-z0-9]+)\s+(\d+(?:\.\d+)?)", re.I)


def published_figure(ref: pd.DataFrame, survey: pd.DataFrame, info: MethodInfo, dataset: str, ways: int,
                     shots: int) -> dict | None:
    """The published figure for an entry: {accuracy, ci95, source, note, backbone, ref_method, ablation}.

    Main methods: the reference row of the same name. Variants: only an ablation figure from the main method's
    reference note, matched by name: variant ``<main>-no<x>`` <-> note "without <X> <figure>" (e.g. mtl-noht <->
    "without HT 60.2"); other variants have no published figure. Where the reference has no row but the survey's
    Table 1 has a figure, that figure is used with the survey as its source."""
    main = info.variant_of or info.name
    rows = ref[(ref["method"] == main) & (ref["dataset_key"] == norm_dataset(dataset)) & (ref["ways"] == int(ways))
               & (ref["shots"] == int(shots))]
    if info.variant_of:
        suffix = info.name[len(main) + 1:] if info.name.startswith(main + "-") else info.name
        if not len(rows) or not suffix.lower().startswith("no"):
            return None
        r = rows.iloc[0]
        for label, fig in _ABLATION.findall(r["note"]):
            if label.lower() == suffix[2:].lower():
                return {"accuracy": float(fig), "ci95": math.nan,
                        "source": f"{r['source']} (ablation: without {label})",
                        "note": r["note"], "backbone": r["backbone"], "ref_method": main, "ablation": label}
        return None
    if len(rows):
        r = rows.iloc[0]
        return {"accuracy": float(r["accuracy"]), "ci95": float(r["ci95"]) if pd.notna(r["ci95"]) else math.nan,
                "source": r["source"], "note": r["note"], "backbone": r["backbone"], "ref_method": main,
                "ablation": None}
    fig = survey_figure(survey, main, dataset, ways, shots)
    if fig is not None:
        return {"accuracy": fig, "ci95": math.nan, "source": "survey Table 1", "note": "", "backbone": None,
                "ref_method": main, "ablation": None}
    return None


def _our_backbone(name: str) -> tuple[str, object]:
    try:
        from .backbones import BACKBONES
    except Exception:
        BACKBONES = {}
    cfg = BACKBONES.get(name)
    if cfg is None:
        return name, None
    return cfg.kind, (cfg.width if cfg.kind == "conv4" else tuple(cfg.widths))


def protocol_differences(pub: dict, dataset: str, queries: int, n_episodes: int, backbone: str) -> list[str]:
    """Known ways in which the published figure's test protocol differs from ours (empty: same as far as the
    reference records). Backbone: kind and width (conv4 filters, ResNet-12 widths); queries per class; episodes."""
    diffs = []
    if pub.get("backbone"):
        ref_kind = str(pub["backbone"])
        ours_kind, ours_width = _our_backbone(backbone)
        if ref_kind == "conv4":
            m = re.search(r"(\d+)\s*filters", pub["note"])
            ref_width = int(m.group(1)) if m else PUBLISHED_CONV4_FILTERS
            if ours_kind != "conv4" or ours_width != ref_width:
                ours = f"{backbone}" + (f" ({ours_width} filters)" if ours_kind == "conv4" else "")
                diffs.append(f"backbone: paper conv4 with {ref_width} filters, ours {ours}")
        elif ref_kind == "resnet12":
            ours_ok = ours_kind == "resnet12" and ours_width == _our_backbone("resnet12")[1]
            if not ours_ok:
                diffs.append(f"backbone: paper resnet12 (64-160-320-640), ours {backbone}")
        elif ref_kind != backbone:
            diffs.append(f"backbone: paper {ref_kind}, ours {backbone}")
    q = PUBLISHED_TEST_QUERIES.get(pub["ref_method"])
    if q is not None and int(q) != int(queries):
        diffs.append(f"queries: paper {q} per class, ours {queries}")
    m = re.search(r"(\d+)\s*test episodes", pub["note"])
    e = int(m.group(1)) if m else PUBLISHED_TEST_EPISODES.get((pub["ref_method"], norm_dataset(dataset)))
    if e is not None and int(e) != int(n_episodes):
        diffs.append(f"test episodes: paper {e}, ours {n_episodes}")
    return diffs


# ------------------------------------------------------------------------------------------------ entries
@dataclass
class Entry:
    key: dict
    runs: list[Run]
    info: MethodInfo
    accuracy: np.ndarray  # seed-averaged per-episode accuracy, %
    curve: pd.DataFrame  # seed-averaged validation curve
    row: dict  # leaderboard row

    @property
    def label(self) -> str:
        ov = self.key["overrides"]
        return self.key["method"] + (f" [{ov}]" if ov else "")

    @property
    def setting(self) -> tuple:
        return tuple(self.key[k] for k in SETTING_KEYS)


def _join(vals) -> str:
    out = []
    for v in vals:
        if v is not None and str(v) not in out:
            out.append(str(v))
    return ";".join(out)


def build_entries(runs: list[Run]) -> list[Entry]:
    infos = method_infos(sorted({r["method"] for r in runs}), {r["method"]: r["family"] for r in runs})
    ref, survey = load_reference(), load_survey()
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(tuple(r[k] for k in ENTRY_KEYS), []).append(r)
    entries = []
    for key_t, rs in groups.items():
        rs = sorted(rs, key=lambda r: int(r["seed"]))
        key = dict(zip(ENTRY_KEYS, key_t))
        info = infos[key["method"]]
        lengths = {len(r.accuracy) for r in rs}
        if len(lengths) != 1:  # same fingerprint implies the same episodes; guard against hand-edited records
            raise ReportError(f"runs {', '.join(r.path.name for r in rs)} share a test fingerprint but differ in "
                              "episode count")
        acc = np.mean([r.accuracy for r in rs], axis=0)
        mean, ci = mean_ci95(acc)
        seed_means = [float(np.mean(r.accuracy)) for r in rs]
        pub = published_figure(ref, survey, info, key["dataset"], key["ways"], key["shots"])
        diffs = protocol_differences(pub, key["dataset"], key["queries"], len(acc), key["backbone"]) if pub else []
        caches = {c.get("file") or c.get("name"): float(c.get("seconds") or 0.0)
                  for r in rs for c in (r["cache"] or [])}

        def avg(k):
            vals = [float(r[k]) for r in rs if r[k] is not None]
            return float(np.mean(vals)) if vals else math.nan

        row = {
            "method": key["method"], "variant_of": info.variant_of or "", "family": info.family or rs[0]["family"],
            "overrides": key["overrides"], "dataset": key["dataset"], "ways": int(key["ways"]),
            "shots": int(key["shots"]), "queries": int(key["queries"]), "backbone": key["backbone"],
            "profile": key["profile"], "mean": mean, "ci95": ci, "n_episodes": len(acc), "n_seeds": len(rs),
            "seeds": " ".join(str(r["seed"]) for r in rs),
            "seed_sd": float(np.std(seed_means, ddof=1)) if len(rs) > 1 else math.nan, "rank": math.nan,
            "published": pub["accuracy"] if pub else math.nan, "published_ci95": pub["ci95"] if pub else math.nan,
            "published_source": pub["source"] if pub else "",
            "published_comparable": (not diffs) if pub else None, "protocol_differences": "; ".join(diffs),
            "difference": mean - pub["accuracy"] if pub else math.nan,
            "train_episodes": avg("train_episodes"), "train_seconds": avg("train_seconds"),
            "ms_per_train_episode": avg("ms_per_train_episode"), "ms_per_test_episode": avg("ms_per_test_episode"),
            "peak_memory_mb": max((float(r["peak_memory_mb"]) for r in rs if r["peak_memory_mb"] is not None),
                                  default=math.nan),
            "memory_kind": _join(r["memory_kind"] for r in rs),
            "trainable_params": _join(r["trainable_params"] for r in rs),
            "adapted_params": _join(r["adapted_params"] for r in rs),
            "shared_seconds": sum(caches.values()) if caches else 0.0,
            "device": _join(r["device"] for r in rs), "test_fingerprint": key["test_fingerprint"],
            "dataset_fingerprint": _join(r["dataset_fingerprint"] for r in rs),
            "code_version": _join(r["code_version"] for r in rs), "run_ids": " ".join(r.path.name for r in rs),
        }
        row["_published"] = pub
        entries.append(Entry(key, rs, info, acc, seed_curve([r.curve for r in rs]), row))
    entries.sort(key=lambda e: (norm_dataset(e.key["dataset"]), e.key["ways"], e.key["shots"], e.key["queries"],
                                e.key["backbone"], e.key["profile"], e.info.order, e.key["overrides"],
                                e.key["test_fingerprint"]))
    return entries


# ------------------------------------------------------------------------------------------------ paired statistics
@dataclass
class SettingStats:
    setting: tuple
    groups: list[tuple[str, list[Entry], object]]  # (fingerprint, entries, PairedResult)
    refusals: list[str]


def paired_statistics(entries: list[Entry], alpha: float) -> list[SettingStats]:
    """Per setting: paired tests within each set of entries that share a test fingerprint; pairs across different
    fingerprints are refused (listed in ``refusals``)."""
    by_setting: dict[tuple, list[Entry]] = {}
    for e in entries:
        by_setting.setdefault(e.setting, []).append(e)
    out = []
    for setting, es in by_setting.items():
        by_fp: dict[str, list[Entry]] = {}
        for e in es:
            by_fp.setdefault(e.key["test_fingerprint"], []).append(e)
        groups, refusals = [], []
        for fp, ges in by_fp.items():
            res = paired_comparison({e.label: e.accuracy for e in ges}, alpha)
            rank = dict(zip(res.ranks["label"], res.ranks["rank"]))
            for e in ges:
                e.row["rank"] = int(rank[e.label])
            groups.append((fp, ges, res))
        fps = list(by_fp)
        for i, a in enumerate(fps):
            for b in fps[i + 1:]:
                ea, eb = by_fp[a], by_fp[b]
                refusals.append(
                    f"{setting_label(*setting[:3])} ({setting[4]}, {setting[5]}): not paired: "
                    f"{', '.join(e.label for e in ea)} (test fingerprint {short(a)}, {len(ea[0].accuracy)} episodes) "
                    f"and {', '.join(e.label for e in eb)} (test fingerprint {short(b)}, {len(eb[0].accuracy)} "
                    "episodes) were tested on different episodes, so a per-episode paired test would compare "
                    "unrelated episodes; re-run them with the same --eval-seed and --test-episodes")
        out.append(SettingStats(setting, groups, refusals))
    return out


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
        for name, thr in targets:
            hit = first_reaching(c, thr) if not math.isnan(thr) else None
            rows.append({**{k: e.key[k] for k in SETTING_KEYS}, "method": e.label, "target": name,
                         "threshold": thr, "reached": hit is not None,
                         "train_episodes": hit["episodes"] if hit else math.nan,
                         "train_seconds": hit["train_seconds"] if hit else math.nan,
                         "step": hit["step"] if hit else math.nan, "val_acc_at": hit["val_acc"] if hit else math.nan,
                         "best_val_acc": best, "final_val_acc": final, "n_seeds": len(e.runs),
                         "val_every_steps": resolution})
    return pd.DataFrame(rows)


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

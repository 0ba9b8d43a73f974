"""Published figures (``benchmark/reference/``) and the known ways their protocol differs from a run's: backbone,
test queries, test episodes and the hyperparameters the reference records (e.g. Matching Networks' FCE)."""
from __future__ import annotations

import ast
import math
import re
from importlib import resources

import pandas as pd

from ..store.spread import SEED_SPREAD_COLUMNS
from .common import norm_dataset
from .records import MethodInfo

#: Test protocol of the published figures, where the reference records it (benchmark/reference/README.md:
#: "MAML and MTL report 1 query per class, ProtoNets 15"; ProtoNets used 1000 test episodes on Omniglot).
PUBLISHED_TEST_QUERIES = {"maml": 1, "mtl": 1, "protonet": 15}
PUBLISHED_TEST_EPISODES = {("protonet", "omniglot"): 1000}
PUBLISHED_CONV4_FILTERS = 64  # "conv4" in the reference is a 4-layer conv net; 64 filters unless its note says 32
PUBLISHED_RESNET12_WIDTHS = (64, 160, 320, 640)  # "resnet12" in the reference


def _ref_file(name: str):
    return resources.files("benchmark").joinpath("reference", name)


def load_reference() -> pd.DataFrame:
    with _ref_file("paper_results.csv").open("r") as f:
        df = pd.read_csv(f, dtype={"note": str, "source": str, "hyperparameters": str})
    df["note"] = df["note"].fillna("")
    df["hyperparameters"] = df["hyperparameters"].fillna("")
    df["dataset_key"] = df["dataset"].map(norm_dataset)
    return df


def load_survey() -> pd.DataFrame:
    """The survey's Table 1 (``survey_table1.csv``): its 16 rows in the survey's order. ``method``: this project's
    method, or a short name for a row it does not implement (``implemented`` False); ``name`` the survey's name in
    English; ``family`` and ``idea`` this project's English translation of the survey's cells (empty strings where a
    cell is empty)."""
    with _ref_file("survey_table1.csv").open("r") as f:
        df = pd.read_csv(f, dtype={"family": str, "idea": str, "name": str, "implemented": str, "note": str})
    for c in ("family", "idea", "name", "note"):
        df[c] = df[c].fillna("") if c in df.columns else ""
    df["name"] = df["name"].where(df["name"] != "", df["method"])
    df["implemented"] = df["implemented"].fillna("yes").str.lower().eq("yes") if "implemented" in df.columns \
        else True
    return df


def load_survey_table2() -> pd.DataFrame:
    """The survey's Table 2 (``survey_table2.csv``), translated: method, name, support and query embedding,
    distance, strengths, shortcomings, note (empty strings where a cell is empty); an empty frame when the file is
    absent (an older copy of the reference)."""
    return _text_table("survey_table2.csv", ["method", "name", "support_embedding", "query_embedding", "distance",
                                             "strengths", "shortcomings", "note"])


def _text_table(name: str, cols: list[str]) -> pd.DataFrame:
    """A reference file of text cells, its columns ``cols`` (empty strings where a cell is empty); an empty frame
    when the file is absent (an older copy of the reference)."""
    try:
        with _ref_file(name).open("r") as f:
            df = pd.read_csv(f, dtype=str)
    except FileNotFoundError:
        return pd.DataFrame(columns=cols)
    return df.reindex(columns=cols).fillna("")


def load_seed_spread() -> pd.DataFrame:
    """This project's measured training variance (``seed_spread.csv``, columns
    :data:`~benchmark.store.spread.SEED_SPREAD_COLUMNS`): per method and setting, the sd of the per-seed mean test
    accuracies (points) over ``n_seeds`` seeds; an empty frame when the file is absent or has no rows yet."""
    try:
        with _ref_file("seed_spread.csv").open("r") as f:
            df = pd.read_csv(f, dtype={"seeds": str, "source": str})
    except FileNotFoundError:
        return pd.DataFrame(columns=SEED_SPREAD_COLUMNS)
    return df.reindex(columns=SEED_SPREAD_COLUMNS)


def measured_spread(table: pd.DataFrame, method: str, dataset: str, ways: int, shots: int, profile: str,
                    backbone: str) -> dict | None:
    """The row of ``table`` (:func:`load_seed_spread`) for this method and setting as {seed_sd, n_seeds, source},
    or None when the table has none (the spread depends on the training budget, so only the same profile
    counts)."""
    if not len(table):
        return None
    hit = table[(table["method"].astype(str) == str(method))
                & (table["dataset"].map(norm_dataset) == norm_dataset(dataset))
                & (pd.to_numeric(table["ways"], errors="coerce") == int(ways))
                & (pd.to_numeric(table["shots"], errors="coerce") == int(shots))
                & (table["profile"].astype(str) == str(profile)) & (table["backbone"].astype(str) == str(backbone))]
    hit = hit[pd.to_numeric(hit["seed_sd"], errors="coerce").notna()]
    if not len(hit):
        return None
    r = hit.iloc[-1]
    return {"seed_sd": float(r["seed_sd"]), "n_seeds": int(r["n_seeds"]), "source": str(r["source"])}
def load_survey_remarks() -> pd.DataFrame:
    """The survey's remarks on the non-metric methods this project runs (``survey_remarks.csv``): method, section,
    kind (strength, shortcoming or remark) and the remark translated; empty when the file is absent."""
    return _text_table("survey_remarks.csv", ["method", "section", "kind", "remark"])


_SURVEY_COLUMN = re.compile(r"^([a-z0-9]+)_(\d+)w(\d+)s$")


def survey_settings(survey: pd.DataFrame) -> list[tuple[str, int, int, str]]:
    """The survey's setting columns, in its order, as (dataset, ways, shots, split) with the default split ("")."""
    out = []
    for c in survey.columns:
        m = _SURVEY_COLUMN.match(c)
        if m:
            out.append((m.group(1), int(m.group(2)), int(m.group(3)), ""))
    return out


def survey_figure(survey: pd.DataFrame, method: str, dataset: str, ways: int, shots: int) -> float | None:
    col = f"{norm_dataset(dataset)}_{int(ways)}w{int(shots)}s"
    row = survey[survey["method"] == method]
    if not len(row) or col not in survey.columns or pd.isna(row.iloc[0][col]):
        return None
    return float(row.iloc[0][col])


_ABLATION = re.compile(r"without\s+([A-Za-z0-9]+)\s+(\d+(?:\.\d+)?)", re.I)


def parse_hyperparameters(text) -> dict:
    """The reference's ``hyperparameters`` cell, ``name=value`` pairs separated by ``;`` (values as Python literals,
    else text), as a dict; empty for an empty cell."""
    out = {}
    for part in str(text if isinstance(text, str) else "").split(";"):
        if "=" in part:
            k, v = (x.strip() for x in part.split("=", 1))
            try:
                out[k] = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                out[k] = v
    return out


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return str(a) == str(b)


def hyperparameter_differences(published: dict, ran: list[dict | None]) -> list[str]:
    """``"name: published X, ran Y"`` for each published hyperparameter that a run recorded with another value
    (``ran``: each run's recorded ``hyperparameters``; a run that did not record one is not flagged)."""
    diffs = []
    for k, pv in published.items():
        other = list(dict.fromkeys(str(h[k]) for h in ran if h and k in h and not _same(pv, h[k])))
        if other:
            diffs.append(f"{k}: published {pv}, ran {'/'.join(other)}")
    return diffs


def hyperparameters_match(published: dict, ran: list[dict | None]) -> bool:
    """True when ``published`` names hyperparameters and every run recorded each of them with the same value."""
    return bool(published) and bool(ran) and all(
        h and k in h and _same(v, h[k]) for h in ran for k, v in published.items())


def _figure(r, main: str, **changes) -> dict:
    pub = {"accuracy": float(r["accuracy"]), "ci95": float(r["ci95"]) if pd.notna(r["ci95"]) else math.nan,
           "source": r["source"], "note": r["note"], "backbone": r["backbone"], "ref_method": main, "ablation": None,
           "hyperparameters": parse_hyperparameters(r["hyperparameters"])}
    pub.update(changes)
    return pub


def published_figure(ref: pd.DataFrame, survey: pd.DataFrame, info: MethodInfo, dataset: str, ways: int,
                     shots: int, ran: list[dict | None] = ()) -> dict | None:
    """The published figure for an entry: {accuracy, ci95, source, note, backbone, ref_method, ablation,
    hyperparameters}; ``ran`` holds the recorded hyperparameters of the entry's runs.

    Main methods: the reference row of the same name (of several, the first whose ``hyperparameters`` the runs
    match). Variants: an ablation figure from the main method's reference note, matched by name: variant
    ``<main>-no<x>`` <-> note "without <X> <figure>" (e.g. mtl-noht <-> "without HT 60.2"); failing that, a row of
    the main method whose ``hyperparameters`` the variant's runs match (e.g. matching-nofce, fce=False, <->
    Matching Networks' Omniglot figures, published without FCE); other variants have no published figure. Where
    the reference has no row but the survey's Table 1 has a figure, a main method gets that figure with the survey
    as its source."""
    main = info.variant_of or info.name
    rows = ref[(ref["method"] == main) & (ref["dataset_key"] == norm_dataset(dataset)) & (ref["ways"] == int(ways))
               & (ref["shots"] == int(shots))]
    like = [r for _, r in rows.iterrows() if hyperparameters_match(parse_hyperparameters(r["hyperparameters"]), ran)]
    if info.variant_of:
        suffix = info.name[len(main) + 1:] if info.name.startswith(main + "-") else info.name
        if len(rows) and suffix.lower().startswith("no"):
            r = rows.iloc[0]
            for label, fig in _ABLATION.findall(r["note"]):
                if label.lower() == suffix[2:].lower():
                    return _figure(r, main, accuracy=float(fig), ci95=math.nan, ablation=label, hyperparameters={},
                                   source=f"{r['source']} (ablation: without {label})")
        return _figure(like[0], main) if like else None
    if len(rows):
        return _figure(like[0] if like else rows.iloc[0], main)
    fig = survey_figure(survey, main, dataset, ways, shots)
    if fig is not None:
        return {"accuracy": fig, "ci95": math.nan, "source": "survey Table 1", "note": "", "backbone": None,
                "ref_method": main, "ablation": None, "hyperparameters": {}}
    return None


def protocol_differences(pub: dict, dataset: str, queries: int, n_episodes: int, backbone: dict,
                         ran: list[dict | None] = ()) -> list[str]:
    """Known ways in which the published figure's protocol differs from ours (empty: same as far as the reference
    records). Backbone: kind and width (conv4 filters, ResNet-12 widths) from the runs' ``backbone`` facts
    (:func:`~benchmark.report.records.backbone_facts`); queries per class; test episodes; hyperparameters the
    reference records (``ran``: the runs' recorded hyperparameters)."""
    diffs = []
    if pub.get("backbone"):
        ref_kind, name, kind = str(pub["backbone"]), backbone["name"], backbone.get("kind")
        if ref_kind == "conv4":
            m = re.search(r"(\d+)\s*filters", pub["note"])
            ref_width = int(m.group(1)) if m else PUBLISHED_CONV4_FILTERS
            if kind != "conv4" or backbone.get("width") != ref_width:
                ours = name + (f" ({backbone.get('width')} filters)" if kind == "conv4" else "")
                diffs.append(f"backbone: paper conv4 with {ref_width} filters, ours {ours}")
        elif ref_kind == "resnet12":
            if kind != "resnet12" or tuple(backbone.get("widths") or ()) != PUBLISHED_RESNET12_WIDTHS:
                diffs.append(f"backbone: paper resnet12 ({'-'.join(map(str, PUBLISHED_RESNET12_WIDTHS))}), "
                             f"ours {name}")
        elif ref_kind != name:
            diffs.append(f"backbone: paper {ref_kind}, ours {name}")
    q = PUBLISHED_TEST_QUERIES.get(pub["ref_method"])
    if q is not None and int(q) != int(queries):
        diffs.append(f"queries: paper {q} per class, ours {queries}")
    m = re.search(r"(\d+)\s*test episodes", pub["note"])
    e = int(m.group(1)) if m else PUBLISHED_TEST_EPISODES.get((pub["ref_method"], norm_dataset(dataset)))
    if e is not None and int(e) != int(n_episodes):
        diffs.append(f"test episodes: paper {e}, ours {n_episodes}")
    return diffs + hyperparameter_differences(pub.get("hyperparameters") or {}, list(ran))

"""Sections 1 and 2 of the report, written into a :class:`~benchmark.report.render.Doc`: the survey's Table 1
mirrored (measured vs published; the Markdown/HTML formatting of the model :mod:`benchmark.report.table1`), then the
survey's Table 1 in English; the metric-based methods beside the survey's Table 2, then the survey's remarks on
MAML, Reptile and MTL."""
from __future__ import annotations

import math
import re

import pandas as pd

from .common import FAMILY_LABEL, norm_dataset, setting_label, short
from .entries import Entry
from .reference import load_survey, load_survey_remarks, load_survey_table2, survey_figure, survey_settings
from .render import Doc
from .table1 import MEASURED, Block, Cell, Published, Row
from .text import NOT_HERE, PUBLISHED_FOOTER, SURVEY_ATTRIBUTION, Footnotes, decimal_text, episodes_text, percent_text

__all__ = ["table1_mirror", "survey_table1", "survey_setting_label", "metric_methods", "survey_remarks",
           "SURVEY_T2_COLUMNS"]


def _block_title(backbone, profile, queries, n_episodes) -> str:
    return (f"Backbone {backbone}, profile {profile}, {queries} test queries per class, {episodes_text(n_episodes)} "
            "test episodes per setting")


def _mirror_row(row: Row, settings: tuple, notes: Footnotes) -> dict:
    """A row of the Markdown/HTML mirror: the row's header cells, then four per setting (measured, published, Δ,
    budget); the footnotes numbered in ``notes``."""
    if row.ran:
        method = row.name + (f" (variant of {row.variant_of})" if row.variant_of else "")
    else:
        method = f"{row.name} ({'not in this report' if row.implemented else NOT_HERE})"
    out = {("", "Family"): FAMILY_LABEL.get(row.family, row.family or "—"), ("", "Method"): method,
           ("", "Idea (survey)"): row.idea or ("—" if row.kind == "survey" else "not in the survey's table"),
           ("", "Description (this project)"): row.description or "—"}
    for st, cell in zip(settings, row.cells):
        for sub, vals in _mirror_cell(cell, notes).items():
            out[(setting_label(*st), sub)] = "; ".join(vals) if vals else "—"
    return out


def _mirror_cell(cell: Cell, notes: Footnotes) -> dict[str, list[str]]:
    """A cell of the mirror as its four columns' texts (one per value of the cell)."""
    cols: dict[str, list[str]] = {"measured": [], "published": [], "Δ": [], "budget": []}
    if cell.status != MEASURED:
        cols["measured"].append("not run")
        cols["published"].append(_published_text(cell.published, notes))
    for m in cell.values:
        txt = f"{m.mean:.2f} ± {m.ci95:.2f}"
        if m.n_seeds > 1:
            txt += f" ({m.n_seeds} seeds, sd {m.seed_sd:.2f})"
        elif m.seed_note:
            txt += f" (1 seed) [{notes.mark(m.seed_note)}]"
        if len(cell.values) > 1:
            txt += f" (episodes {short(m.fingerprint, 8)})"
        cols["measured"].append(txt)
        cols["published"].append(_published_text(m.published, notes))
        dag = "" if not m.published or m.published.comparable else "†"
        cols["Δ"].append(f"{m.difference:+.2f}{dag}" if m.published else "—")
        cols["budget"].append(percent_text(m.budget) if not math.isnan(m.budget) else "—")
    return cols


def _published_text(pub: Published | None, notes: Footnotes) -> str:
    if not pub:
        return "—"
    txt = f"{pub.accuracy:.2f}" + ("" if math.isnan(pub.ci95) else f" ± {pub.ci95:.2f}")
    return txt + f" [{notes.mark(pub.note)}]" + ("" if pub.comparable else "†")


def table1_mirror(doc: Doc, table: list[Block]) -> None:
    """Section 1: the Table 1 mirror (the model :func:`benchmark.report.table1.table1` built) as one table per
    block, then the survey's Table 1 in English."""
    doc.h(2, "1. Survey Table 1 mirror: measured vs published", "table1")
    doc.p("Rows: the survey's Table 1 in its order, within the survey's families (metric-based, initialization-based, "
          "optimizer-based), each method's variants beneath it, then the methods run that the survey's table does "
          "not have; a method of the survey's table that this project does not implement is listed as *not "
          "implemented here*, one without runs in this report as *not in this report*, both with the survey's "
          "figures. Columns: the "
          "survey's four settings always (miniImageNet and Omniglot, 5-way 1- and 5-shot), then any other setting "
          "run; a setting a method did not run shows *not run* beside its published figure. Per setting: "
          "**measured** mean accuracy ± 95% CI over test episodes (with several seeds also the sd of the per-seed "
          "means), **published** with its footnote (source), **Δ** = measured − published in percentage points, "
          "and **budget**: the run's meta-training episodes as a share of what the method's `paper` profile trains "
          "on for that setting (mean over seeds; — for runs that predate the record). A gap to the published figure "
          "on a small budget is expected, not a defect. **†** marks a published figure obtained under another "
          "protocol (different backbone, test queries per class, test-episode count or a hyperparameter the "
          "reference records, such as Matching Networks' FCE, as the footnote says): its Δ is for information, "
          "not a like-for-like comparison. Variants are compared only with the published ablation figure of the "
          "same name where the reference notes give one (e.g. MTL without HT), or with a figure of their main "
          "method whose recorded hyperparameters they ran with (e.g. `matching-nofce` with Matching Networks' "
          "Omniglot figures, published without FCE). *Idea (survey)*: the survey's idea column, translated from "
          "its Chinese (`benchmark/reference/survey_table1.csv`; the survey's Table 1 in full follows the mirror); "
          "*Description (this project)*: the one-line "
          "idea each method class declares. **[ext]** marks a method from outside this package (a plugin or a "
          "method file, not reviewed here); the provenance section gives the origin each of its runs recorded. "
          "**[transductive]** marks a method that scores a query using the other queries of its episode (recorded "
          "with each run, measured by `benchmark.check`; MAML's BatchNorm uses the query batch's statistics): its "
          "accuracy is not like for like with the non-transductive entries beside it.")
    for block in table:
        doc.h(3, _block_title(block.backbone, block.profile, block.queries, block.n_episodes))
        notes = Footnotes()
        rows = [_mirror_row(row, block.settings, notes) for row in block.rows]
        df = pd.DataFrame(rows)
        df.columns = pd.MultiIndex.from_tuples(df.columns)
        doc.table(df, [f"[{n}] {t}" for t, n in notes.texts.items()] + [PUBLISHED_FOOTER])
    survey_table1(doc, load_survey(), {e.info.variant_of or e.info.name for block in table for e in block.entries})


def survey_setting_label(col: tuple) -> str:
    return setting_label(*col)


def survey_table1(doc: Doc, survey: pd.DataFrame, ran: set[str]) -> None:
    """The survey's Table 1 in English: its 16 rows in its order, the name as printed (in English), family, idea and
    its four figures (— where it prints None), and what this project has of each row."""
    doc.h(3, "The survey's Table 1 in English", "survey-table1")
    doc.p("The survey's Table 1 (section 4.1.2: meta-learning models' recognition accuracy on miniImageNet and "
          "Omniglot) as the survey gives it, every row in its order: the survey's name, family and idea, and its "
          "figures (%; — where the survey prints None or leaves the cell blank). *This project*: the method that "
          "implements the row (*in this report* where it has runs here) or *not implemented here*. Reptile is not "
          "in the survey's table; the survey discusses it in section 4.3 (see [section 2](#table2)).")
    cols = survey_settings(survey)
    rows = []
    for r in survey.itertuples(index=False):
        row = {"Survey's name": r.name + (f" ({r.method})" if r.implemented and r.method != r.name else ""),
               "Family": FAMILY_LABEL.get(r.family, r.family or "—"), "Idea": r.idea or "—"}
        for c in cols:
            v = survey_figure(survey, r.method, c[0], c[1], c[2])
            row[survey_setting_label(c)] = decimal_text(v)
        here = norm_dataset(r.method) in {norm_dataset(m) for m in ran}
        row["This project"] = (f"{r.method} (in this report)" if here else r.method if r.implemented
                               else NOT_HERE)
        rows.append(row)
    notes = [f"{r.name}: {r.note}." for r in survey.itertuples(index=False) if r.note]
    doc.table(pd.DataFrame(rows), [SURVEY_ATTRIBUTION, *notes])


_FACT_KEYS = [("support embedding", "Support embedding"), ("query embedding", "Query embedding"),
              ("distance", "Distance"), ("distinctive", "Distinctive feature")]


#: The survey's Table 2 columns shown beside the facts the runs recorded: (column of survey_table2.csv, heading)
SURVEY_T2_COLUMNS = [("support_embedding", "Support embedding (survey)"), ("query_embedding", "Query embedding (survey)"),
                     ("distance", "Distance (survey)"), ("strengths", "Strengths (survey)"),
                     ("shortcomings", "Shortcomings (survey)")]


def metric_methods(doc: Doc, entries: list[Entry]) -> None:
    doc.h(2, "2. Metric-based methods (survey Table 2)", "table2")
    infos = sorted({e.info.name: e.info for e in entries if e.info.family == "metric"}.values(), key=lambda i: i.order)
    t2 = load_survey_table2()
    survey2 = {norm_dataset(m): r for m, r in zip(t2["method"], t2.to_dict("records"))}
    backbones: dict[str, list[str]] = {}
    for e in entries:
        backbones.setdefault(e.info.name, [])
        if e.key["backbone"] not in backbones[e.info.name]:
            backbones[e.info.name].append(e.key["backbone"])
    notes: dict[str, int] = {}
    rows = []

    def survey_cells(name: str) -> dict:
        s2 = survey2.get(norm_dataset(name), {})
        return {col: s2.get(k) or "—" for k, col in SURVEY_T2_COLUMNS}

    external = {e.info.name for e in entries if e.external}
    for info in infos:
        facts = {re.sub(r"[_\s]+", " ", str(k)).strip().lower(): v for k, v in (info.metric_facts or {}).items()}
        name = info.name + (" [ext]" if info.name in external else "") + \
            (f" (variant of {info.variant_of})" if info.variant_of else "")
        note = (survey2.get(norm_dataset(info.name)) or {}).get("note")
        if note:
            name += f" [{notes.setdefault(note, len(notes) + 1)}]"
        row = {"Method": name, "Paper": info.paper or "—", "Backbone (ran)": ", ".join(backbones[info.name])}
        for k, col in _FACT_KEYS:
            row[col] = facts.pop(k, "—")
        for k, v in facts.items():
            row[k.capitalize()] = v
        row.update(survey_cells(info.name) if not info.variant_of else {col: "—" for _, col in SURVEY_T2_COLUMNS})
        rows.append(row)
    ran = {norm_dataset(i.name) for i in infos}
    for r in t2.to_dict("records"):
        if norm_dataset(r["method"]) not in ran:
            status = _survey_status(r["method"])
            label = r["method"] if status != NOT_HERE or not r["name"] else r["name"]
            rows.append({"Method": f"{label} ({status})", "Paper": "—", "Backbone (ran)": "—",
                         **{col: "—" for _, col in _FACT_KEYS}, **survey_cells(r["method"])})
    doc.p("The metric-based methods: first what this project's runs recorded (`metric_facts`, declared by each "
          "method class): how support and query examples are embedded, the distance or similarity, and what "
          "distinguishes the method; — where the runs recorded none (runs that predate recorded facts). *Backbone "
          "(ran)*: the backbones of this report's runs. Then the survey's Table 2 (section 4.2, its comparison of "
          "metric-based methods), all five of its rows: the survey's support and query embedding, distance, "
          "strengths and shortcomings (`benchmark/reference/survey_table2.csv`); the survey's rows for methods "
          "without runs in this report are listed as *not in this report* or *not implemented here*. A numbered "
          "note marks where this project follows the original paper against the survey's table.")
    foot = [f"[{n}] {t}" for t, n in notes.items()]
    if "matching" not in ran and any(r["note"] for r in t2.to_dict("records")):
        foot += [f"{r['name'] or r['method']}: {r['note']}" for r in t2.to_dict("records") if r["note"]]
    doc.table(pd.DataFrame(rows).fillna("—"), foot + [SURVEY_ATTRIBUTION])
    if not infos:
        doc.p("No metric-based method in this report.")
    survey_remarks(doc, {e.info.variant_of or e.info.name for e in entries})


def _survey_status(method: str) -> str:
    survey = load_survey()
    row = survey[survey["method"].map(norm_dataset) == norm_dataset(method)]
    return "not in this report" if len(row) and bool(row["implemented"].iloc[0]) else NOT_HERE


def survey_remarks(doc: Doc, ran: set[str]) -> None:
    """The survey's remarks on MAML, Reptile and MTL (it has no comparison table for their families), with their
    section: Table 2's companion for the initialization-based methods this project runs."""
    doc.h(3, "The survey on MAML, Reptile and MTL", "survey-remarks")
    rm = load_survey_remarks()
    if not len(rm):
        doc.p("The reference holds no remarks of the survey (`survey_remarks.csv` is absent).")
        return
    doc.p("The survey has no comparison table for the initialization-based methods; these are its own remarks on "
          "the three this project runs, with the section of the survey they come from. Each method's recorded "
          "description is in [section 1](#table1).")
    here = {norm_dataset(m) for m in ran}
    kinds = {"strength": "strength", "shortcoming": "shortcoming", "remark": "remark"}
    names = {"maml": "MAML", "reptile": "Reptile", "mtl": "MTL"}
    rows = [{"Method": f"{names.get(r.method, r.method)} ({r.method}"
             + ("; in this report)" if norm_dataset(r.method) in here else ")"),
             "Survey section": r.section, "Kind": kinds.get(r.kind, r.kind), "The survey's remark": r.remark}
            for r in rm.itertuples(index=False)]
    doc.table(pd.DataFrame(rows), [SURVEY_ATTRIBUTION])

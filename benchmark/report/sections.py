"""The report's sections, each written into a :class:`~benchmark.report.render.Doc` from the entries and tables:
1 the survey's Table 1 mirrored (measured vs published), 2 the metric methods (survey Table 2), 3 paired statistics
and ranks, 4 convergence, 5 episode counts to accuracy thresholds, 6 cost, 7 cross-evaluation of saved models
(``benchmark.evaluate`` records), 8 provenance."""
from __future__ import annotations

import math
import re

import pandas as pd

from ..store.compare import PROVENANCE
from ..store.compare import provenance as recorded_facts
from .common import FAMILY_LABEL, SETTING_KEYS, norm_dataset, setting_label, short
from .entries import Entry, by_setting, few_seeds, seed_note
from .reference import load_survey, load_survey_remarks, load_survey_table2, survey_figure, survey_settings
from .render import BAND_LABEL, Doc, band_kind, convergence_png
from .stats import MIN_SEEDS
from .table1 import (
    MEASURED,
    Block,
    Cell,
    Published,
    Row,
    published_note,
    table1_blocks,
    table1_rows,
    table1_settings,
)
from .tables import FINAL_FRACTION, accuracy_at_compute, compute_curve, shared_artefacts
from .tables import cross_evaluation as cross_table
from .tables import episode_counts as count_episodes
from .text import (
    COMPUTE_COUNTS,
    NOT_HERE,
    PUBLISHED_FOOTER,
    STAT_TEST,
    SURVEY_ATTRIBUTION,
    Footnotes,
    commit_text,
    count_text,
    decimal_text,
    episodes_text,
    method_cell,
    p_text,
    percent_text,
    seconds_text,
    setting_slug,
    setting_title,
)

__all__ = ["table1_mirror", "survey_table1", "metric_methods", "survey_remarks", "paired", "convergence",
           "compute_convergence", "episode_counts", "cost", "cross_evaluation", "provenance", "varying_facts",
           "survey_setting_label", "budget_text", "flops_text", "compute_figure_name", "compute_entries",
           "pretraining_note", "equal_compute_frame", "SURVEY_T2_COLUMNS",
           # moved: the Table 1 model (benchmark.report.table1) and the shared texts (benchmark.report.text)
           "table1_blocks", "table1_settings", "table1_rows", "published_note", "STAT_TEST", "NOT_HERE",
           "SURVEY_ATTRIBUTION", "PUBLISHED_FOOTER", "COMPUTE_COUNTS"]


def _seeds_label(e: Entry) -> str:
    n = int(e.row["n_seeds"])
    return f"{e.label} ({n} seed{'s' if n != 1 else ''})"


# ------------------------------------------------------------------------------------------------ sections
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


def budget_text(fraction: float) -> str:
    """A run's meta-training budget as a share of the paper profile's, as the Table 1 mirror writes it."""
    return f"budget {percent_text(100.0 * fraction)} of the paper's"


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


def paired(doc: Doc, stats, alpha: float) -> tuple[pd.DataFrame, list[str]]:
    doc.h(2, "3. Paired statistics and ranks", "paired")
    doc.p(f"Every method of a setting is tested on the same episodes (same `test_fingerprint`), so methods are "
          f"compared episode by episode: {STAT_TEST}, with Holm's step-down correction over all pairs "
          f"of methods within a setting (family-wise α = {alpha:g}). With several seeds, each method's per-episode "
          "accuracy is first averaged over its seeds, and the test runs on those averages (the episode is the "
          "unit; the spread over seeds is the sd of per-seed means, shown separately). Accuracy: mean ± 95% CI "
          "(1.96 sd/√n over episodes of the seed-averaged accuracy).")
    doc.p("**Rank rule**: rank = 1 + the number of methods significantly better (Holm-adjusted p < α and a higher "
          "mean). Methods that no method beats significantly share rank 1; methods beaten by the same set share a "
          "rank. Because non-significance is not transitive (A ~ B, B ~ C, A > C gives ranks 1, 1, 2), the table "
          "also lists the methods each one is not significantly different from. Runs whose test-episode "
          "fingerprints differ are never paired.")
    doc.p(f"**Seeds**: the tests see the spread over test episodes, not over training runs. Only where every "
          f"compared entry has at least {MIN_SEEDS} seeds is a significant difference one between the methods (and "
          "set in bold in the LaTeX tables); with fewer it is a difference between these trained models, and "
          "another seed of a method can move it by more than its CI. Where a method's seed-to-seed spread was "
          "measured (`benchmark/reference/seed_spread.csv`), a one-seed entry's note gives it.")
    rows, refusals = [], []
    for st in stats:
        doc.h(3, setting_title(st.setting))
        for fp, ges, res in st.groups:
            if len(st.groups) > 1:
                doc.p(f"Test episodes with fingerprint `{short(fp)}` ({len(ges[0].accuracy)} episodes):")
            by_label = {e.label: e for e in ges}
            rk = []
            for r in res.ranks.itertuples():
                e = by_label[r.label]
                rk.append({"Rank": int(r.rank), "Method": method_cell(e),
                           "Accuracy (%)": f"{e.row['mean']:.2f} ± {e.row['ci95']:.2f}",
                           "Seeds": e.row["n_seeds"], "Seed sd": decimal_text(e.row["seed_sd"]),
                           "Episodes": e.row["n_episodes"],
                           "Significantly better than": ", ".join(r.better_than) or "—",
                           "Not significantly different from": ", ".join(r.tied_with) or "—"})
            doc.table(pd.DataFrame(rk), [n for n in map(seed_note, ges) if n])
            few = few_seeds(ges)
            if len(ges) > 1 and few:
                which = ", ".join(_seeds_label(e) for e in few)
                doc.p(f"**Significance is about the trained models here, not the methods**: {which} "
                      f"{'has' if len(few) == 1 else 'have'} fewer than {MIN_SEEDS} seeds.")
            if len(res.pairs):
                pt = pd.DataFrame({"Method A": res.pairs["a"], "Method B": res.pairs["b"],
                                   "Δ accuracy (A − B)": res.pairs["difference"].map(lambda v: f"{v:+.2f}"),
                                   "t": res.pairs["t"].map(lambda v: decimal_text(v, 2)), "p": res.pairs["p"].map(p_text),
                                   "p (Holm)": res.pairs["p_holm"].map(p_text),
                                   f"Significant (α = {alpha:g})": res.pairs["significant"].map(
                                       lambda v: "yes" if v else "no")})
                doc.table(pt)
            else:
                doc.p("Only one method on these episodes: nothing to pair.")
            d = dict(zip(SETTING_KEYS, st.setting))
            for r in res.pairs.itertuples(index=False):
                rows.append({**d, "test_fingerprint": fp, **r._asdict(), "test": STAT_TEST, "alpha": alpha})
        for msg in st.refusals:
            doc.p(f"**Refused:** {msg}.")
            refusals.append(msg)
    cols = SETTING_KEYS + ["test_fingerprint", "a", "b", "mean_a", "mean_b", "difference", "t", "p", "p_holm",
                           "significant", "n_episodes", "test", "alpha"]
    return pd.DataFrame(rows, columns=cols), refusals


def convergence(doc: Doc, entries: list[Entry]) -> pd.DataFrame:
    """Section 4: validation accuracy against episodes and seconds, then against FLOPs with the "accuracy at equal
    compute" table (returned in long form)."""
    doc.h(2, "4. Convergence", "convergence")
    doc.p("Validation accuracy against meta-training episodes (tasks) and against training seconds (validation "
          "time excluded), both on a log scale; one line per method (mean over seeds, aligned on the training "
          "step), each with its own colour and marker (colour-blind-safe palette); dashed lines are variants, the "
          "dotted line is chance. Each figure draws one kind of band for every line, named in its legend and "
          "caption: ± 1 sd over seeds when every method of the setting ran several seeds, else the 95% CI over "
          "validation episodes (the mean of the runs' own CIs).")
    for setting, es in by_setting(entries).items():
        d = dict(zip(SETTING_KEYS, setting))
        doc.h(3, setting_title(setting))
        series = [{"label": e.label, "curve": e.curve, "dashed": bool(e.info.variant_of)} for e in es]
        title = setting_title(setting)
        band = BAND_LABEL[band_kind(series)]
        for x, xl, tag in (("episodes", "meta-training episodes (log scale)", "episodes"),
                           ("train_seconds", "training seconds (log scale)", "seconds")):
            png = convergence_png(series, x, title, xl, chance=100.0 / int(d["ways"]))
            doc.img(f"convergence-{tag}-{setting_slug(setting)}.png", png,
                    f"Validation accuracy vs {tag}, {title}; {band}")
    return compute_convergence(doc, entries)


def flops_text(v: float) -> str:
    """FLOPs as ``1e13``, ``2.5e12`` (two significant digits)."""
    if v is None or math.isnan(v) or v <= 0:
        return "—"
    k = math.floor(math.log10(v) + 1e-9)
    m = round(v / 10.0 ** k, 1)
    if m >= 10:
        m, k = m / 10, k + 1
    return f"{m:g}e{k}"


def compute_figure_name(setting: tuple) -> str:
    return f"convergence-flops-{setting_slug(setting)}.png"


def compute_entries(es: list[Entry]) -> tuple[list[Entry], list[Entry]]:
    """(entries with a compute curve, entries without: no FLOPs recorded or no validation points)."""
    has = [e for e in es if len(compute_curve(e))]
    return has, [e for e in es if e not in has]


def pretraining_note(es: list[Entry]) -> str | None:
    """The note naming the entries whose runs used a shared pretrained artefact (e.g. MTL's pretraining), whose
    FLOPs are not in the compute axis."""
    pre = [e for e in es if e.row["shared_seconds"]]
    if not pre:
        return None
    return ("Pretraining not counted: " + ", ".join(
        f"{method_cell(e)} ({', '.join(sorted({c.get('name') or c.get('file') for r in e.runs for c in r['cache'] or []}))})"
        for e in pre) + (" used a pretrained artefact" if len(pre) == 1 else " used pretrained artefacts")
        + " (section 6) whose FLOPs no record holds: the compute axis starts after the pretraining.")


def equal_compute_frame(table: pd.DataFrame, setting: tuple, es: list[Entry]) -> pd.DataFrame:
    """One setting's "accuracy at equal compute" table (rows: entries with FLOPs; columns: budgets), cells as text
    (accuracy %, "not reached", "before first validation")."""
    t = table[(table[SETTING_KEYS].astype(str) == pd.Series(dict(zip(SETTING_KEYS, map(str, setting))))).all(axis=1)]
    budgets = list(dict.fromkeys(t["budget_flops"]))
    rows = []
    for e in es:
        g = t[t["method"] == e.label]
        if not len(g):
            continue
        row = {"Method": method_cell(e), "GFLOP / training episode": decimal_text(g["flops_per_train_episode"].iloc[0] / 1e9),
               "Training FLOPs (total)": flops_text(g["total_flops"].iloc[0])}
        for b in budgets:
            r = g[g["budget_flops"] == b].iloc[0]
            row[f"{flops_text(b)} FLOPs"] = (decimal_text(r["val_acc"]) if r["status"] == "reached" else r["status"])
        rows.append(row)
    return pd.DataFrame(rows)


def compute_convergence(doc: Doc, entries: list[Entry]) -> pd.DataFrame:
    """Section 4's second part: validation accuracy against cumulative meta-training FLOPs (a figure per setting)
    and the "accuracy at equal compute" table; returns the long table (``equal_compute.csv``)."""
    doc.h(3, "Against meta-training compute", "compute")
    table = accuracy_at_compute(entries)
    doc.p("Episodes are not equal work (a 60-way ProtoNet episode costs many times a MAML task) and seconds depend on "
          "the device, the thread count and what else ran; floating-point operations do not. Per setting: "
          "validation accuracy against cumulative meta-training FLOPs (log scale; lines and bands as above), and "
          "**accuracy at equal compute**: each method's validation accuracy (%, mean over seeds) at common budgets "
          "(powers of ten between the first validation point and the largest budget spent in the setting, or 1, 2 "
          "and 5 × 10^k where fewer than three powers of ten lie between them): the "
          "last validation point at or below the budget, so to one validation interval. **not reached**: the run "
          "stopped before spending that much; **before first validation**: the budget lies below the method's "
          "first validation point. " + COMPUTE_COUNTS + ". Long form: `equal_compute.csv`.")
    for setting, es in by_setting(entries).items():
        d = dict(zip(SETTING_KEYS, setting))
        title = setting_title(setting)
        doc.h(4, title)
        has, missing = compute_entries(es)
        missing_note = (f"No compute curve for {', '.join(method_cell(e) for e in missing)}: "
                        + "their runs recorded no FLOPs per training episode (runs older than the count, or "
                        "methods that train no episodes, such as the transfer baselines) or no validation point.") \
            if missing else None
        if not has:
            doc.p(missing_note or "No validation points.")
            continue
        series = [{"label": e.label, "curve": compute_curve(e), "dashed": bool(e.info.variant_of)} for e in has]
        band = BAND_LABEL[band_kind(series)]
        png = convergence_png(series, "flops", title, "meta-training FLOPs, forward + backward (log scale)",
                              chance=100.0 / int(d["ways"]), powers=True)
        doc.img(compute_figure_name(setting), png, f"Validation accuracy vs cumulative meta-training FLOPs, "
                f"{title}; {band}. {COMPUTE_COUNTS.replace('`', '')}.")  # a caption: no Markdown
        frame = equal_compute_frame(table, setting, has)
        doc.table(frame, [f"Accuracy at equal compute (validation accuracy, %). {COMPUTE_COUNTS}."]
                  + [n for n in (pretraining_note(has), missing_note) if n])
    return table


def episode_counts(doc: Doc, entries: list[Entry], thresholds) -> pd.DataFrame:
    doc.h(2, "5. Episode counts to accuracy thresholds", "episodes")
    counts = count_episodes(entries, thresholds)
    doc.p(f"Meta-training episodes (tasks, as each method counts them) and training seconds until the seed-averaged "
          f"validation curve first reaches each accuracy, and {FINAL_FRACTION:.0%} of the method's own final "
          "validation accuracy, both in meta-training episodes (tasks). Resolution: one validation interval (column "
          "*validated every*, in episodes); the figures are the "
          "first validation point at or above the target. **not reached** means no validation point reached it "
          "(the best accuracy is given). Thresholds are configurable (`--thresholds`).")
    for setting, es in by_setting(entries).items():
        doc.h(3, setting_title(setting))
        rows = []
        for e in es:
            c = counts[counts["method"] == e.label]
            c = c[(c[SETTING_KEYS].astype(str) == pd.Series(dict(zip(SETTING_KEYS, map(str, setting))))).all(axis=1)]
            row = {"Method": method_cell(e)}
            for r in c.itertuples():
                col = f"≥ {r.target}" if r.target.endswith("%") else f"{r.target} ({decimal_text(r.threshold, 1)}%)"
                if "final" in r.target:
                    col = f"{r.target}"
                    row[col] = (f"{count_text(r.train_episodes)} ep · {seconds_text(r.train_seconds)} (≥ {decimal_text(r.threshold, 1)}%)"
                                if r.reached else f"not reached (target {decimal_text(r.threshold, 1)}%)")
                else:
                    row[col] = (f"{count_text(r.train_episodes)} ep · {seconds_text(r.train_seconds)}" if r.reached
                                else f"not reached (best {decimal_text(r.best_val_acc, 1)}%)")
            if len(c):
                row["Final val. acc (%)"] = decimal_text(c["final_val_acc"].iloc[0])
                row["Validated every (episodes)"] = count_text(c["val_every_episodes"].iloc[0])
                row["Seeds"] = int(c["n_seeds"].iloc[0])
            rows.append(row)
        doc.table(pd.DataFrame(rows).fillna("—"))
    return counts


def cost(doc: Doc, entries: list[Entry], runs) -> None:
    doc.h(2, "6. Cost", "cost")
    doc.p("Means over seeds. Training time excludes validation and shared artefacts (listed once below); "
          "ms per test episode is adaptation plus prediction. *GFLOP / training episode*: the floating-point "
          "operations (forward and backward) of one training episode, counted by the harness on the run's first "
          "step (`torch.utils.flop_counter`): a method that trains more per episode shows here, whatever budget it "
          "reports. *Memory added by the run*: the run's peak minus the "
          "level when it began (resident set of the process on the CPU, allocated CUDA memory on a GPU), maximum "
          "over seeds: what the run itself needed, independent of its place in the job (— for runs that predate "
          "the record). *Peak memory*: the peak itself, which on the CPU includes what the process already held "
          "(earlier runs of the same job, libraries), so it rises with a run's place in the job and does not rank "
          "methods. *Adapted per task* counts the parameters changed by test-time adaptation (gradient-based "
          "methods; — for methods that do not adapt).")
    for setting, es in by_setting(entries).items():
        doc.h(3, setting_title(setting))
        rows = []
        for e in es:
            r = e.row
            gradient = e.info.family in ("initialization", "optimizer") or e.info.adapts_at_test
            rows.append({"Method": method_cell(e), "Training episodes": count_text(r["train_episodes"]),
                         "Training time": seconds_text(r["train_seconds"]),
                         "ms / training episode": decimal_text(r["ms_per_train_episode"], 1),
                         "GFLOP / training episode": decimal_text(r["flops_per_train_episode"] / 1e9, 2)
                         if not math.isnan(r["flops_per_train_episode"]) else "—",
                         "ms / test episode": decimal_text(r["ms_per_test_episode"], 1),
                         "Memory added by the run (MB)": (f"{decimal_text(r['peak_memory_increase_mb'], 0)} "
                                                          f"({_memory_label(r['memory_kind'])})"
                                                          if not math.isnan(r["peak_memory_increase_mb"]) else "—"),
                         "Peak memory (MB)": f"{decimal_text(r['peak_memory_mb'], 0)} ({r['memory_kind'] or '?'})",
                         "Trainable parameters": count_text(r["trainable_params"]) if str(r["trainable_params"]).isdigit()
                         else r["trainable_params"],
                         "Adapted per task": (count_text(r["adapted_params"]) if str(r["adapted_params"]).isdigit()
                                              else r["adapted_params"]) if gradient else "—",
                         "Shared artefacts used (s)": seconds_text(r["shared_seconds"]) if r["shared_seconds"] else "—"})
        doc.table(pd.DataFrame(rows))
    arts = shared_artefacts(runs)
    doc.h(3, "Shared artefacts (counted once)")
    if len(arts):
        t = pd.DataFrame({"Artefact": arts["artefact"], "File": arts["file"], "Seconds": arts["seconds"].map(seconds_text),
                          "Computed by": arts["computed_by"].replace("", "an earlier run"),
                          "Used by (runs)": arts["n_runs"]})
        doc.table(t, ["Computed once and reused from the results cache; not included in any run's training time."])
    else:
        doc.p("None: no run used a cached artefact.")


def _memory_label(kind: str) -> str:
    return {"process_rss": "resident set increase", "cuda_allocated": "CUDA allocated increase"}.get(
        kind, f"{kind or '?'} increase")


def cross_evaluation(doc: Doc, entries: list[Entry], evaluations, alpha: float) -> pd.DataFrame:
    """Section 7: saved models re-tested by ``benchmark.evaluate``; returns the long table
    (``cross_evaluation.csv``)."""
    doc.h(2, "7. Cross-evaluation of saved models", "cross")
    df = cross_table(entries, evaluations, alpha)
    if not len(df):
        doc.p("No evaluations: `python -m benchmark.evaluate` re-tests the saved models of finished runs on other "
              "ways, shots, datasets or splits without re-training, and they appear here.")
        return df
    doc.p("Rows: a method and the setting it was trained in (seeds aggregated as above); columns: the test episodes "
          "(dataset, split, ways, shots, queries per class and the episode fingerprint). Each cell: mean ± 95% CI "
          "over episodes of the seed-averaged per-episode accuracy, and the rank among the rows tested on **the "
          "same episodes** (same fingerprint): the report's paired t-test with Holm's correction over that "
          "column's pairs (α = " + f"{alpha:g}" + "). Cells in different columns are never paired. * marks a run's "
          "own test (from its training record); the other cells are evaluation records "
          "(`<run>/evaluations/<eval-id>/`). ‡: some test classes were training or validation classes of the run "
          "(another split of its own dataset, e.g. the Vinyals split's training characters include Lake's "
          "evaluation alphabets), so the cell is not a few-shot test of new classes.")
    cols = list(dict.fromkeys(df["column"]))
    table = []
    for row, g in df.groupby("row", sort=False):
        line = {"Method (trained)": row}
        for c in cols:
            cell = g[g["column"] == c]
            if not len(cell):
                line[c] = "—"
                continue
            r = cell.iloc[0]
            n = int((df["column"] == c).sum())
            txt = f"{r['mean']:.2f} ± {r['ci95']:.2f}" + ("*" if r["kind"] == "own test" else "")
            txt += "‡" if r["seen_classes"] and not pd.isna(r["seen_classes"]) else ""
            txt += f" (rank {int(r['rank'])} of {n})" if n > 1 else ""
            if r["n_seeds"] > 1:
                txt += f" ({int(r['n_seeds'])} seeds)"
            line[c] = txt
        table.append(line)
    doc.table(pd.DataFrame(table), ["In long form, with the rows each is not significantly different from: "
                                    "`cross_evaluation.csv`."])
    return df


def _origin_text(o: dict) -> str:
    """A recorded method origin (``method_facts.origin``) in words."""
    if o.get("kind") == "entry_point":
        return f"package {o.get('package')} {o.get('version')} (entry point {o.get('value')})"
    if o.get("kind") == "file":
        return f"file {o.get('path')} (SHA-256 {str(o.get('sha256'))[:12]})"
    return str(o)


def varying_facts(runs) -> list[str]:
    """The recorded facts results depend on (:data:`~benchmark.store.compare.PROVENANCE`, the code version aside)
    that differ between the runs, each with its values and run counts, e.g. "CPU instruction set: AVX2 (10 runs),
    AVX512 (3 runs)"; runs that did not record a fact are not counted for it."""
    facts = [recorded_facts(r.summary) for r in runs]
    out = []
    for k, label in PROVENANCE:
        if k == "code_version":
            continue
        counts: dict[str, int] = {}
        for f in facts:
            if f[k] is not None:
                counts[str(f[k])] = counts.get(str(f[k]), 0) + 1
        if len(counts) > 1:
            out.append(f"{label}: " + ", ".join(f"{v} ({n} run{'s' if n != 1 else ''})" for v, n in counts.items()))
    return out


def provenance(doc: Doc, runs, evaluations=(), results_dirs=()) -> None:
    doc.h(2, "8. Provenance", "provenance")
    doc.p("Every number above comes from these run records (`summary.json` of each run); fingerprints are the first "
          "12 hex digits of SHA-256 (full values in `leaderboard.csv`). Runs compared in one table share the test "
          "episode fingerprint unless the table says otherwise.")
    dirs = [str(d) for d in results_dirs]
    multi = len(dirs) > 1
    if dirs:
        counts = {d: 0 for d in dirs}
        for r in runs:
            for d in dict.fromkeys(str(p.parent) for p in [r.path, *r.copies]):
                counts[d] = counts.get(d, 0) + 1
        doc.p("Results director" + ("ies" if multi else "y") + " read: " + "; ".join(
            f"`{d}` ({counts[d]} run{'s' if counts[d] != 1 else ''} reported)" for d in counts) + "."
              + (" Runs from different directories are paired only where their test-episode fingerprints are "
                 "identical." if multi else ""))
    external = {}
    for r in runs:
        o = (r["method_facts"] or {}).get("origin") or {}
        if o.get("kind") not in (None, "builtin"):
            external.setdefault(r["method"], []).append(_origin_text(o))
    if external:
        doc.p("Methods from outside the package, with the origin each run recorded: " + "; ".join(
            f"`{m}`: {', '.join(dict.fromkeys(texts))}" for m, texts in sorted(external.items())) + ".")
    varied = varying_facts(runs)
    if varied:
        doc.p("**The runs differ in what their numbers depend on**: " + "; ".join(varied) + ". Runs of one "
              "configuration give bit-identical numbers only with the same device, CPU instruction set, thread count "
              "and library versions; otherwise expect differences of the size of the training variance, not of the "
              "CI (`docs/reproducibility.md`).")
    rows = []
    for r in sorted(runs, key=lambda r: r.path.name):
        env = r["environment"] or {}
        facts = recorded_facts(r.summary)
        libs = ", ".join(f"{label} {facts[k]}" for k, label in (("onednn", "oneDNN"), ("blas", "BLAS"),
                                                                ("cudnn", "cuDNN")) if facts[k] is not None)
        rows.append({"Run": r.path.name, **({"Results directory": "; ".join(
            dict.fromkeys(str(p.parent) for p in [r.path, *r.copies]))} if multi else {}),
            "Profile": r["profile"], "Device": r["device"],
                     "Device name": env.get("device_name", "—"), "Python": env.get("python", "—"),
                     "PyTorch": env.get("torch", "—"), "NumPy": env.get("numpy", "—"),
                     "pandas": env.get("pandas", "—"), "Code version": commit_text(r["code_version"]),
                     "Test episodes": short(r["test_fingerprint"]), "Dataset": short(r["dataset_fingerprint"]),
                     "Finished": r["finished_at"] or "—",
                     "CPU instruction set": facts["cpu_capability"] or "—",
                     "Threads": facts["threads"] if facts["threads"] is not None else "—",
                     "Math libraries": libs or "—"})
    doc.table(pd.DataFrame(rows))
    if evaluations:
        doc.p("Evaluations of saved models (section 7), from their `evaluation.json`:")
        doc.table(pd.DataFrame([{
            "Evaluation": f"{ev.run.path.name}/evaluations/{ev.path.name}", "Device": ev["device"] or "—",
            "PyTorch": (ev["environment"] or {}).get("torch", "—"), "Code version": commit_text(ev["code_version"]),
            "Model made by": commit_text(ev["model_code_version"]), "Test episodes": short(ev["test_fingerprint"]),
            "Dataset": short(ev["dataset_fingerprint"]), "Finished": ev["finished_at"] or "—"}
            for ev in sorted(evaluations, key=lambda ev: str(ev.path))]))


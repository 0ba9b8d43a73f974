"""Section 4 of the report, written into a :class:`~benchmark.report.render.Doc`: convergence, i.e. validation
accuracy against meta-training episodes and training seconds, then against cumulative meta-training FLOPs with the
"accuracy at equal compute" table; and what the LaTeX tables share with it (the entries with a compute curve, the
figure's file name, the equal-compute table, the pretraining note)."""
from __future__ import annotations

import math

import pandas as pd

from .common import SETTING_KEYS
from .entries import Entry, by_setting
from .render import BAND_LABEL, Doc, band_kind, convergence_png
from .tables import accuracy_at_compute, compute_curve, setting_rows
from .text import COMPUTE_COUNTS, decimal_text, method_cell, setting_slug, setting_title

__all__ = ["convergence", "compute_convergence", "flops_text", "compute_figure_name", "compute_entries",
           "pretraining_note", "equal_compute_frame"]


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
    t = setting_rows(table, setting)
    budgets = list(dict.fromkeys(t["budget_flops"]))
    rows = []
    for e in es:
        g = t[t["method"] == e.label]
        if not len(g):
            continue
        row = {"Method": method_cell(e),
               "GFLOP / training episode": decimal_text(g["flops_per_train_episode"].iloc[0] / 1e9),
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

r"""The report's tables as LaTeX for papers: the survey Table 1 mirror and the leaderboard.

Two files, written by :func:`benchmark.report.build.build` beside ``report.md``:

* ``tables.tex``: only the ``table`` floats, to ``\input{tables.tex}`` into a paper whose preamble loads
  ``booktabs`` and ``graphicx`` (``\usepackage{booktabs,graphicx}``);
* ``report.tex``: a document of its own (``pdflatex report.tex``) holding the same tables. It is guarded, so that
  ``\input{report.tex}`` after a paper's ``\begin{document}`` gives the tables alone (no preamble, no
  ``\end{document}``); ``tables.tex`` is the one meant for papers.

Content, from the same entries, paired tests and notes as the Markdown/HTML report (nothing new is computed here):

* **Table 1 mirror** (one table per backbone x profile x test queries, as in the report; the model
  :mod:`benchmark.report.table1` formatted, nothing decided here): rows the methods by family (variants beneath their
  method; the survey's idea column is left out for width), two columns per setting: *Ours* (mean $\pm$ 95% CI over
  test episodes of the seed-averaged accuracy) and *Published* (the published figure, with its CI where the paper
  gives one). The measured-minus-published differences and the budgets are in ``report.md``.
* **Leaderboard** (one table per setting: dataset, ways, shots, split, backbone, profile, test queries): method,
  family, accuracy (mean $\pm$ CI), sd over seeds, seeds, test episodes, rank, published figure, difference.
* **The survey in English** (:func:`survey_tables`): its Table 1 (all 16 rows: name, idea, its four figures, the
  method here that implements the row; the idea column the mirror leaves out), its Table 2 (embeddings, distance,
  strengths, shortcomings) and its remarks on MAML, Reptile and MTL, attributed as this project's translation.
* **Convergence against compute** (:func:`compute_floats`, per setting with FLOP counts): the figure of validation
  accuracy against cumulative meta-training FLOPs (a ``figure`` including the report's PNG beside the ``.tex``
  files) and the "accuracy at equal compute" table.

Bold: an accuracy is bold only where the report's paired test (:func:`~benchmark.report.stats.paired_comparison`:
two-sided paired t-test on per-episode accuracy, Holm's correction over all pairs of the setting) finds it
significantly better, at the family-wise level alpha, than *every* other entry of that setting, and every entry
of the setting was tested on the same episodes (one test fingerprint); a setting whose entries ran on different
episodes is not fully paired, so nothing in it is bold; and every entry of the setting has at least
:data:`~benchmark.report.stats.MIN_SEEDS` seeds (with fewer, the tests compare trained models, not methods: a
footnote says so, and an entry with one seed carries its method's measured seed-to-seed spread where
``benchmark/reference/seed_spread.csv`` has it). No bold otherwise, also not for the highest mean.

Footnotes (``\footnotesize`` lines under each table, marked with superscript numbers): the note of each published
figure as the report writes it (source, the reference's note, e.g. "non-transductive", hyperparameters it was
published with, the survey's figure where it differs, and "† other protocol: ..." for different test queries,
test-episode counts, backbones or hyperparameters; † also marks the figure), the training budget of a run shorter
than the paper's ("budget 2.0% of the paper's"), the test episodes of entries of one setting that ran on different
episodes, and the refused pairings; then the report's closing note on published CIs (CI conventions and query
counts differ between papers).

Text from records (method names, overrides, notes, paths) is escaped for LaTeX (:func:`escape`); the escaping and the
pieces of the tables (cells, rows, floats, footnote lines) are in :mod:`benchmark.report.latex_text`.
"""
from __future__ import annotations

import math

import pandas as pd

from .common import FAMILY_LABEL, norm_dataset
from .convergence import compute_entries, compute_figure_name, equal_compute_frame, pretraining_note
from .entries import Entry, by_setting, few_seeds, short_budgets
from .latex_text import (
    ROW_SPACE,
    bold,
    escape,
    inline,
    notes_line,
    plus_minus,
    power,
    stack,
    superscript,
    table_float,
    tex_label,
    tex_row,
    wrap,
)
from .reference import load_survey, load_survey_remarks, load_survey_table2, survey_figure, survey_settings
from .stats import MIN_SEEDS
from .table1 import MEASURED, Block, Cell, Measured, Published, measured, significant_winners, table1
from .tables import accuracy_at_compute, entry_ranks
from .text import (
    COMPUTE_COUNTS,
    PUBLISHED_FOOTER,
    STAT_TEST,
    SURVEY_ATTRIBUTION,
    Footnotes,
    episodes_text,
    method_cell,
    percent_range,
    setting_slug,
    setting_title,
)

__all__ = ["escape", "inline", "significant_winners", "tables_tex", "report_tex", "REQUIRED_PACKAGES", "table1_tables",
           "leaderboard_tables", "survey_tables", "compute_floats", "SETTINGS_PER_TABLE"]

#: What a paper's preamble must load to ``\input`` ``tables.tex``.
REQUIRED_PACKAGES = ("booktabs", "graphicx")


def _legend(alpha: float) -> str:
    return (r"Accuracy in \%: mean $\pm$ 95\% CI over test episodes (1.96 sd/$\sqrt{n}$ of the seed-averaged "
            r"per-episode accuracy). \textbf{Bold}: significantly better than every other entry of the setting "
            f"({escape(STAT_TEST)}, Holm's correction over all pairs of the setting, family-wise "
            f"$\\alpha = {alpha:g}$), every entry of the setting having at least {MIN_SEEDS} seeds; no bold where "
            "no entry is. \\dag: published under another protocol (its "
            "footnote says which).")


def _measured(m: Measured, notes: Footnotes) -> str:
    cell = plus_minus(m.mean, m.ci95)
    if m.bold:
        cell = bold(cell)
    marks = []
    if m.episodes_note:
        marks.append(notes.mark(m.episodes_note))
    if m.seed_note:
        marks.append(notes.mark(m.seed_note + "."))
    return cell + superscript(marks)


def _published(pub: Published | None, notes: Footnotes) -> str:
    if not pub:
        return "---"
    cell = f"{pub.accuracy:.2f}" + ("" if math.isnan(pub.ci95) else f" $\\pm$ {pub.ci95:.2f}")
    return cell + superscript([notes.mark(pub.note)]) + ("" if pub.comparable else r"\dag")


def _seeds_note(es: list[Entry]) -> str | None:
    """The footnote of a table with entries of fewer than :data:`MIN_SEEDS` seeds (None when it has none)."""
    few = few_seeds(es)
    if not few:
        return None
    ns = sorted({int(e.row["n_seeds"]) for e in few})
    return (f"{len(few)} of the {len(es)} entries have {'/'.join(map(str, ns))} seed(s), fewer than {MIN_SEEDS}: "
            "where they are compared, a significant difference is about these trained models, not the methods, so "
            "no entry of such a setting is bold; an entry's CI is over test episodes and leaves out training "
            "variance.")


def _method(e: Entry) -> str:
    return escape(e.label) + (f" {{\\footnotesize (variant of {escape(e.info.variant_of)})}}"
                              if e.info.variant_of else "")


#: Settings per Table 1 float: a column's width holds two (one dataset's 1- and 5-shot), a two-column paper's full
#: width (``table*``) the survey's four
SETTINGS_PER_TABLE = {False: 2, True: 4}


def _budget_note(es: list[Entry]) -> str | None:
    """One note for the whole table on the training budget of its runs (not one per cell)."""
    budgets = short_budgets(es)
    if not budgets:
        return None
    return (f"Ours: trained on {percent_range(budgets, '--')} of the meta-training episodes of each method's `paper` "
            "profile (per entry: `budget_fraction` in leaderboard.csv); not comparable with the published figures, "
            "and a gap to them is expected.")


def table1_tables(entries: list[Entry], stats, alpha: float, survey: pd.DataFrame | None = None,
                  wide: bool = False, table: list[Block] | None = None) -> list[str]:
    """The Table 1 mirror (``table``, else the model :func:`~benchmark.report.table1.table1` of ``entries`` and
    ``stats``): per block (backbone x profile x test queries), the survey's rows in its order and its settings (then
    any other setting run), two columns per setting (Ours, Published), at most :data:`SETTINGS_PER_TABLE` settings
    per float (``wide``: ``table*`` floats for a two-column paper)."""
    table = table1(entries, stats, survey) if table is None else table
    k = SETTINGS_PER_TABLE[wide]
    out = []
    for block in table:
        chunks = [list(range(i, min(i + k, len(block.settings)))) for i in range(0, len(block.settings), k)]
        out += [_table1_float(block, cols, part, len(chunks), alpha, wide) for part, cols in enumerate(chunks, 1)]
    return out


def _table1_head(chunk: list[tuple]) -> list[str]:
    """The header of a Table 1 float: dataset (and split) over ways and shots over Ours and Published."""
    groups: list[list] = []
    for st in chunk:
        name = st[0] + (f" ({st[3]} split)" if st[3] else "")
        if groups and groups[-1][0] == name:
            groups[-1][1] += 1
        else:
            groups.append([name, 1])
    head0 = [""] + [r"\multicolumn{" + str(2 * c) + "}{c}{" + escape(g) + "}" for g, c in groups]
    head1 = [""] + [r"\multicolumn{2}{c}{" + f"{int(st[1])}-way {int(st[2])}-shot" + "}" for st in chunk]
    rules = " ".join(f"\\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(len(chunk)))
    return [r"\toprule", tex_row(head0), tex_row(head1), rules,
            tex_row(["Method"] + ["Ours", "Published"] * len(chunk)), r"\midrule"]


def _table1_cell(cell: Cell, notes: Footnotes) -> list[str]:
    """A cell as its two columns, Ours and Published (several values stacked in one cell)."""
    if cell.status != MEASURED:
        return ["n.r.", _published(cell.published, notes)]
    return [stack([_measured(m, notes) for m in cell.values]),
            stack([_published(m.published, notes) for m in cell.values])]


def _table1_float(block: Block, cols: list[int], part: int, parts: int, alpha: float, wide: bool) -> str:
    """One float of a Table 1 block: the settings at the positions ``cols``, as part ``part`` of ``parts``."""
    chunk = [block.settings[i] for i in cols]
    notes = Footnotes()
    body = _table1_head(chunk)
    prev = None
    for row in block.rows:
        if row.family != prev:
            if prev is not None:
                body.append(r"\midrule")
            body.append(r"\multicolumn{" + str(1 + 2 * len(chunk)) + r"}{@{}l}{\textit{"
                        + escape(FAMILY_LABEL.get(row.family, row.family or "other")) + "}}" + r" \\")
            prev = row.family
        cells = [(r"\quad " if row.ran and row.variant_of else "") + escape(row.name)]
        for i in cols:
            cells += _table1_cell(row.cells[i], notes)
        body.append(tex_row(cells))
    body.append(r"\bottomrule")
    of = f" (part {part} of {parts})" if parts > 1 else ""
    caption = (f"Survey Table 1 mirror{of}: measured (ours) vs published accuracy (\\%); profile "
               f"\\textbf{{{escape(block.profile)}}}, backbone {escape(block.backbone)}, {int(block.queries)} test "
               f"queries per class, {episodes_text(block.n_episodes)} test episodes.")
    budget, seeds = _budget_note(list(block.entries)), _seeds_note(list(block.entries))
    foot = [_legend(alpha) + " n.r.: not run in this report (the published figure is shown; "
            "benchmark/reference/README.md names the survey's methods this project does not implement); "
            "---: no figure." + (" " + inline(budget) if budget else "") + (" " + inline(seeds) if seeds else "")] \
        + notes_line(notes) + [inline(PUBLISHED_FOOTER)]
    label = f"tab:fewshot-table1-{block.backbone}-{block.profile}-q{block.queries}" + (f"-{part}" if parts > 1 else "")
    return table_float(caption, tex_label(label), "@{}l" + "cc" * len(chunk) + "@{}", body, foot, wide)


def leaderboard_tables(entries: list[Entry], stats, alpha: float, survey: pd.DataFrame | None = None,
                       wide: bool = False) -> list[str]:
    """The leaderboard: one LaTeX table per setting (see the module docstring)."""
    survey = load_survey() if survey is None else survey
    winners = significant_winners(stats)
    ranks = entry_ranks(stats)
    stats_of = {st.setting: st for st in stats}
    out = []
    for setting, es in by_setting(entries).items():
        st = stats_of.get(setting)
        several = st is not None and len(st.groups) > 1
        notes = Footnotes()
        head = ["Method", "Family", r"Accuracy (\%)", "Seed sd", "Seeds", "Episodes", "Rank",
                r"Published (\%)", r"$\Delta$"]
        body = [r"\toprule", tex_row(head), r"\midrule"]
        for e in es:
            m = measured(e, winners, several, survey)
            body.append(tex_row([
                _method(e), escape(FAMILY_LABEL.get(e.info.family, e.info.family or "---")), _measured(m, notes),
                "---" if math.isnan(m.seed_sd) else f"{m.seed_sd:.2f}", str(int(m.n_seeds)), f"{int(m.n_episodes):,}",
                str(ranks[e.ident]) if e.ident in ranks else "---", _published(m.published, notes),
                "---" if math.isnan(m.difference) else
                f"${m.difference:+.2f}$" + ("" if m.published.comparable else r"\dag")]))
        body.append(r"\bottomrule")
        budget = _budget_note(es)
        if budget:
            notes.mark(budget)
        if len(es) > 1 and _seeds_note(es):
            notes.mark(_seeds_note(es))
        for msg in (st.refusals if st is not None else []):
            notes.mark(f"Refused: {msg}.")
        caption = f"Leaderboard: {escape(setting_title(setting))}."
        foot = [_legend(alpha) + r" Rank: 1 + the number of entries significantly better (entries no entry beats "
                r"share rank 1); $\Delta$: ours $-$ published, percentage points. Seed sd: sd of the per-seed "
                "means (--- for one seed)."] + notes_line(notes) + [inline(PUBLISHED_FOOTER)]
        out.append(table_float(caption, tex_label(f"tab:fewshot-leaderboard-{setting_slug(setting)}"),
                               "@{}llccccccc@{}", body, foot, wide))
    return out


#: Characters per line of the survey's sentences: (one column's width, two columns' width)
_WRAP = {"idea": (46, 78), "embedding": (16, 20), "distance": (12, 14), "judgement": (30, 44), "remark": (70, 110)}


def _width(kind: str, wide: bool) -> int:
    return _WRAP[kind][1 if wide else 0]


def survey_tables(ran: set[str], wide: bool = False) -> list[str]:
    """The survey in English: its Table 1 (16 rows: name, idea, its four figures, what this project has of the row),
    its Table 2 (five metric-based rows: embeddings, distance, strengths, shortcomings) and its remarks on MAML,
    Reptile and MTL, each attributed to the survey (this project's translation)."""
    rm = load_survey_remarks()
    return [_survey_table1(load_survey(), {norm_dataset(m) for m in ran}, wide),
            _survey_table2(load_survey_table2(), wide)] + ([_survey_remarks(rm, wide)] if len(rm) else [])


def _survey_table1(survey: pd.DataFrame, here: set[str], wide: bool) -> str:
    """The survey's Table 1 (``here``: the normalised names of the methods with runs in this report)."""
    cols = survey_settings(survey)
    groups: list[list] = []
    for c in cols:
        if groups and groups[-1][0] == c[0]:
            groups[-1][1] += 1
        else:
            groups.append([c[0], 1])
    n = 3 + len(cols)
    head0 = ["", ""] + [r"\multicolumn{" + str(k) + "}{c}{" + escape(g) + "}" for g, k in groups] + [""]
    head1 = ["Survey's name", "Idea (the survey's)"] + [f"{int(c[1])}-way {int(c[2])}-shot" for c in cols] \
        + ["Here"]
    starts = [3 + sum(k for _, k in groups[:i]) for i in range(len(groups))]
    rules = " ".join(f"\\cmidrule(lr){{{a}-{a + k - 1}}}" for a, (_, k) in zip(starts, groups))
    body = [r"\toprule", tex_row(head0), rules, tex_row(head1), r"\midrule"]
    prev, notes = None, Footnotes()
    for r in survey.itertuples(index=False):
        if r.family != prev:
            if prev is not None:
                body.append(r"\midrule")
            body.append(r"\multicolumn{" + str(n) + r"}{@{}l}{\textit{" + escape(FAMILY_LABEL.get(r.family, r.family))
                        + "}}" + r" \\")
            prev = r.family
        figs = []
        for c in cols:
            v = survey_figure(survey, r.method, c[0], c[1], c[2])
            figs.append("---" if v is None else f"{v:.2f}")
        name = escape(r.name) + (superscript([notes.mark(f"{r.name}: {r.note}")]) if r.note else "")
        here_cell = (escape(r.method) + ("*" if norm_dataset(r.method) in here else "")) if r.implemented else "n.i."
        body.append(ROW_SPACE + tex_row([name, wrap(r.idea, _width("idea", wide)), *figs, here_cell]))
    body.append(r"\bottomrule")
    foot = [inline(SURVEY_ATTRIBUTION) + " Figures in \\%; ---: the survey prints None (or leaves the cell blank). "
            "Here: the method of this project that implements the row (*: with runs in this report); n.i.: not "
            "implemented here. Reptile is not in the survey's table (its section 4.3 discusses it)."] \
        + notes_line(notes)
    return table_float("The survey's Table 1 in English (section 4.1.2: recognition accuracy on miniImageNet and "
                       "Omniglot, 5-way), all its rows in its order.", "tab:fewshot-survey-table1",
                       "@{}ll" + "c" * len(cols) + "l@{}", body, foot, wide)


def _survey_table2(t2: pd.DataFrame, wide: bool) -> str:
    notes = Footnotes()
    head = ["Method", "Support embedding", "Query embedding", "Distance", "Strengths", "Shortcomings"]
    body = [r"\toprule", tex_row(head), r"\midrule"]
    for r in t2.itertuples(index=False):
        name = escape(r.name or r.method) + (superscript([notes.mark(r.note.rstrip("."))]) if r.note else "")
        body.append(ROW_SPACE + tex_row([name, wrap(r.support_embedding, _width("embedding", wide)),
                                         wrap(r.query_embedding, _width("embedding", wide)),
                                         wrap(r.distance, _width("distance", wide)),
                                         wrap(r.strengths, _width("judgement", wide)),
                                         wrap(r.shortcomings, _width("judgement", wide))]))
    body.append(r"\bottomrule")
    foot = [inline(SURVEY_ATTRIBUTION)] + notes_line(notes)
    return table_float("The survey's Table 2 in English (section 4.2: comparison of metric-based meta-learning "
                       "methods).", "tab:fewshot-survey-table2", "@{}llllll@{}", body, foot, wide)


def _survey_remarks(rm: pd.DataFrame, wide: bool) -> str:
    names = {"maml": "MAML", "reptile": "Reptile", "mtl": "MTL"}
    body = [r"\toprule", tex_row(["Method", "Section", "Kind", "The survey's remark"]), r"\midrule"]
    for r in rm.itertuples(index=False):
        body.append(ROW_SPACE + tex_row([escape(names.get(r.method, r.method)), escape(r.section), escape(r.kind),
                                         wrap(r.remark, _width("remark", wide))]))
    body.append(r"\bottomrule")
    return table_float("The survey on MAML, Reptile and MTL (it has no comparison table for the "
                       "initialization-based methods): its remarks, with their section.", "tab:fewshot-survey-remarks",
                       "@{}llll@{}", body, [inline(SURVEY_ATTRIBUTION)], wide)


def compute_floats(entries: list[Entry], wide: bool = False) -> list[str]:
    """Per setting with FLOP counts: the figure of validation accuracy against cumulative meta-training FLOPs (the
    report's PNG beside this file) and the "accuracy at equal compute" table (``table``/``figure``, or ``wide``:
    ``table*``/``figure*``)."""
    table = accuracy_at_compute(entries)
    out = []
    star = "*" if wide else ""
    for setting, es in by_setting(entries).items():
        has, missing = compute_entries(es)
        if not has:
            continue
        title = escape(setting_title(setting))
        label = tex_label(f"fewshot-compute-{setting_slug(setting)}")
        out.append("\n".join([r"\begin{figure" + star + "}[htbp]", r"\centering",
                              r"\includegraphics[width=\linewidth]{" + compute_figure_name(setting) + "}",
                              r"\caption{Validation accuracy against cumulative meta-training FLOPs (log scale), "
                              + title + ". " + inline(COMPUTE_COUNTS) + ".}", r"\label{fig:" + label + "}",
                              r"\end{figure" + star + "}", ""]))
        frame = equal_compute_frame(table, setting, has)
        budgets = list(frame.columns[3:])
        head = ["Method", "GFLOP/episode", "Total FLOPs"] + [power(b) for b in budgets]
        body = [r"\toprule", tex_row(head), r"\midrule"]
        for i, r in enumerate(frame.itertuples(index=False)):
            body.append(tex_row([escape(r[0]), escape(r[1]), power(r[2])] + [escape(v) for v in r[3:]]))
        body.append(r"\bottomrule")
        foot = ["Validation accuracy (\\%, mean over seeds) of the last validation point at or below each budget of "
                "meta-training FLOPs; not reached: the run stopped before spending it; before first validation: the "
                "budget lies below the method's first validation point. " + inline(COMPUTE_COUNTS) + "."]
        if pretraining_note(has):
            foot.append(inline(pretraining_note(has)))
        if missing:
            foot.append("No FLOPs recorded (no compute curve): " + escape(", ".join(method_cell(e) for e in missing))
                        + ".")
        out.append(table_float("Accuracy at equal compute: " + title + ".", tex_label("tab:" + label), "@{}l"
                          + "c" * (len(head) - 1) + "@{}", body, foot, wide))
    return out


def tables_tex(entries: list[Entry], stats, alpha: float, wide: bool = False, table: list[Block] | None = None) -> str:
    r"""``tables.tex``: the Table 1 mirror (``table``, else built from ``entries`` and ``stats``) and the
    leaderboard, only ``table`` floats (for ``\input`` into a one-column paper); ``wide``: ``tables-wide.tex``, the
    same as ``table*`` floats for a two-column paper."""
    survey = load_survey()
    name, env = ("tables-wide.tex", "table* floats, for a two-column paper") if wide else \
        ("tables.tex", "table floats, for a one-column paper")
    head = [f"% Few-shot benchmark report: tables as {env} (python -m benchmark.report, from the run records "
            "alone).",
            f"% For a paper: \\input{{{name}}} with \\usepackage{{{','.join(REQUIRED_PACKAGES)}}} in its preamble; "
            "tables.tex: one-column papers, tables-wide.tex: two-column papers; report.tex is the standalone "
            "document.", ""]
    ran = {e.info.variant_of or e.info.name for e in entries}
    parts = [r"% ---- Survey Table 1 mirror", *table1_tables(entries, stats, alpha, survey, wide, table),
             r"% ---- Leaderboard", *leaderboard_tables(entries, stats, alpha, survey, wide),
             r"% ---- The survey in English: Table 1, Table 2, remarks on MAML, Reptile and MTL",
             *survey_tables(ran, wide),
             r"% ---- Convergence against meta-training compute (figures: the PNG files beside this file)",
             *compute_floats(entries, wide)]
    return "\n".join(head + parts)


def report_tex(tables: str, intro: str) -> str:
    r"""``report.tex``: a standalone document holding ``tables``; ``\input`` into a document whose body has begun,
    it gives the tables alone. ``intro``: a line of LaTeX text above the tables (standalone only)."""
    guard = ("% Compiles on its own (pdflatex report.tex). \\input after a document's \\begin{document}, it gives "
             "the tables alone;\n% for papers, \\input{tables.tex} is the plain one.\n"
             "\\expandafter\\ifx\\csname @notprerr\\endcsname\\documentclass\n"
             "  \\def\\FewShotReportStandalone{0}%\n\\else\n  \\def\\FewShotReportStandalone{1}%\n\\fi\n")
    pre = ("\\ifnum\\FewShotReportStandalone=1\n"
           "\\documentclass[a4paper,10pt]{article}\n\\usepackage[T1]{fontenc}\n"
           "\\IfFileExists{lmodern.sty}{\\usepackage{lmodern}}{}% Type 1 fonts (Debian: apt-get install lmodern)\n"
           "\\usepackage[utf8]{inputenc}\n"
           f"\\usepackage{{{','.join(REQUIRED_PACKAGES)}}}\n"
           "\\usepackage[margin=2cm]{geometry}\n\\ifdefined\\extrafloats\\extrafloats{200}\\fi\n"
           "\\begin{document}\n\\section*{Few-shot benchmark report: tables}\n" + intro + "\n\\fi\n")
    end = "\\csname\\ifnum\\FewShotReportStandalone=1 @firstofone\\else @gobble\\fi\\endcsname{\\end{document}}\n"
    return guard + pre + "\n" + tables + "\n" + end

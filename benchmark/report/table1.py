"""The survey's Table 1 mirrored (measured vs published): one model, built once from the entries and the paired
statistics, that the report's renderers only format: the Markdown/HTML section
(:func:`benchmark.report.survey_sections.table1_mirror`) and the LaTeX tables
(:func:`benchmark.report.latex.table1_tables`).

* :class:`Block`: one table per backbone x profile x test queries (:func:`table1_blocks`);
* its columns: the survey's settings always, in its order, then any other setting run (:func:`table1_settings`);
* its rows (:class:`Row`): the survey's rows in its order by family, each method's variants beneath it, then the
  methods run that the survey's table does not have (:func:`table1_rows`);
* its cells (:class:`Cell`), one per row and setting, of three kinds: :data:`METHOD_NOT_RUN` (a row of the survey
  without runs in this report: the survey's figure), :data:`SETTING_NOT_RUN` (the method ran, not this setting: its
  published figure) and :data:`MEASURED` (one :class:`Measured` per entry of the row at the setting, each with its
  published figure, difference, training budget, bold mark and notes).

Unit: percent throughout. Accuracies, CIs and seed sds are in %, the difference to the published figure in
percentage points, the training budget in % of the meta-training episodes of the method's ``paper`` profile.

Footnotes are carried as their texts (:attr:`Published.note`, :attr:`Measured.seed_note`,
:attr:`Measured.episodes_note`); each renderer numbers them in order of first use within its own table (the Markdown
mirror has one table per block, the LaTeX mirror splits a block into floats of a few settings each).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .common import FAMILY_ORDER, norm_dataset, short
from .entries import Entry, few_seeds, seed_note
from .reference import load_reference, load_survey, published_figure, survey_figure, survey_settings

METHOD_NOT_RUN = "method not run"  # a row of the survey's table without runs in this report
SETTING_NOT_RUN = "setting not run"  # the row's method ran, but not this setting
MEASURED = "measured"


@dataclass(frozen=True)
class Published:
    """A published figure: accuracy and 95% CI in % (CI NaN where the source gives none), its footnote (source and
    notes) and whether it was obtained under the run's protocol (False: another protocol, marked †)."""
    accuracy: float
    ci95: float
    note: str
    comparable: bool = True


@dataclass(frozen=True)
class Measured:
    """One entry's figure in a cell: mean ± 95% CI over test episodes (%), seeds (and the sd of the per-seed means
    where several), its test episodes, its published figure and the difference to it (percentage points; NaN without
    one), its training budget (% of the paper profile's; NaN where not recorded), ``bold`` (significantly better than
    every other entry of its setting, :func:`significant_winners`), and its notes: ``seed_note`` (one seed, with its
    method's measured seed spread) and ``episodes_note`` (its setting ran on several test-episode sets)."""
    label: str
    mean: float
    ci95: float
    n_seeds: int
    seed_sd: float
    n_episodes: int
    fingerprint: str
    published: Published | None
    difference: float
    budget: float
    bold: bool
    seed_note: str | None
    episodes_note: str | None


@dataclass(frozen=True)
class Cell:
    """One row x setting: ``status`` :data:`METHOD_NOT_RUN` or :data:`SETTING_NOT_RUN` with the ``published`` figure
    shown in its place (None: no figure), or :data:`MEASURED` with one value per entry (several where the row's
    method ran the setting on several test-episode sets)."""
    status: str
    values: tuple[Measured, ...] = ()
    published: Published | None = None


@dataclass(frozen=True)
class Row:
    """A row: ``kind`` "survey" (a row of the survey's table, or its method run) or "run" (a variant, or a method the
    survey's table does not have); ``name`` the entries' label, or the survey's method for a row without runs
    (``ran`` False; ``implemented``: whether this project implements it); ``family`` the family key (the runs'
    record, else the survey's); ``idea`` the survey's idea of the row ("" where it has none or the row is not the
    survey's); ``description`` the idea the method's runs recorded ("" where none)."""
    kind: str
    name: str
    family: str | None
    variant_of: str | None
    ran: bool
    implemented: bool
    idea: str
    description: str
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class Block:
    """One Table 1: the entries of one backbone x profile x test queries, their test-episode counts, the setting
    columns (dataset, ways, shots, split) and the rows."""
    backbone: str
    profile: str
    queries: int
    n_episodes: tuple[int, ...]
    settings: tuple[tuple, ...]
    rows: tuple[Row, ...]
    entries: tuple[Entry, ...]


def table1(entries: list[Entry], stats, survey: pd.DataFrame | None = None) -> list[Block]:
    """The Table 1 mirror of ``entries``: one :class:`Block` per backbone x profile x test queries; ``stats`` the
    paired statistics (:func:`~benchmark.report.tables.paired_statistics`), for the bold marks and the settings run
    on several test-episode sets."""
    survey = load_survey() if survey is None else survey
    ref = load_reference()
    winners = significant_winners(stats)
    several = {st.setting for st in stats if len(st.groups) > 1}
    out = []
    for (backbone, profile, queries), es in table1_blocks(entries).items():
        settings = table1_settings(es, survey)
        rows = [_row(kind, name, res, settings, survey, ref, winners, several)
                for kind, name, res in table1_rows(es, survey)]
        out.append(Block(backbone, profile, queries, tuple(sorted({int(e.row["n_episodes"]) for e in es})),
                         tuple(settings), tuple(rows), tuple(es)))
    return out


def _row(kind: str, name: str, res: list[Entry], settings: list[tuple], survey: pd.DataFrame, ref: pd.DataFrame,
         winners: dict, several: set) -> Row:
    cells = tuple(_cell(name, res, st, survey, ref, winners, several) for st in settings)
    if not res:
        srow = survey[survey["method"] == name].iloc[0]
        return Row(kind, name, srow["family"], None, False, bool(srow["implemented"]), srow["idea"], "", cells)
    info = res[0].info
    idea = dict(zip(survey["method"], survey["idea"])).get(info.name, "") \
        if kind == "survey" and not info.variant_of else ""
    return Row(kind, name, info.family, info.variant_of, True, True, idea, info.idea or "", cells)


def _cell(name: str, res: list[Entry], st: tuple, survey: pd.DataFrame, ref: pd.DataFrame, winners: dict,
          several: set) -> Cell:
    if not res:
        fig = survey_figure(survey, name, st[0], st[1], st[2]) if not st[3] else None
        return Cell(METHOD_NOT_RUN, published=None if fig is None else Published(fig, math.nan, "survey Table 1"))
    here = [e for e in res if _setting_column(e) == st]
    if not here:
        # published figures are for each dataset's usual split: none for another
        pub = None if st[3] else published_figure(ref, survey, res[0].info, st[0], st[1], st[2],
                                                  [r.config.get("hyperparameters") for r in res[0].runs])
        return Cell(SETTING_NOT_RUN, published=None if pub is None else Published(pub["accuracy"], pub["ci95"],
                                                                                  source_note(pub)))
    return Cell(MEASURED, tuple(measured(e, winners, e.setting in several, survey) for e in here))


def measured(e: Entry, winners: dict, several_fps: bool, survey: pd.DataFrame | None = None) -> Measured:
    """An entry's figure as Table 1 and the leaderboard show it; ``winners`` from :func:`significant_winners`,
    ``several_fps`` whether the entry's setting ran on several test-episode sets."""
    r, pub = e.row, e.published
    episodes_note = (f"Tested on the episodes with fingerprint {short(e.key['test_fingerprint'])} "
                     f"({r['n_episodes']} episodes); entries of this setting on other episodes are not paired with "
                     "it, so no entry of the setting is bold.") if several_fps else None
    return Measured(
        e.label, r["mean"], r["ci95"], r["n_seeds"], r["seed_sd"], r["n_episodes"], e.key["test_fingerprint"],
        None if not pub else Published(pub["accuracy"], pub["ci95"], published_note(e, survey),
                                       bool(r["published_comparable"])),
        r["difference"], 100.0 * r["budget_fraction"], winners.get(e.setting) == e.label, seed_note(e),
        episodes_note)


def significant_winners(stats) -> dict[tuple, str | None]:
    """Per setting (:attr:`~benchmark.report.tables.SettingStats.setting`): the label of the entry that the paired
    tests (Holm-corrected) find significantly better than every other entry of the setting, or None: when no entry
    is, when the setting has one entry only, when its entries ran on different test episodes (several
    fingerprints: not every pair was tested), or when an entry has fewer than
    :data:`~benchmark.report.stats.MIN_SEEDS` seeds (then the tests compare trained models, not methods)."""
    out: dict[tuple, str | None] = {}
    for st in stats:
        win = None
        if len(st.groups) == 1:
            _, ges, res = st.groups[0]
            if len(ges) >= 2 and not few_seeds(ges):
                best = [r.label for r in res.ranks.itertuples() if len(r.better_than) == len(ges) - 1]
                win = best[0] if len(best) == 1 else None
        out[st.setting] = win
    return out


# ------------------------------------------------------------------------------------------------ notes
def source_note(pub: dict) -> str:
    """The footnote of a published figure shown for a setting not run (no protocol comparison: nothing ran)."""
    note = pub["source"] + (f"; note: {pub['note']}" if pub.get("note") else "")
    if pub.get("hyperparameters"):
        note += "; published with " + ", ".join(f"{k}={v}" for k, v in pub["hyperparameters"].items())
    return note


def published_note(e: Entry, survey: pd.DataFrame | None = None) -> str:
    """The footnote of an entry's published figure (the entry must have one): source, the reference's note, the
    hyperparameters it was published with, the survey's figure where it differs, and "† other protocol: ..." with
    the known protocol differences."""
    r, pub = e.row, e.published
    survey = load_survey() if survey is None else survey
    note = pub["source"]
    if pub["note"]:
        note += f"; note: {pub['note']}"
    if pub.get("hyperparameters"):
        hp = pub["hyperparameters"]
        note += "; published with " + ", ".join(f"{k}={v}" for k, v in hp.items())
    sfig = survey_figure(survey, pub["ref_method"], e.key["dataset"], e.key["ways"], e.key["shots"]) \
        if not pub["ablation"] else None
    if sfig is not None and abs(sfig - pub["accuracy"]) > 0.005:
        note += f"; the survey's Table 1 cites {sfig:.2f}"
    if r["protocol_differences"]:
        note += f"; † other protocol: {r['protocol_differences']}"
    return note


# ------------------------------------------------------------------------------------------------ layout
def table1_blocks(entries: list[Entry]) -> dict[tuple, list[Entry]]:
    """The entries by (backbone, profile, test queries): one Table 1 per block."""
    blocks: dict[tuple, list[Entry]] = {}
    for e in entries:
        blocks.setdefault((e.key["backbone"], e.key["profile"], e.key["queries"]), []).append(e)
    return blocks


def _setting_column(e: Entry) -> tuple:
    return (e.key["dataset"], e.key["ways"], e.key["shots"], e.key["split"])


def table1_settings(es: list[Entry], survey: pd.DataFrame) -> list[tuple]:
    """The columns of one Table 1: the survey's settings always (in its order), then the other settings run. A
    survey column is (survey dataset key, ways, shots, ""); a run setting with the same normalised dataset and
    the default split takes its place."""
    cols = list(survey_settings(survey))
    run = list(dict.fromkeys(_setting_column(e) for e in es))
    for st in run:
        same = [i for i, c in enumerate(cols) if c[3] == "" and st[3] == "" and norm_dataset(c[0]) ==
                norm_dataset(st[0]) and (int(c[1]), int(c[2])) == (int(st[1]), int(st[2]))]
        if same:
            cols[same[0]] = st
        elif st not in cols:
            cols.append(st)
    return cols


def table1_rows(es: list[Entry], survey: pd.DataFrame) -> list[tuple[str, str, list[Entry]]]:
    """The rows of one Table 1 as (kind, name, entries of the row's label): the survey's rows in its order within
    each family ("survey"; entries empty for a method not benchmarked), each followed by its variants, then the
    methods run that the survey's table does not have ("run"); families in the survey's order (metric,
    initialization, optimizer, external memory, surprise-based, memory matching network), then the others of
    :data:`~benchmark.report.common.FAMILY_ORDER` (transfer), then any other family run."""
    labels = list(dict.fromkeys(e.label for e in sorted(es, key=lambda e: (e.info.order, e.label))))
    by_label = {lab: [e for e in es if e.label == lab] for lab in labels}
    surveyed = {norm_dataset(m): m for m in survey["method"]}
    fam_of = {m: f for m, f in zip(survey["method"], survey["family"])}
    rows, used = [], set()

    def labels_of(method: str, variants: bool) -> list[str]:
        return [lab for lab in labels if lab not in used and (
            norm_dataset(by_label[lab][0].info.variant_of or "") == norm_dataset(method) if variants
            else norm_dataset(by_label[lab][0].key["method"]) == norm_dataset(method))]

    families = list(dict.fromkeys([f for f in survey["family"] if f] + list(FAMILY_ORDER) + sorted(
        {e.info.family or "" for e in es} - set(FAMILY_ORDER) - {""}) + [""]))
    for fam in families:
        for m in [m for m in survey["method"] if (fam_of[m] or "") == fam]:
            own = labels_of(m, False)
            if not own:
                rows.append(("survey", m, []))
            for lab in own + labels_of(m, True):
                used.add(lab)
                rows.append(("survey" if lab in own else "run", lab, by_label[lab]))
        for lab in labels:
            info = by_label[lab][0].info
            if lab not in used and (info.family or "") == fam and norm_dataset(info.variant_of or info.name) \
                    not in surveyed:
                used.add(lab)
                rows.append(("run", lab, by_label[lab]))
    for lab in labels:  # anything left (e.g. a variant of a surveyed method in another family)
        if lab not in used:
            rows.append(("run", lab, by_label[lab]))
    return rows

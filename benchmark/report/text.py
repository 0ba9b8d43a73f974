"""What the report's renderers share: number formats, setting titles and slugs, an entry's method cell, footnotes
numbered in order of first use, and the prose that the Markdown/HTML sections and the LaTeX tables both print (the
statistical test, the attribution of the survey's text, the closing note on published figures, what the compute axis
counts).

Percentages are passed in percent (``percent_text(5.0)`` is "5.0%"), never as fractions.
"""
from __future__ import annotations

import math
import re

from .common import SETTING_KEYS, setting_label

STAT_TEST = "two-sided paired t-test (scipy.stats.ttest_rel) on per-episode accuracy"
#: A row of the survey's tables that this project does not implement
NOT_HERE = "not implemented here"
#: The attribution under every table that shows the survey's text in English.
SURVEY_ATTRIBUTION = ("The survey's text, translated from its Chinese by this project (a faithful translation, not the "
                      "survey's own English); the Chinese beside each cell in `benchmark/reference/`.")
#: The closing footnote of the Table 1 mirror (also under the LaTeX tables).
PUBLISHED_FOOTER = ("Published figures and the survey's Table 1: `benchmark/reference/paper_results.csv` and "
                    "`survey_table1.csv` (sources as listed). CIs are not comparable across papers: MAML and MTL "
                    "report 1 query per class, ProtoNets 15. Where the reference does not record a protocol fact "
                    "(queries, episodes or hyperparameters), or a run does not record a hyperparameter, it is not "
                    "flagged.")
#: What the compute axis counts, in the captions of the figure and the table (Markdown, HTML and LaTeX)
COMPUTE_COUNTS = ("FLOPs: the forward and backward passes of meta-training steps (the run's "
                  "`flops_per_train_episode`, counted by the harness on its first training step, × the meta-training "
                  "episodes seen); validation and test are excluded, and so is pretraining (MTL's, the transfer "
                  "baselines'): the records do not hold its FLOPs")


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def decimal_text(v, nd=2) -> str:
    """``v`` with ``nd`` decimals; — when missing (None or NaN)."""
    return "—" if _missing(v) else f"{v:.{nd}f}"


def count_text(v) -> str:
    """``v`` as a whole number with thousands separators; — when missing; other text as it is."""
    if _missing(v):
        return "—"
    try:
        return f"{int(round(float(v))):,}"
    except ValueError:
        return str(v)


def seconds_text(v) -> str:
    if _missing(v):
        return "—"
    return f"{v:.1f} s" if v < 100 else f"{v:,.0f} s"


def p_text(v) -> str:
    """A p value: four decimals, "< 1e-4" below that; — when missing."""
    if _missing(v):
        return "—"
    return "< 1e-4" if v < 1e-4 else f"{v:.4f}"


def commit_text(v) -> str:
    """A recorded code version: the commit's first 12 hex digits and any suffix (``-dirty``); — when missing."""
    if not v:
        return "—"
    head, _, rest = str(v).partition("-")
    return head[:12] + (f"-{rest}" if rest else "")


def percent_text(p: float) -> str:
    """A share given in percent: no decimals from 10%, one from 1%, else two significant digits."""
    return f"{p:.0f}%" if p >= 10 else f"{p:.1f}%" if p >= 1 else f"{p:.2g}%"


def percent_range(values: list[float], dash: str) -> str:
    """The range of shares in percent as ``lo<dash>hi``, or one share where both print alike."""
    lo, hi = percent_text(min(values)), percent_text(max(values))
    return lo if lo == hi else f"{lo}{dash}{hi}"


def episodes_text(counts) -> str:
    """Test-episode counts as "1,000" or "600/1,000"."""
    return "/".join(f"{n:,}" for n in counts)


def setting_title(setting: tuple) -> str:
    """A setting (:data:`~benchmark.report.common.SETTING_KEYS` values) as the heading of its tables."""
    d = dict(zip(SETTING_KEYS, setting))
    return (f"{setting_label(d['dataset'], d['ways'], d['shots'], d['split'])} — backbone {d['backbone']}, profile "
            f"{d['profile']}, {d['queries']} test queries per class")


def setting_slug(setting: tuple) -> str:
    """A setting as a file-name and label part (``omniglot-5w1s-q15-conv4-smoke``)."""
    d = dict(zip(SETTING_KEYS, setting))
    s = f"{d['dataset']}-{d['ways']}w{d['shots']}s-q{d['queries']}-{d['backbone']}-{d['profile']}"
    s += f"-{d['split']}" if d["split"] else ""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", s)


def method_cell(e) -> str:
    """An entry's method cell: its label, and the main method of a variant."""
    return e.label + (f" (variant of {e.info.variant_of})" if e.info.variant_of else "")


class Footnotes:
    """The footnotes of one table, numbered in order of first use (the same text keeps its number)."""

    def __init__(self):
        self.texts: dict[str, int] = {}

    def mark(self, text: str) -> int:
        return self.texts.setdefault(text, len(self.texts) + 1)

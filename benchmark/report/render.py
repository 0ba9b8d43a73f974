"""Rendering of the report: a small document model (headings, paragraphs, lists, pandas tables, figures) written
both as Markdown (renders on code-hosting sites, figures as PNG files beside it) and as one self-contained HTML file
(inline CSS, figures inlined as base64, no network access). Figures: matplotlib's Agg canvas with seaborn styling.
"""
from __future__ import annotations

import base64
import html
import io
import math
import re
from dataclasses import dataclass, field

import pandas as pd

__all__ = ["Doc", "to_markdown", "to_html", "markdown_table", "convergence_png", "band_kind", "style_of"]


@dataclass
class Doc:
    title: str
    blocks: list[tuple] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG bytes

    def h(self, level: int, text: str, anchor: str | None = None):
        self.blocks.append(("h", level, text, anchor))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def ul(self, items: list[str]):
        if items:
            self.blocks.append(("ul", list(items)))

    def table(self, df: pd.DataFrame, notes: list[str] | None = None):
        self.blocks.append(("table", df, list(notes or [])))

    def banner(self, text: str):
        """A warning the reader cannot miss (a boxed paragraph in HTML, a quoted one in Markdown)."""
        self.blocks.append(("banner", text))

    def img(self, name: str, png: bytes, alt: str):
        self.images[name] = png
        self.blocks.append(("img", name, alt))


# ------------------------------------------------------------------------------------------------ markdown
def _md_cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return str(v).replace("|", "\\|").replace("\n", " ")


def column_names(df: pd.DataFrame) -> list[str]:
    """Flat column names: a two-level header (a setting over its sub-columns) as "setting: sub", or "sub" alone
    under an empty group."""
    if isinstance(df.columns, pd.MultiIndex):
        return [": ".join(str(p) for p in c if str(p)) for c in df.columns]
    return [str(c) for c in df.columns]


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``df`` (cells as text; ``|`` escaped; NaN as an em dash; a two-level
    header flattened, :func:`column_names`)."""
    head = "| " + " | ".join(_md_cell(c) for c in column_names(df)) + " |"
    sep = "|" + "|".join(" ---: " if pd.api.types.is_numeric_dtype(df.iloc[:, i]) else " --- "
                         for i in range(df.shape[1])) + "|"
    rows = ["| " + " | ".join(_md_cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows])


def to_markdown(doc: Doc) -> str:
    out = [f"# {doc.title}", ""]
    for b in doc.blocks:
        if b[0] == "h":
            out += ([f'<a id="{b[3]}"></a>', ""] if b[3] else []) + [f"{'#' * b[1]} {b[2]}", ""]
        elif b[0] == "p":
            out += [b[1], ""]
        elif b[0] == "banner":
            out += [f"> ⚠ {b[1]}", ""]
        elif b[0] == "ul":
            out += [f"- {it}" for it in b[1]] + [""]
        elif b[0] == "table":
            out += [markdown_table(b[1]), ""]
            for n in b[2]:
                out += [f"<sub>{n}</sub>", ""]
        elif b[0] == "img":
            out += [f"![{b[2]}]({b[1]})", ""]
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------ HTML
_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;color:#1f2328;
background:#fff;margin:0;line-height:1.45}
main{max-width:1240px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:1.9em;border-bottom:1px solid #d0d7de;padding-bottom:.3em}
h2{font-size:1.45em;border-bottom:1px solid #d0d7de;padding-bottom:.25em;margin-top:1.8em}
h3{font-size:1.15em;margin-top:1.4em}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.88em;background:#f3f4f6;
padding:.1em .35em;border-radius:4px}
.tw{overflow-x:auto;margin:.6em 0}
table.tbl{border-collapse:collapse;font-size:.86em;min-width:40%}
table.tbl th{background:#eef2f7;text-align:left;padding:6px 9px;border:1px solid #d0d7de;vertical-align:bottom}
table.tbl td{padding:5px 9px;border:1px solid #d0d7de;vertical-align:top}
table.tbl tr:nth-child(even) td{background:#f8fafc}
table.tbl th.grp{text-align:center}
table.tbl td.txt{min-width:15em}
table.tbl td.nw{white-space:nowrap}
.banner{border:2px solid #bf8700;background:#fff8c5;padding:.6em .9em;border-radius:6px;margin:1em 0}
.notes{font-size:.8em;color:#57606a;margin:.2em 0 1em}
.notes p{margin:.15em 0}
figure{margin:.8em 0}
figure img{max-width:100%;border:1px solid #d0d7de;border-radius:4px}
figcaption{font-size:.82em;color:#57606a}
"""


def _inline(text: str) -> str:
    s = html.escape(text, quote=False)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
    s = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"<em>\1</em>", s)
    s = re.sub(r"\[([^\]]+)\]\(#([A-Za-z0-9_-]+)\)", r'<a href="#\2">\1</a>', s)
    return s


def _html_cell(text: str) -> str:
    """A cell of a wide (grouped) table: a sentence keeps a readable width (the table scrolls sideways instead of
    squeezing it into a column a word wide); a short figure such as "94.09 ± 0.48" stays on one line."""
    cls = ' class="txt"' if len(text) > 40 else ' class="nw"' if len(text) <= 24 else ""
    return f"<td{cls}>{html.escape(text)}</td>"


def _html_table(df: pd.DataFrame) -> str:
    """``df`` as an HTML table; a two-level header as two header rows, each group spanning its sub-columns."""
    if not isinstance(df.columns, pd.MultiIndex):
        return df.to_html(index=False, escape=True, na_rep="—", border=0, classes="tbl", justify="left")
    groups: list[list] = []
    for top, sub in df.columns:
        if groups and groups[-1][0] == top and top:
            groups[-1][1] += 1
        else:
            groups.append([top, 1])
    head1 = "".join(f'<th colspan="{n}" class="grp">{html.escape(str(t))}</th>' if t else "<th></th>" * n
                    for t, n in groups)
    head2 = "".join(f"<th>{html.escape(str(sub))}</th>" for _, sub in df.columns)
    body = "".join("<tr>" + "".join(_html_cell(_md_cell(v)) for v in r) + "</tr>" for r in df.itertuples(index=False))
    return f'<table class="tbl"><thead><tr>{head1}</tr><tr>{head2}</tr></thead><tbody>{body}</tbody></table>'


def to_html(doc: Doc) -> str:
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head><body><main>",
             f"<h1>{html.escape(doc.title)}</h1>"]
    for b in doc.blocks:
        if b[0] == "h":
            anchor = f' id="{b[3]}"' if b[3] else ""
            parts.append(f"<h{b[1]}{anchor}>{_inline(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            parts.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "banner":
            parts.append(f'<div class="banner">⚠ {_inline(b[1])}</div>')
        elif b[0] == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
        elif b[0] == "table":
            t = _html_table(b[1])
            parts.append(f'<div class="tw">{t}</div>')
            if b[2]:
                parts.append('<div class="notes">' + "".join(f"<p>{_inline(n)}</p>" for n in b[2]) + "</div>")
        elif b[0] == "img":
            data = base64.b64encode(doc.images[b[1]]).decode()
            parts.append(f'<figure><img alt="{html.escape(b[2])}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------------ figures
#: Okabe & Ito's colour-blind-safe palette (black last: the chance line is grey)
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]


def style_of(i: int) -> tuple[str, str]:
    """(colour, marker) of the i-th series: unique pairs for up to 24 series (8 colours x 12 markers, both
    cycling), so neighbours in a legend differ in colour and marker."""
    return OKABE_ITO[i % len(OKABE_ITO)], MARKERS[i % len(MARKERS)]


def band_kind(series: list[dict]) -> str:
    """The one kind of band a convergence figure draws for every line: "sd" (± 1 sd of the validation accuracy over
    seeds) when every series with points has several seeds, else "ci" (the mean of the runs' own 95% CIs over
    validation episodes), so that a figure never mixes the two."""
    counts = [int(s["curve"]["n_seeds"].min()) for s in series if len(s["curve"]) and "n_seeds" in s["curve"]]
    return "sd" if counts and min(counts) > 1 else "ci"


BAND_LABEL = {"sd": "band: ± 1 sd over seeds", "ci": "band: 95% CI over validation episodes (mean over seeds)"}


def power_label(v: float) -> str:
    """A tick label for a large quantity on a log axis in mathtext: ``10^13``, ``2 x 10^13``."""
    if v <= 0:
        return ""
    k = math.floor(math.log10(v) + 1e-9)
    m = v / 10.0 ** k
    return f"$10^{{{k}}}$" if abs(m - 1) < 1e-6 else f"${m:.2g}\\times10^{{{k}}}$"


def _log_x_axis(ax, lo: float, hi: float, powers: bool) -> None:
    """A log x axis from ``lo`` to ``hi``: major ticks at 1, 2, 5 x 10^k over short ranges (more within one decade,
    else each decade), labelled (``powers``: as powers of ten); minor ticks unlabelled, so that no two labels meet
    ("90100")."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ratio = hi / max(lo, 1e-12)
    subs = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0) if ratio < 10 else (1.0, 2.0, 5.0) if ratio < 300 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(
        (lambda v, _: power_label(v)) if powers else (lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}")))
    ax.xaxis.set_minor_formatter(NullFormatter())


def convergence_png(series: list[dict], x: str, title: str, xlabel: str, chance: float | None = None,
                    powers: bool = False) -> bytes:
    """A PNG of validation accuracy against ``x`` (log scale) for each series: {label, curve (seed_curve frame),
    dashed}; one colour and marker per series (:func:`style_of`), the legend outside the axes and naming the band
    (:func:`band_kind`, the same kind for every line), major tick labels only (``powers``: as powers of ten, for
    FLOPs; else as plain numbers)."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    frames = []
    for s in series:
        c = s["curve"]
        c = c[c[x] > 0] if len(c) else c
        if len(c):
            frames.append(c.assign(method=s["label"]))
    band = band_kind(series)
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        fig = Figure(figsize=(9.6, 4.6), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if frames:
            df = pd.concat(frames, ignore_index=True)
            for i, s in enumerate(series):
                c = df[df["method"] == s["label"]]
                if not len(c):
                    continue
                colour, marker = style_of(i)
                ax.plot(c[x], c["val_acc"], marker=marker, markersize=5, linewidth=1.6, color=colour,
                        linestyle="--" if s.get("dashed") else "-", label=s["label"])
                half = (c["val_sd"] if band == "sd" else c["val_ci95"]).fillna(0.0)
                ax.fill_between(c[x], c["val_acc"] - half, c["val_acc"] + half, color=colour, alpha=0.15,
                                linewidth=0)
            _log_x_axis(ax, float(df[x].min()), float(df[x].max()), powers)
            handles, labels = ax.get_legend_handles_labels()
            handles.append(Patch(color="0.6", alpha=0.4))
            labels.append(BAND_LABEL[band])
            ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
                      frameon=False)
        else:
            ax.text(0.5, 0.5, "no validation points", ha="center", va="center", transform=ax.transAxes)
        if chance is not None:
            ax.axhline(chance, color="0.5", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()

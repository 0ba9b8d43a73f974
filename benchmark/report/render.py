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

__all__ = ["Doc", "to_markdown", "to_html", "markdown_table", "convergence_png"]


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

    def img(self, name: str, png: bytes, alt: str):
        self.images[name] = png
        self.blocks.append(("img", name, alt))


# ------------------------------------------------------------------------------------------------ markdown
def _md_cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``df`` (cells as text; ``|`` escaped; NaN as an em dash)."""
    head = "| " + " | ".join(_md_cell(c) for c in df.columns) + " |"
    sep = "|" + "|".join(" ---: " if pd.api.types.is_numeric_dtype(df[c]) else " --- " for c in df.columns) + "|"
    rows = ["| " + " | ".join(_md_cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows])


def to_markdown(doc: Doc) -> str:
    out = [f"# {doc.title}", ""]
    for b in doc.blocks:
        if b[0] == "h":
            out += ([f'<a id="{b[3]}"></a>', ""] if b[3] else []) + [f"{'#' * b[1]} {b[2]}", ""]
        elif b[0] == "p":
            out += [b[1], ""]
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
    s = re.sub(r"\[([^\]]+)\]\(#([A-Za-z0-9_-]+)\)", r'<a href="#\2">\1</a>', s)
    return s


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
        elif b[0] == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
        elif b[0] == "table":
            t = b[1].to_html(index=False, escape=True, na_rep="—", border=0, classes="tbl", justify="left")
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
def convergence_png(series: list[dict], x: str, title: str, xlabel: str, chance: float | None = None) -> bytes:
    """A PNG of validation accuracy against ``x`` (log scale) for each series: {label, curve (seed_curve frame),
    dashed}; the band is +-1 sd over seeds, or the run's 95% CI over validation episodes for a single seed."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    frames = []
    for s in series:
        c = s["curve"]
        c = c[c[x] > 0] if len(c) else c
        if len(c):
            frames.append(c.assign(method=s["label"]))
    colours = sns.color_palette("colorblind" if len(series) <= 10 else "husl", max(len(series), 1))
    palette = dict(zip([s["label"] for s in series], colours))
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        fig = Figure(figsize=(8.0, 4.6), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if frames:
            df = pd.concat(frames, ignore_index=True)
            for s in series:
                c = df[df["method"] == s["label"]]
                if not len(c):
                    continue
                colour = palette[s["label"]]
                ax.plot(c[x], c["val_acc"], marker="o", markersize=3.5, linewidth=1.6, color=colour,
                        linestyle="--" if s.get("dashed") else "-", label=s["label"])
                half = c["val_sd"].where(c["n_seeds"] > 1, c["val_ci95"]).fillna(0.0)
                ax.fill_between(c[x], c["val_acc"] - half, c["val_acc"] + half, color=colour, alpha=0.18,
                                linewidth=0)
            ax.set_xscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}")
            ax.xaxis.set_major_formatter(plain)
            lo, hi = float(df[x].min()), float(df[x].max())
            ax.xaxis.set_minor_formatter(plain if hi / max(lo, 1e-12) < 30 else NullFormatter())
            ax.legend(title=None, fontsize=8, loc="lower right")
        else:
            ax.text(0.5, 0.5, "no validation points", ha="center", va="center", transform=ax.transAxes)
        if chance is not None:
            ax.axhline(chance, color="0.5", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    return buf.getvalue()

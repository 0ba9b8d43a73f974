"""LaTeX text for the report's tables: escaping (:func:`escape`), report prose as LaTeX (:func:`inline`), and the
pieces every table is made of: cells (:func:`plus_minus`, :func:`bold`, :func:`superscript`, :func:`stack`,
:func:`wrap`, :func:`power`), rows (:func:`tex_row`), footnotes (:func:`notes_line`) and the float around a tabular
(:func:`table_float`)."""
from __future__ import annotations

import re

from .text import Footnotes

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "[": "{[}", "]": "{]}",
            "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}", '"': r"\textquotedbl{}",
            "±": r"$\pm$", "Δ": r"$\Delta$", "†": r"\dag{}", "‡": r"\ddag{}", "—": "---", "–": "--",
            "−": "$-$", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$", "√": r"$\surd$", "α": r"$\alpha$",
            "·": r"$\cdot$", "…": r"\ldots{}", "’": "'", "‘": "`", "“": "``", "”": "''", "\u00a0": "~"}


def escape(text) -> str:
    """``text`` as LaTeX text: the special characters escaped (``\\ & % $ # _ { } ~ ^``, and ``[ ]`` braced so that
    a cell never starts an optional argument; ``--`` kept as two hyphens), the report's symbols (± Δ † ‡ — − ≥ × √ α ·) as LaTeX commands,
    Latin-1 letters kept (``[T1]{fontenc}``), any other character replaced by ``?``."""
    out = []
    text = str(text)
    for i, ch in enumerate(text):
        if ch == "-" and text[i + 1:i + 2] == "-":  # "--eval-seed" stays two hyphens, not an en dash
            out.append("-{}")
        elif ch in _SPECIAL:
            out.append(_SPECIAL[ch])
        elif ord(ch) < 128:
            out.append(ch if ch.isprintable() or ch == " " else " ")
        elif ord(ch) < 256 and ch.isprintable():
            out.append(ch)
        else:
            out.append("?")
    return "".join(out)


def inline(text: str) -> str:
    """Report prose (Markdown inline: ```code```, ``**bold**``) as LaTeX: code spans in ``\\texttt``, bold in
    ``\\textbf``, the rest escaped."""
    out = []
    for i, part in enumerate(re.split(r"`([^`]*)`", str(text))):
        if i % 2:
            out.append(r"\texttt{" + escape(part) + "}")
        else:
            bits = re.split(r"\*\*(.+?)\*\*", part)
            out.append("".join(r"\textbf{" + escape(b) + "}" if j % 2 else escape(b) for j, b in enumerate(bits)))
    return "".join(out)


def plus_minus(mean: float, ci: float) -> str:
    """An accuracy and its CI, "94.09 $\\pm$ 0.48"."""
    return f"{mean:.2f} $\\pm$ {ci:.2f}"


def bold(cell: str) -> str:
    """A cell in bold, its mathematics included."""
    return r"\textbf{\boldmath " + cell + "}"


def superscript(marks: list[int]) -> str:
    """Footnote marks as a superscript ("" for none)."""
    return r"\textsuperscript{" + ",".join(map(str, marks)) + "}" if marks else ""


def tex_label(text: str) -> str:
    """``text`` as a ``\\label`` key."""
    return re.sub(r"[^A-Za-z0-9.:-]", "-", text)


def notes_line(notes: Footnotes) -> list[str]:
    """A table's footnotes as one run-in paragraph (one line of the float's notes), so that a table with many notes
    stays short enough for a page; no line without notes."""
    if not notes.texts:
        return []
    return ["; ".join(r"\textsuperscript{" + str(n) + "}~" + inline(t) for t, n in notes.texts.items()) + "."]


def table_float(caption: str, label: str, colspec: str, body: list[str], foot: list[str], wide: bool = False) -> str:
    """One float: ``table`` (a column's width) or, ``wide``, ``table*`` (both columns of a two-column paper). The
    tables are laid out to fit at ``\\footnotesize`` (no scaling); a table wider than the text would still be
    shrunk to fit by the ``\\resizebox`` guard, which leaves narrower ones alone."""
    env = "table*" if wide else "table"
    lines = [r"\begin{" + env + "}[htbp]", r"\centering", r"\footnotesize", r"\setlength{\tabcolsep}{4pt}",
             r"\caption{" + caption + "}", r"\label{" + label + "}",
             r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
             r"\begin{tabular}{" + colspec + "}", *body, r"\end{tabular}}", r"\par\smallskip",
             r"\begin{minipage}{\linewidth}\scriptsize\raggedright"]
    lines += [f + r"\par" for f in foot]
    lines += [r"\end{minipage}", r"\end{" + env + "}", ""]
    return "\n".join(lines)


def tex_row(cells: list[str]) -> str:
    """A row of a tabular."""
    return " & ".join(cells) + r" \\"


def stack(cells: list[str]) -> str:
    """Several values in one cell, one per line."""
    return cells[0] if len(cells) == 1 else r"\begin{tabular}[t]{@{}c@{}}" + r" \\ ".join(cells) + r"\end{tabular}"


def wrap(text: str, width: int) -> str:
    """Text as a cell broken into lines of at most ``width`` characters (a one-column tabular inside the cell, so
    that the table's columns stay ``l``/``c`` and long sentences do not widen it)."""
    import textwrap

    lines = textwrap.wrap(str(text), width) or [""]
    if len(lines) == 1:
        return escape(lines[0])
    return r"\begin{tabular}[t]{@{}l@{}}" + r" \\ ".join(escape(x) for x in lines) + r"\end{tabular}"


#: Before each row of a table whose cells run over several lines, so that rows stay apart (booktabs)
ROW_SPACE = r"\addlinespace[3pt]"


def power(text: str) -> str:
    """``1e13`` (or ``1e13 FLOPs``) as ``$10^{13}$``, ``2.5e12`` as ``$2.5\\times10^{12}$``; other text escaped."""
    m = re.match(r"^(\d+(?:\.\d+)?)e(-?\d+)(?: FLOPs)?$", str(text))
    if not m:
        return escape(text)
    mant, k = m.group(1), m.group(2)
    return f"$10^{{{k}}}$" if float(mant) == 1 else f"${mant}\\times10^{{{k}}}$"

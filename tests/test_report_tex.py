"""The report's LaTeX tables (tables.tex, report.tex) and the report from several results directories, on synthetic
run records (no training; the run-folder helpers of tests/test_report.py).

The expected significance (which entry, if any, is bold) is computed here with scipy and an independent Holm
correction, not with benchmark.report.stats.
"""
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_report import _acc, _holm, write_run

from benchmark.report import build, main
from benchmark.store.folders import EvaluationFolder

N = 40
FA, FB, FC, FF = "a" * 64, "b" * 64, "c" * 64, "f" * 64
BASE = np.random.default_rng(321).uniform(0.55, 0.95, N)


# ------------------------------------------------------------------------------------------------ a small parser
def _strip_comments(tex: str) -> str:
    return "\n".join(re.sub(r"(?<!\\)%.*", "", line) for line in tex.splitlines())


def _check_balanced(tex: str) -> None:
    """Braces balance (escaped braces aside) and every \\begin{env} is closed by its \\end{env}, in order."""
    tex = _strip_comments(tex)
    depth = 0
    for m in re.finditer(r"\\[{}]|[{}]", tex):
        if m.group() in ("\\{", "\\}"):
            continue
        depth += 1 if m.group() == "{" else -1
        assert depth >= 0, f"unbalanced closing brace near {tex[max(0, m.start() - 60):m.start() + 20]!r}"
    assert depth == 0, "unclosed braces"
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{([^}]*)\}", tex):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack[-1] == env, f"\\end{{{env}}} closes {stack[-1] if stack else 'nothing'}"
            stack.pop()
    assert not stack, f"unclosed environments {stack}"


def _split_cells(row: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)&", row)]


def parse_tables(tex: str) -> list[dict]:
    """Each table float: caption, header rows and body rows (cells), the footnote lines."""
    out = []
    for m in re.finditer(r"\\begin\{table\}.*?\\end\{table\}", _strip_comments(tex), re.S):
        t = m.group()
        caption = re.search(r"\\caption\{(.*)\}\n", t).group(1)
        tab = re.search(r"\\begin\{tabular\}\{(.*?)\}\n(.*?)\n\\end\{tabular\}\}\n", t, re.S)
        lines = tab.group(2).splitlines()
        assert lines[0] == r"\toprule" and lines[-1] == r"\bottomrule"
        first_mid = lines.index(r"\midrule")
        rows = [ln for ln in lines[first_mid + 1:-1] if ln != r"\midrule" and not ln.startswith(r"\multicolumn")]
        assert all(ln.endswith(r" \\") for ln in rows), rows
        head = [ln for ln in lines[1:first_mid] if ln.endswith(r" \\")]
        ncols = len(re.findall(r"[lcr]", re.sub(r"@\{[^}]*\}", "", tab.group(1))))
        body = [_split_cells(ln[:-3]) for ln in rows]
        assert all(len(c) == ncols for c in body), (ncols, body)
        foot = re.search(r"\\begin\{minipage\}\{\\linewidth\}\\scriptsize\\raggedright\n(.*?)\n\\end\{minipage\}",
                         t, re.S).group(1).splitlines()
        out.append({"caption": caption, "head": [_split_cells(h[:-3]) for h in head], "rows": body, "foot": foot})
    return out


def _bold(cell: str) -> bool:
    return cell.startswith(r"\textbf{")


def _significantly_best(acc: dict[str, np.ndarray], alpha=0.05) -> str | None:
    """Independent of benchmark.report.stats: the label better than every other one (Holm over all pairs)."""
    names = list(acc)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    ph = _holm([stats.ttest_rel(acc[a], acc[b]).pvalue for a, b in pairs])
    sig = {frozenset(p): v < alpha for p, v in zip(pairs, ph)}
    best = [m for m in names if all(sig[frozenset((m, o))] and acc[m].mean() > acc[o].mean()
                                    for o in names if o != m)]
    return best[0] if best else None


def test_escape_special_characters():
    from benchmark.report.latex import escape

    assert escape("a_b 5% x&y #2 c++ {d} ~e ^f \\g") == \
        r"a\_b 5\% x\&y \#2 c++ \{d\} \textasciitilde{}e \textasciicircum{}f \textbackslash{}g"
    assert escape("[lr=1] ± Δ †") == r"{[}lr=1{]} $\pm$ $\Delta$ \dag{}"
    assert escape("--eval-seed") == "-{}-eval-seed" and escape("Müller") == "Müller"


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def two_settings(tmp_path_factory):
    """5-way 1-shot: protonet clearly best; 5-way 5-shot: protonet ~ matching, both above maml (no winner); 20-way
    1-shot: one entry only, whose label needs escaping; a short-budget run. Three seeds per entry of the 5-way
    settings (bold needs at least 3 seeds per compared entry); ``acc`` holds the seed-averaged accuracies; FLOPs
    recorded by the 1-shot runs (a compute figure and table) except matching's (no compute curve)."""
    root = tmp_path_factory.mktemp("tex-res")
    acc = {1: {}, 5: {}}
    for shots, effects in ((1, {"protonet": 0.0, "matching": -0.12, "maml": -0.2}),
                           (5, {"protonet": 0.0, "matching": -0.003, "maml": -0.15})):
        for i, (m, eff) in enumerate(effects.items()):
            seeds = [_acc(10 * shots + i + 1000 * seed, eff, BASE) for seed in range(3)]
            acc[shots][m] = 100 * np.mean(seeds, axis=0)
            extra = {"budget_fraction": 0.05, "paper_train_episodes": 20000} if m == "maml" else {}
            if shots == 1 and m != "matching":
                extra["flops_per_train_episode"] = {"protonet": 4e9, "maml": 1.5e9}[m]
            for seed, a in enumerate(seeds):
                write_run(root, m, "initialization" if m == "maml" else "metric", shots=shots, acc=a, seed=seed,
                          fp=FA if shots == 1 else FB, summary_extra=extra or None)
    write_run(root, "new_net#2", "metric", ways=20, acc=_acc(99, 0.0, BASE), fp=FC,
              overrides=[("inner_lr", "5%&x"), ("tag", "a_b")])
    out = tmp_path_factory.mktemp("tex-rep") / "latest"
    res = build(root, out)
    return root, out, res, acc


def test_tex_files_parse_rows_cells_and_bold(two_settings):
    root, out, res, acc = two_settings
    assert res.tex == out / "report.tex" and (out / "tables.tex").is_file()
    tables_tex, report_tex = (out / "tables.tex").read_text(), res.tex.read_text()
    for tex in (tables_tex, report_tex):
        _check_balanced(tex)
        assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
        assert "±" not in tex and "†" not in tex and "Δ" not in tex  # LaTeX commands, not Unicode
    assert tables_tex in report_tex and r"\documentclass" in report_tex and r"\documentclass" not in tables_tex
    assert r"\begin{document}" not in tables_tex
    tables = parse_tables(tables_tex)
    mirror = [t for t in tables if t["caption"].startswith("Survey Table 1 mirror")]
    boards = {t["caption"]: t for t in tables if t["caption"].startswith("Leaderboard")}
    # Table 1 mirror: the survey's four settings first, two per float in a column's width (then the 20-way setting)
    assert len(mirror) == 3 and len(boards) == 3  # one block (conv4, smoke, 15 queries); three settings
    assert all("profile \\textbf{smoke}" in t["caption"] for t in mirror)
    methods = [r[0] for r in mirror[1]["rows"]]
    label = r"new\_net\#2 {[}inner\_lr=5\%\&x tag=a\_b{]}"
    assert methods[:4] == ["Siamese", "matching", "protonet", "relation"] and label in methods
    ours = {(r[0], s): r[1 + 2 * s] for r in mirror[1]["rows"] for s in range(2)}
    assert ours[(label, 0)] == "n.r." and ours[("Siamese", 1)] == "n.r."
    # bold exactly where the paired test (Holm) finds one entry better than every other one
    expected = {0: _significantly_best(acc[1]), 1: _significantly_best(acc[5]), 2: None}
    assert expected[0] == "protonet" and expected[1] is None  # the synthetic effects: one clear winner, one without
    for (m, s), cell in ours.items():
        assert _bold(cell) == (m == expected[s]), (m, s, cell)
    pm = re.compile(r"^(\\textbf\{\\boldmath )?\d+\.\d\d \$\\pm\$ \d+\.\d\d\}?(\\textsuperscript\{[\d,]+\})?$")
    for caption, t in boards.items():
        setting = 0 if "5-way 1-shot" in caption else 1 if "5-way 5-shot" in caption else 2
        assert len(t["rows"]) == {0: 3, 1: 3, 2: 1}[setting]
        assert all(pm.match(r[2]) for r in t["rows"])
        assert {r[0] for r in t["rows"] if _bold(r[2])} == ({expected[setting]} if expected[setting] else set())
        assert sum(_bold(c) for r in t["rows"] for c in r) == (1 if expected[setting] else 0)
    t1 = mirror[1]
    assert sum(_bold(c) for r in t1["rows"] for c in r) == 1

    # footnotes: the published figures' notes (protocol differences), one budget note, the CI conventions
    foot = "\n".join(t1["foot"])
    assert re.search(r"ProtoNets paper.*other protocol: test episodes: paper 1000, ours 40", foot)
    assert "queries: paper 1 per class, ours 15" in foot  # MAML's published figures
    assert foot.count("trained on 5.0") == 1 and "CIs are not comparable across papers" in foot

    # the survey in English and the compute convergence: tables in both files, the figure beside them
    for tex, env in ((tables_tex, "table"), ((out / "tables-wide.tex").read_text(), "table*")):
        captions = re.findall(r"\\begin\{" + re.escape(env) + r"\}\[htbp\]\n\\centering\n.*?\\caption\{([^\n]*)\}\n",
                              tex, re.S)
        assert sum(c.startswith("The survey's Table 1 in English") for c in captions) == 1
        assert sum(c.startswith("The survey's Table 2 in English") for c in captions) == 1
        assert sum(c.startswith("Accuracy at equal compute") for c in captions) == 1  # the 1-shot setting only
        figure = "figure*" if env == "table*" else "figure"
        shown = re.findall(r"\\begin\{" + re.escape(figure) + r"\}.*?\\includegraphics\[width=\\linewidth\]\{([^}]*)\}",
                           tex, re.S)
        assert len(shown) == 1 and (out / shown[0]).is_file() and "flops" in shown[0]
    compute = next(t for t in tables if t["caption"].startswith("Accuracy at equal compute"))
    assert [r[0] for r in compute["rows"]] == ["protonet", "maml"]  # matching recorded no FLOPs
    assert "No FLOPs recorded (no compute curve): matching" in "\n".join(compute["foot"])
    survey1 = next(t for t in tables if t["caption"].startswith("The survey's Table 1 in English"))
    assert len(survey1["rows"]) == 16


def test_tex_different_episodes_in_a_setting_are_not_bold(tmp_path):
    """A setting whose entries ran on two episode sets is not fully paired: no bold, a footnote says why."""
    res = tmp_path / "res"
    write_run(res, "protonet", "metric", acc=_acc(1, 0.0, BASE), fp=FA)
    write_run(res, "maml", "initialization", acc=_acc(2, -0.3, BASE), fp=FA)
    write_run(res, "relation", "metric", acc=_acc(3, -0.3, BASE), fp=FF)
    b = build(res, tmp_path / "rep")
    assert b.refusals
    tables = parse_tables((tmp_path / "rep/tables.tex").read_text())
    assert not any(_bold(c) for t in tables for r in t["rows"] for c in r)
    board = next(t for t in tables if t["caption"].startswith("Leaderboard"))
    foot = "\n".join(board["foot"])
    assert "fingerprint ffffffffffff" in foot and "fingerprint aaaaaaaaaaaa" in foot and "Refused:" in foot
    assert r"-{}-eval-seed" in foot  # the refusal's advice, hyphens kept
    if shutil.which("pdflatex"):
        _compile(shutil.which("pdflatex"), tmp_path / "rep", "report.tex")


def _pdflatex():
    exe = shutil.which("pdflatex")
    if exe is None:
        pytest.skip("pdflatex is not installed (apt-get install texlive-latex-base texlive-latex-recommended); "
                    "the LaTeX output is still checked by parsing")
    return exe


def _compile(exe, folder: Path, name: str):
    r = subprocess.run([exe, "-halt-on-error", "-interaction=nonstopmode", name], cwd=folder, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:]
    assert (folder / name.replace(".tex", ".pdf")).stat().st_size > 1000


def test_tex_compiles_standalone_and_in_a_paper(two_settings, tmp_path):
    exe = _pdflatex()
    root, out, res, acc = two_settings
    work = tmp_path / "tex"
    shutil.copytree(out, work)
    _compile(exe, work, "report.tex")
    for src in ("tables.tex", "report.tex"):  # \input into a paper's body: the tables only
        (work / f"paper-{src}").write_text("\\documentclass{article}\n\\usepackage{booktabs,graphicx}\n"
                                           "\\begin{document}\nText before.\n\\input{" + src + "}\n"
                                           "Text after.\n\\end{document}\n")
        _compile(exe, work, f"paper-{src}")
    # a two-column paper takes the wide tables (table*) at readable size
    (work / "paper-twocolumn.tex").write_text("\\documentclass[twocolumn]{article}\n\\usepackage{booktabs,graphicx}\n"
                                              "\\begin{document}\nText before.\n\\input{tables-wide.tex}\n"
                                              "Text after.\n\\end{document}\n")
    _compile(exe, work, "paper-twocolumn.tex")
    fonts = shutil.which("pdffonts")
    if fonts:  # Type 1 (scalable) fonts, which venues require, not Type 3 bitmaps
        listing = subprocess.run([fonts, str(work / "report.pdf")], capture_output=True, text=True).stdout
        assert "Type 1" in listing and "Type 3" not in listing, listing


# ------------------------------------------------------------------------------------------------ several directories
def _two_dirs(tmp_path):
    """A: the built-in methods; B, made later: a new method on the same episodes and one on other episodes."""
    a, b = tmp_path / "A", tmp_path / "B"
    acc = {"protonet": _acc(1, 0.0, BASE), "maml": _acc(2, -0.15, BASE), "newnet": _acc(3, -0.01, BASE)}
    write_run(a, "protonet", "metric", acc=acc["protonet"], fp=FA)
    write_run(a, "maml", "initialization", acc=acc["maml"], fp=FA)
    write_run(b, "newnet", "metric", acc=acc["newnet"], fp=FA)
    write_run(b, "relation", "metric", acc=_acc(4, 0.0, np.full(30, 0.8)), fp=FF)
    return a, b, acc


def test_two_results_dirs_pair_same_fingerprints_only(tmp_path, capsys):
    a, b, acc = _two_dirs(tmp_path)
    res = build([a, b], tmp_path / "rep")
    paired = pd.read_csv(tmp_path / "rep/paired.csv")
    assert len(paired) == 3 and set(paired["test_fingerprint"]) == {FA}  # protonet, maml, newnet: across A and B
    assert not ((paired["a"] == "relation") | (paired["b"] == "relation")).any()
    r = paired[(paired[["a", "b"]].apply(frozenset, axis=1) == frozenset(("protonet", "newnet")))].iloc[0]
    assert r["p"] == pytest.approx(stats.ttest_rel(100 * acc["protonet"], 100 * acc["newnet"]).pvalue, rel=1e-6)
    assert len(res.refusals) == 1 and "relation" in res.refusals[0]
    board = pd.read_csv(tmp_path / "rep/leaderboard.csv").set_index("method")
    assert set(board.index) == {"protonet", "maml", "newnet", "relation"}
    assert board.loc["relation", "test_fingerprint"] == FF and board.loc["newnet", "test_fingerprint"] == FA
    md = (tmp_path / "rep/report.md").read_text()
    prov = md.split('id="provenance"')[1]
    assert f"`{a}` (2 runs reported)" in prov and f"`{b}` (2 runs reported)" in prov
    assert "| Results directory |" in prov and f"| {b} |" in prov
    assert f"runs from `{a}`, `{b}`" in md
    # the command: --results-dir A B; exit code 2 for the refused pair, the report written
    for args in ([str(a), str(b)], [str(a), "--results-dir", str(b)]):
        rc = main(["--results-dir", *args, "--reports-dir", str(tmp_path / "cli")])
        err = capsys.readouterr().err
        assert rc == 2 and "paired comparison refused in 1 case(s)" in err
        assert pd.read_csv(tmp_path / "cli/latest/leaderboard.csv").equals(
            pd.read_csv(tmp_path / "rep/leaderboard.csv"))
    # one directory as before: no directory column
    rc = main(["--results-dir", str(a), "--reports-dir", str(tmp_path / "one")])
    assert rc == 0 and set(pd.read_csv(tmp_path / "one/latest/leaderboard.csv")["method"]) == {"protonet", "maml"}
    one = (tmp_path / "one/latest/report.md").read_text().split('id="provenance"')[1]
    assert "| Results directory |" not in one and f"`{a}` (2 runs reported)" in one


def _evaluation(run_dir: Path, eval_id: str, acc: np.ndarray):
    EvaluationFolder(run_dir, eval_id).write(
        {"eval_id": eval_id, "dataset": "omniglot", "ways": 5, "shots": 5, "queries": 15, "test_fingerprint": FC,
         "n_episodes": len(acc), "test_classes_seen_in_training": 0, "finished_at": "2026-01-02T00:00:00Z"},
        pd.DataFrame({"episode": range(len(acc)), "accuracy": acc, "adapt_seconds": 0.01}))


def test_duplicate_run_id_identical_kept_once_different_refused(tmp_path, capsys):
    a, b, acc = _two_dirs(tmp_path)
    rid = next(p.name for p in a.iterdir() if p.name.startswith("protonet"))
    shutil.copytree(a / rid, b / rid)  # the same run, copied to the other machine
    _evaluation(b / rid, "omniglot-5w5s-x", _acc(5, 0.0, BASE))  # re-tested there after the copy
    res = build([a, b], tmp_path / "rep")
    board = pd.read_csv(tmp_path / "rep/leaderboard.csv").set_index("method")
    assert board.loc["protonet", "n_seeds"] == 1 and board.loc["protonet", "run_ids"] == rid
    assert any(rid in n and "identical records" in n for n in res.notes)
    cross = pd.read_csv(tmp_path / "rep/cross_evaluation.csv")
    assert (cross["kind"] == "evaluation").sum() == 1  # the copy's evaluation is read
    prov = (tmp_path / "rep/report.md").read_text().split('id="provenance"')[1]
    assert f"`{a}` (2 runs reported)" in prov and f"`{b}` (3 runs reported)" in prov
    # the same run id with other records: refused, one line naming both folders
    s = json.loads((b / rid / "summary.json").read_text())
    s["finished_at"] = "2026-03-01T00:00:00Z"
    (b / rid / "summary.json").write_text(json.dumps(s))
    rc = main(["--results-dir", str(a), str(b), "--reports-dir", str(tmp_path / "cli")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: run ")
    assert str(a / rid) in lines[0] and str(b / rid) in lines[0] and "different records" in lines[0]
    assert not (tmp_path / "cli").exists()
    # a results directory without finished runs among several: refused too
    (tmp_path / "empty").mkdir()
    rc = main(["--results-dir", str(a), str(tmp_path / "empty"), "--reports-dir", str(tmp_path / "cli")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no finished runs in" in err[0] and "empty" in err[0]

"""The survey's Table 1, Table 2 and remarks in English in the report, and convergence against meta-training compute
("accuracy at equal compute"), on synthetic run records (no training; the run-folder helper of tests/test_report.py).

The expected compute figures are worked out here by hand from the constructed curves, not with benchmark.report.
"""
import math
import re

import numpy as np
import pandas as pd
import pytest
from test_report import write_run

from benchmark.report import build
from benchmark.report.reference import load_survey, load_survey_remarks, load_survey_table2

FP = "a" * 64
ACC = np.round(np.random.default_rng(5).uniform(0.5, 0.9, 20) * 75) / 75


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """protonet: 4 GFLOP/episode, validated at 100, 1000 and 2000 episodes (4e11, 4e12, 8e12 FLOPs); maml: 1.5
    GFLOP/episode at 100, 2000 and 20000 episodes (1.5e11, 3e12, 3e13), with a pretrained artefact; relation: no
    FLOPs recorded (older run)."""
    root = tmp_path_factory.mktemp("survey-res")
    write_run(root, "protonet", "metric", acc=ACC, fp=FP, curve=((100, 50.0), (1000, 70.0), (2000, 80.0)),
              summary_extra={"flops_per_train_episode": 4e9})
    write_run(root, "maml", "initialization", acc=ACC, fp=FP, curve=((100, 40.0), (2000, 60.0), (20000, 75.0)),
              summary_extra={"flops_per_train_episode": 1.5e9},
              cache=[{"name": "mtl-pretrain", "file": "cache/p.pt", "seconds": 5.0, "computed_in_this_run": True}])
    write_run(root, "relation", "metric", acc=ACC, fp=FP)
    out = tmp_path_factory.mktemp("survey-rep") / "latest"
    res = build(root, out)
    return out, res, root


def _section(md: str, start: str, end: str) -> str:
    return md.split(f'id="{start}"')[1].split(f'id="{end}"')[0]


def test_survey_files_are_complete_translations():
    """The package's survey files: 16 rows of Table 1 with an English idea and family each, five rows of Table 2 with
    every cell translated, the seven remarks; no Chinese left in the English columns, the figures as the survey's."""
    t1, t2, rm = load_survey(), load_survey_table2(), load_survey_remarks()
    assert len(t1) == 16 and list(t1["order"]) == list(range(1, 17))
    assert (t1["idea"].str.len() > 10).all() and (t1["family"] != "").all()
    assert sum(t1["implemented"]) == 7 and set(t1.loc[~t1["implemented"], "method"]) == {
        "Siamese", "CMAML", "MLAP", "VERSA", "CAVIA", "LEO", "MANN", "APL", "MM-Net"}
    english = [*t1["idea"], *t1["family"], *t1["name"], *t1["note"]]
    english += [v for c in ("support_embedding", "query_embedding", "distance", "strengths", "shortcomings")
                for v in t2[c]] + list(rm["remark"])
    assert not [v for v in english if any("\u4e00" <= ch <= "\u9fff" for ch in v)]
    assert all(v for v in english[:48])  # ideas, families and names: none empty
    assert len(t2) == 5 and (t2[["strengths", "shortcomings"]] != "").all().all()
    assert len(rm) == 7 and set(rm["method"]) == {"maml", "reptile", "mtl"} and set(rm["section"]) == {"3.2.2", "4.3"}
    fig = t1.set_index("method")
    assert fig.loc["Siamese", "omniglot_5w1s"] == 92.0 and math.isnan(fig.loc["Siamese", "omniglot_5w5s"])
    assert fig.loc["VERSA", "miniimagenet_5w5s"] == 67.37 and fig.loc["APL", "omniglot_5w5s"] == 99.9
    assert math.isnan(fig.loc["APL", "miniimagenet_5w1s"]) and fig.loc["MM-Net", "omniglot_5w1s"] == 99.28


def test_report_shows_the_survey_in_english_everywhere(report):
    out, _, _ = report
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    tex = (out / "tables.tex").read_text() + (out / "tables-wide.tex").read_text()
    for text in (md, html, tex):
        assert "not transcribed" not in text
    t1, t2, rm = load_survey(), load_survey_table2(), load_survey_remarks()
    table1, table2 = _section(md, "table1", "table2"), _section(md, "table2", "paired")
    for r in t1.itertuples():
        assert r.idea in table1  # in the mirror and in the survey's Table 1 in English
    survey1 = _section(md, "survey-table1", "table2")
    rows = [ln for ln in survey1.splitlines() if ln.startswith("| ") and not ln.startswith(("| Survey's name", "| ---"))]
    assert len(rows) == 16
    assert "| VERSA | initialization-based |" in survey1 and "| 53.80 | 67.37 | 99.70 | 99.75 | not implemented here |" \
        in survey1
    assert "| Prototypical network (protonet) | metric-based |" in survey1 and "protonet (in this report)" in survey1
    assert "| APL | surprise-based |" in survey1 and "| — | — | 97.90 | 99.90 | not implemented here |" in survey1
    assert "Siamese (not implemented here)" in table1 and "tadam (not in this report)" in table1
    assert "translated from its Chinese by this project" in survey1
    for r in t2.itertuples():
        for v in (r.support_embedding, r.query_embedding, r.distance, r.strengths, r.shortcomings):
            assert v in table2
    remarks = _section(md, "survey-remarks", "paired")
    for r in rm.itertuples():
        assert r.remark in remarks
    assert "| MTL (mtl) | 3.2.2 | shortcoming |" in remarks and "| Reptile (reptile) | 4.3 | remark |" in remarks
    assert "| MAML (maml; in this report) | 4.3 | strength |" in remarks
    # HTML and LaTeX carry the same sentences (LaTeX escapes apostrophes nowhere; wrapping breaks at spaces)
    assert t2.set_index("method").loc["tadam", "shortcomings"] in html
    flat = " ".join(tex.replace(r" \\ ", " ").split())
    for r in rm.itertuples():
        assert r.remark in flat
    for r in t1.itertuples():
        assert r.idea in flat


def test_matching_embeddings_survey_and_paper_both_shown(report):
    """The survey gives Matching Networks' embeddings the other way round from the paper: its cells are shown as it
    gives them, and a footnote gives the paper's and says which the project follows."""
    out, _, _ = report
    table2 = _section((out / "report.md").read_text(), "table2", "paired")
    row = next(ln for ln in table2.splitlines() if ln.startswith("| matching (not in this report)"))
    assert "| CNN, LSTM with attention | CNN, biLSTM | cosine distance |" in row
    assert "g embeds the support set (a CNN, then a bidirectional LSTM" in table2
    assert "This project follows the original paper." in table2
    tex = (out / "tables.tex").read_text()
    assert "This project follows the original paper." in tex


def test_accuracy_at_equal_compute_and_not_reached(report):
    out, _, _ = report
    table = pd.read_csv(out / "equal_compute.csv")
    # default budgets: from the first validation (1.5e11) to the largest total (3e13) only two powers of ten, so
    # 1, 2 and 5 x 10^k, the five largest
    assert sorted(set(table["budget_flops"])) == [1e12, 2e12, 5e12, 1e13, 2e13]
    got = {(r.method, r.budget_flops): (r.status, r.val_acc) for r in table.itertuples()}
    # write_run's single seed sits 1 point below the given curve
    assert got[("protonet", 1e12)] == ("reached", 49.0)  # 4e11 <= 1e12 < 4e12
    assert got[("protonet", 1e13)][0] == "not reached"  # it stopped at 2000 x 4e9 = 8e12
    assert got[("maml", 1e12)] == ("reached", 39.0)  # 1.5e11 <= 1e12 < 3e12
    assert got[("maml", 1e13)] == ("reached", 59.0)  # 3e12 <= 1e13 < 3e13
    assert got[("protonet", 5e12)] == ("reached", 69.0) and got[("maml", 2e12)] == ("reached", 39.0)
    assert set(table["method"]) == {"protonet", "maml"}  # relation recorded no FLOPs
    md = (out / "report.md").read_text()
    compute = _section(md, "compute", "episodes")
    assert ("| Method | GFLOP / training episode | Training FLOPs (total) | 1e12 FLOPs | 2e12 FLOPs | 5e12 FLOPs | "
            "1e13 FLOPs | 2e13 FLOPs |") in compute
    assert "| maml | 1.50 | 3e13 | 39.00 | 39.00 | 59.00 | 59.00 | 59.00 |" in compute
    assert "| protonet | 4.00 | 8e12 | 49.00 | 49.00 | 69.00 | not reached | not reached |" in compute
    assert "No compute curve for relation" in compute
    assert "Pretraining not counted: maml (mtl-pretrain) used a pretrained artefact" in compute
    assert "Pretraining not counted: maml (mtl-pretrain)" in (out / "tables.tex").read_text()
    assert "validation and test are excluded" in compute and "pretraining" in compute
    assert (out / "convergence-flops-omniglot-5w1s-q15-conv4-smoke.png").is_file()
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", (out / "report.html").read_text())
    flops = [c for c in captions if "cumulative meta-training FLOPs" in c]
    assert len(flops) == 1 and "validation and test are excluded" in flops[0] and "`" not in flops[0]


def test_budgets_given_and_before_first_validation(report):
    """Budgets passed explicitly: below every first validation point; between points; beyond what a run spent."""
    from benchmark.report.entries import build_entries
    from benchmark.report.records import load_runs
    from benchmark.report.tables import accuracy_at_compute

    _, _, root = report
    entries = build_entries(load_runs(root).runs)
    t = accuracy_at_compute(entries, [1e11, 2e11, 5e12, 2e13])
    got = {(r.method, r.budget_flops): (r.status, None if math.isnan(r.val_acc) else r.val_acc)
           for r in t.itertuples()}
    assert got[("maml", 1e11)] == ("before first validation", None)
    assert got[("maml", 2e11)] == ("reached", 39.0) and got[("protonet", 2e11)] == ("before first validation", None)
    assert got[("protonet", 5e12)] == ("reached", 69.0) and got[("maml", 5e12)] == ("reached", 59.0)
    assert got[("protonet", 2e13)] == ("not reached", None) and got[("maml", 2e13)] == ("reached", 59.0)
    assert not len(t[t["method"] == "relation"])

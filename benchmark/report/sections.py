"""The report's sections, each written into a :class:`~benchmark.report.render.Doc` from the entries and tables:
1 the survey's Table 1 mirrored (measured vs published) and 2 the metric methods (survey Table 2), in
:mod:`benchmark.report.survey_sections`; 3 paired statistics and ranks; 4 convergence, in
:mod:`benchmark.report.convergence`; 5 episode counts to accuracy thresholds; 6 cost; 7 cross-evaluation of saved
models (``benchmark.evaluate`` records); 8 provenance. Sections 1, 2 and 4 stay importable from here."""
from __future__ import annotations

import math

import pandas as pd

from ..store.compare import PROVENANCE
from ..store.compare import provenance as recorded_facts
from .common import SETTING_KEYS, short
from .convergence import (
    compute_convergence,
    compute_entries,
    compute_figure_name,
    convergence,
    equal_compute_frame,
    flops_text,
    pretraining_note,
)
from .entries import Entry, by_setting, few_seeds, seed_note
from .render import Doc
from .stats import MIN_SEEDS
from .survey_sections import (
    SURVEY_T2_COLUMNS,
    metric_methods,
    survey_remarks,
    survey_setting_label,
    survey_table1,
    table1_mirror,
)
from .table1 import published_note, table1_blocks, table1_rows, table1_settings
from .tables import FINAL_FRACTION, setting_rows, shared_artefacts
from .tables import cross_evaluation as cross_table
from .tables import episode_counts as count_episodes
from .text import (
    COMPUTE_COUNTS,
    NOT_HERE,
    PUBLISHED_FOOTER,
    STAT_TEST,
    SURVEY_ATTRIBUTION,
    commit_text,
    count_text,
    decimal_text,
    method_cell,
    p_text,
    percent_text,
    seconds_text,
    setting_title,
)

__all__ = ["paired", "episode_counts", "cost", "cross_evaluation", "provenance", "varying_facts", "budget_text",
           # sections 1 and 2 (benchmark.report.survey_sections) and 4 (benchmark.report.convergence)
           "table1_mirror", "survey_table1", "metric_methods", "survey_remarks", "survey_setting_label",
           "SURVEY_T2_COLUMNS", "convergence", "compute_convergence", "flops_text", "compute_figure_name",
           "compute_entries", "pretraining_note", "equal_compute_frame",
           # the Table 1 model (benchmark.report.table1) and the shared texts (benchmark.report.text)
           "table1_blocks", "table1_settings", "table1_rows", "published_note", "STAT_TEST", "NOT_HERE",
           "SURVEY_ATTRIBUTION", "PUBLISHED_FOOTER", "COMPUTE_COUNTS"]


def _seeds_label(e: Entry) -> str:
    n = int(e.row["n_seeds"])
    return f"{e.label} ({n} seed{'s' if n != 1 else ''})"


def budget_text(fraction: float) -> str:
    """A run's meta-training budget as a share of the paper profile's, as the Table 1 mirror writes it."""
    return f"budget {percent_text(100.0 * fraction)} of the paper's"


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
                doc.table(_pairs_table(res.pairs, alpha))
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


def _pairs_table(pairs: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """The paired tests of a set of entries (:attr:`~benchmark.report.stats.PairedResult.pairs`) as shown."""
    return pd.DataFrame({"Method A": pairs["a"], "Method B": pairs["b"],
                         "Δ accuracy (A − B)": pairs["difference"].map(lambda v: f"{v:+.2f}"),
                         "t": pairs["t"].map(lambda v: decimal_text(v, 2)), "p": pairs["p"].map(p_text),
                         "p (Holm)": pairs["p_holm"].map(p_text),
                         f"Significant (α = {alpha:g})": pairs["significant"].map(lambda v: "yes" if v else "no")})


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
        here = setting_rows(counts, setting)
        rows = [_count_row(e, here[here["method"] == e.label]) for e in es]
        doc.table(pd.DataFrame(rows).fillna("—"))
    return counts


def _count_row(e: Entry, c: pd.DataFrame) -> dict:
    """An entry's row of the episode-count table, from its rows ``c`` of the long table (one per target)."""
    row = {"Method": method_cell(e)}
    for r in c.itertuples():
        at = f"{count_text(r.train_episodes)} ep · {seconds_text(r.train_seconds)}"
        if "final" in r.target:
            row[f"{r.target}"] = (f"{at} (≥ {decimal_text(r.threshold, 1)}%)" if r.reached
                                  else f"not reached (target {decimal_text(r.threshold, 1)}%)")
        else:
            col = f"≥ {r.target}" if r.target.endswith("%") else f"{r.target} ({decimal_text(r.threshold, 1)}%)"
            row[col] = at if r.reached else f"not reached (best {decimal_text(r.best_val_acc, 1)}%)"
    if len(c):
        row["Final val. acc (%)"] = decimal_text(c["final_val_acc"].iloc[0])
        row["Validated every (episodes)"] = count_text(c["val_every_episodes"].iloc[0])
        row["Seeds"] = int(c["n_seeds"].iloc[0])
    return row


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
        doc.table(pd.DataFrame([_cost_row(e) for e in es]))
    arts = shared_artefacts(runs)
    doc.h(3, "Shared artefacts (counted once)")
    if len(arts):
        t = pd.DataFrame({"Artefact": arts["artefact"], "File": arts["file"],
                          "Seconds": arts["seconds"].map(seconds_text),
                          "Computed by": arts["computed_by"].replace("", "an earlier run"),
                          "Used by (runs)": arts["n_runs"]})
        doc.table(t, ["Computed once and reused from the results cache; not included in any run's training time."])
    else:
        doc.p("None: no run used a cached artefact.")


def _cost_row(e: Entry) -> dict:
    """An entry's row of the cost table."""
    r = e.row
    gradient = e.info.family in ("initialization", "optimizer") or e.info.adapts_at_test

    def params(v):
        return count_text(v) if str(v).isdigit() else v

    return {"Method": method_cell(e), "Training episodes": count_text(r["train_episodes"]),
            "Training time": seconds_text(r["train_seconds"]),
            "ms / training episode": decimal_text(r["ms_per_train_episode"], 1),
            "GFLOP / training episode": decimal_text(r["flops_per_train_episode"] / 1e9, 2)
            if not math.isnan(r["flops_per_train_episode"]) else "—",
            "ms / test episode": decimal_text(r["ms_per_test_episode"], 1),
            "Memory added by the run (MB)": (f"{decimal_text(r['peak_memory_increase_mb'], 0)} "
                                             f"({_memory_label(r['memory_kind'])})"
                                             if not math.isnan(r["peak_memory_increase_mb"]) else "—"),
            "Peak memory (MB)": f"{decimal_text(r['peak_memory_mb'], 0)} ({r['memory_kind'] or '?'})",
            "Trainable parameters": params(r["trainable_params"]),
            "Adapted per task": params(r["adapted_params"]) if gradient else "—",
            "Shared artefacts used (s)": seconds_text(r["shared_seconds"]) if r["shared_seconds"] else "—"}


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

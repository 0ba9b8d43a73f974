"""python -m benchmark.reproduce: reproduction bundles, runs at their papers' budgets that anyone can re-test.

A bundle is a folder (``reproduce/<dataset>/``) with one sub-folder per finished run, named by its run id, holding
the run's records exactly as the store wrote them (``config.json``, ``summary.json``, ``curve.csv``,
``test_episodes.csv``), its best model (``model.pt``) and ``manifest.json``: the exact command, the commit, the
machine, the wall clock, and whether the run was resumed. ``python -m benchmark.report --results-dir
reproduce/omniglot`` builds the ordinary report from it, since a bundle is a results directory.

  add     copy finished runs into a bundle with their manifest (refuses unfinished runs and runs without a model)
  verify  re-test every shipped model on its recorded test episodes, with the run's own thread count, and compare
          with the recorded per-episode accuracies: exit 0 when every episode agrees exactly, 1 when any differs
          (each run's differences are listed)
  table   the bundle's results as a markdown table (measured vs published); --readme FILE rewrites the block
          between ``<!-- reproduce:begin -->`` and ``<!-- reproduce:end -->`` in FILE, so the table cannot drift
          from the records (a test checks it)

Bad input (a missing bundle or run folder, an unfinished run, a run without model.pt) prints one line and exits 2.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from .cli.toolkit import EXIT_FAILED, EXIT_OK, Parser, UsageError, at_least, usage_errors

BEGIN, END = "<!-- reproduce:begin -->", "<!-- reproduce:end -->"
MANIFEST = "manifest.json"
#: The files of a run that a bundle keeps (the store's names; model.pt is required).
RECORDS = ("config.json", "summary.json", "curve.csv", "test_episodes.csv", "model.pt")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m benchmark.reproduce", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="examples:\n"
                      "  python -m benchmark.reproduce verify                                # reproduce/omniglot\n"
                      "  python -m benchmark.reproduce add results/RUN --command 'python -m benchmark.run ...' "
                      "--wall-seconds 5400\n"
                      "  python -m benchmark.reproduce table --readme docs/reproduction.md")
    sub = p.add_subparsers(dest="what", required=True, parser_class=Parser)
    a = sub.add_parser("add", help="copy finished runs into a bundle with their manifest")
    a.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders (results/<run-id>)")
    a.add_argument("--bundle", default="reproduce/omniglot", help="the bundle folder; default: reproduce/omniglot")
    a.add_argument("--command", required=True, help="the exact command that produced the runs")
    a.add_argument("--wall-seconds", type=float, default=None,
                   help="the command's wall clock in seconds, when it ran one run (e.g. from /usr/bin/time)")
    a.add_argument("--where", default=None, help="where it ran, in words (default: the recorded CPU or GPU name)")
    v = sub.add_parser("verify", help="re-test the shipped models and compare with their records, episode by episode")
    v.add_argument("--bundle", default="reproduce/omniglot", help="the bundle folder; default: reproduce/omniglot")
    v.add_argument("--runs", nargs="+", default=None, metavar="RUN_ID", help="only these run ids; default: all")
    v.add_argument("--device", default="cpu", help="cpu | cuda[:N]; default: cpu (exact agreement is expected on "
                   "the recorded device, thread count and instruction set)")
    v.add_argument("--threads", type=int, default=None, help="CPU threads; default: each run's recorded count")
    v.add_argument("--first", type=int, default=None, metavar="N",
                   help="re-test only each run's first N recorded test episodes (a quicker check; the fingerprint is "
                        "still that of all of them); default: all")
    t = sub.add_parser("table", help="the bundle as a markdown table (measured vs published)")
    t.add_argument("--bundle", default="reproduce/omniglot", help="the bundle folder; default: reproduce/omniglot")
    t.add_argument("--readme", default=None, metavar="FILE", help="rewrite the table block in FILE instead of printing")
    return p


def bundle_runs(bundle: str | Path) -> list[Path]:
    """The run folders of a bundle, sorted by run id; UsageError when the bundle is missing."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise UsageError(f"bundle {bundle} does not exist (python -m benchmark.reproduce add fills one)")
    return sorted(d for d in bundle.iterdir() if (d / "summary.json").is_file())


def manifest(summary: dict, command: str, wall_seconds: float | None, where: str | None) -> dict:
    """The bundle's record of how a run was made."""
    from .store.files import utc_timestamp

    env = summary.get("environment") or {}
    return {
        "run_id": summary["run_id"], "command": command, "commit": summary.get("code_version"),
        "where": where or env.get("device_name") or summary.get("device"),
        "device": summary.get("device"), "threads": env.get("threads"), "platform": env.get("platform"),
        "cpu_model": env.get("cpu_model"), "cpu_capability": env.get("cpu_capability"),
        "versions": {k: env.get(k) for k in ("python", "torch", "numpy", "pandas", "onednn", "mkl", "blas")},
        "wall_seconds": wall_seconds, "train_seconds": summary.get("train_seconds"),
        "val_seconds": summary.get("val_seconds"), "resumed_at_steps": summary.get("resumed_at_steps") or [],
        "budget_fraction": summary.get("budget_fraction"), "test_fingerprint": summary.get("test_fingerprint"),
        "finished_at": summary.get("finished_at"),
        "added_at": utc_timestamp(),
    }


def add(runs: list[str], bundle: str | Path, command: str, wall_seconds: float | None = None,
        where: str | None = None) -> list[Path]:
    """Copy each finished run's records and model into ``bundle/<run-id>/`` with its manifest; everything is
    checked before anything is copied."""
    from .store.files import atomic_write_json
    from .store.folders import RecordError, RunFolder

    at_least("--wall-seconds", wall_seconds, low=0)
    folders = []
    for r in runs:
        folder = RunFolder.from_path(r)
        if not folder.is_finished():
            raise UsageError(f"{r} is not a finished run folder (no summary.json)")
        missing = [f for f in RECORDS if not (folder.path / f).is_file()]
        if missing:
            raise UsageError(f"{folder.path} lacks {', '.join(missing)}: a bundle needs the records and the model")
        try:
            folders.append((folder, folder.read_summary()))
        except RecordError as e:
            raise UsageError(str(e)) from None
    out = []
    for folder, summary in folders:
        dest = Path(bundle) / summary["run_id"]
        tmp = dest.with_name(dest.name + ".adding")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in RECORDS:
            shutil.copy2(folder.path / f, tmp / f)
        atomic_write_json(tmp / MANIFEST, manifest(summary, command, wall_seconds, where))
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        out.append(dest)
    return out


def verify_run(run_dir: Path, device: str = "cpu", threads: int | None = None, first: int | None = None) -> dict:
    """Re-test a shipped model on its recorded test episodes (``first``: only the first N of them; an episode is a
    function of its index, so they are the same episodes); {run_id, episodes, differ, max_abs_diff, fingerprint_ok,
    threads, mean, n_recorded}: ``episodes`` counts those re-tested, ``fingerprint_ok`` is over all the recorded episodes."""
    import numpy as np
    import torch

    from .data import load_dataset
    from .pipeline.episode_sets import episode_set
    from .pipeline.machine import resolve_device
    from .pipeline.models import read_model, rebuild
    from .pipeline.steps import evaluate
    from .store.folders import RunFolder

    folder = RunFolder.from_path(run_dir)
    summary, config = folder.read_summary(), folder.read_config()
    recorded = folder.read_test_episodes()["accuracy"].to_numpy(dtype=np.float64)
    n_all = int(summary["n_episodes"])
    if first is not None:
        recorded = recorded[:first]
    threads = threads or (summary.get("environment") or {}).get("threads") or torch.get_num_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        dev = resolve_device(device)
        method = rebuild(read_model(run_dir), dev)
        ds = load_dataset(summary["dataset"], config.get("data_dir"), summary.get("split") or None)
        shape = (ds, "test", summary["ways"], summary["shots"], summary["queries"], config.get("eval_seed", 0))
        recorded_set = episode_set(*shape, n_all)
        retested = recorded_set if first is None or first >= n_all else episode_set(*shape, first)
        acc, _ = evaluate(method, retested, dev, precision=summary.get("precision", "fp32"))
        fingerprint = recorded_set.fingerprint
    finally:
        torch.set_num_threads(before)
    acc = np.asarray(acc, dtype=np.float64)
    same_shape = acc.shape == recorded.shape
    diff = np.abs(acc - recorded) if same_shape else np.array([np.inf])
    return {"run_id": summary["run_id"], "episodes": int(recorded.size), "n_recorded": n_all,
            "differ": int((diff != 0).sum()),
            "max_abs_diff": float(diff.max()) if diff.size else 0.0, "threads": int(threads),
            "fingerprint_ok": fingerprint == summary.get("test_fingerprint"),
            "mean": 100 * float(acc.mean()) if acc.size else float("nan")}


def _share(f) -> str:
    return "" if f is None else f"{100 * f:.3g}%"


def _hours(s) -> str:
    return "" if s is None else f"{s / 3600:.2f}"


def table(bundle: str | Path) -> str:
    """The bundle's runs, one row each: setting, accuracy +- CI over the test episodes, the published figure and
    its CI, the budget share, training hours and where the run was made."""
    from .report.common import norm_dataset
    from .report.reference import hyperparameters_match, load_reference, parse_hyperparameters

    ref = load_reference()
    rows = ["| method | setting | accuracy ± 95% CI (test episodes) | published | budget, share of the paper's | "
            "training hours | where | resumed at step |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for d in bundle_runs(bundle):
        s = json.loads((d / "summary.json").read_text())
        m = json.loads((d / MANIFEST).read_text()) if (d / MANIFEST).is_file() else {}
        variant_of = (s.get("method_facts") or {}).get("variant_of")
        hp = json.loads((d / "config.json").read_text()).get("hyperparameters") or {}
        pub = ref[(ref["method"] == (variant_of or s["method"])) & (ref["dataset_key"] == norm_dataset(s["dataset"]))
                  & (ref["ways"] == s["ways"]) & (ref["shots"] == s["shots"])]
        like = [r for _, r in pub.iterrows() if hyperparameters_match(parse_hyperparameters(r["hyperparameters"]), [hp])]
        p = like[0] if like else (None if variant_of or pub.empty else pub.iloc[0])
        published = "" if p is None else f"{p['accuracy']:g}" + ("" if p["ci95"] != p["ci95"] else f" ± {p['ci95']:g}")
        if p is not None and not like and p["hyperparameters"]:
            published += f" ({p['hyperparameters']})"
        resumed = ", ".join(str(x) for x in m.get("resumed_at_steps") or s.get("resumed_at_steps") or []) or "no"
        rows.append(f"| {s['method']} | {s['dataset']} {s['ways']}-way {s['shots']}-shot | {s['mean']:.2f} ± "
                    f"{s['ci95']:.2f} ({s['n_episodes']}) | {published} | {_share(s.get('budget_fraction'))} | "
                    f"{_hours(s.get('train_seconds'))} | {m.get('where', s.get('device', ''))} | {resumed} |")
    return "\n".join(rows) + "\n"


def write_block(path: str | Path, text: str) -> bool:
    """Replace the reproduce block in ``path`` with ``text``; True when the file changed."""
    path = Path(path)
    old = path.read_text()
    if BEGIN not in old or END not in old:
        raise UsageError(f"{path} has no {BEGIN} ... {END} block")
    head, rest = old.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{text}{END}{tail}"
    if new != old:
        path.write_text(new)
    return new != old


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return usage_errors(lambda: _main(args))


def _main(args) -> int:
    if args.what == "add":
        for d in add(args.runs, args.bundle, args.command, args.wall_seconds, args.where):
            print(f"added {d}", file=sys.stderr)
        return EXIT_OK
    if args.what == "table":
        text = table(args.bundle)
        if args.readme:
            changed = write_block(args.readme, text)
            print(f"{args.readme}: {'table rewritten' if changed else 'already up to date'}", file=sys.stderr)
        else:
            print(text, end="")
        return EXIT_OK
    at_least("--threads", args.threads)
    at_least("--first", args.first)
    runs = bundle_runs(args.bundle)
    if args.runs:
        unknown = set(args.runs) - {d.name for d in runs}
        if unknown:
            raise UsageError(f"not in {args.bundle}: {', '.join(sorted(unknown))}")
        runs = [d for d in runs if d.name in args.runs]
    if not runs:
        raise UsageError(f"{args.bundle} holds no run")
    bad = 0
    for d in runs:
        r = verify_run(d, args.device, args.threads, args.first)
        ok = r["differ"] == 0 and r["fingerprint_ok"]
        bad += not ok
        what = (f"{'all ' if r['episodes'] == r['n_recorded'] else 'the first '}{r['episodes']} test episodes identical"
                if ok else
                f"{r['differ']} of {r['episodes']} episodes differ (largest difference {r['max_abs_diff']:.4g})"
                + ("" if r["fingerprint_ok"] else "; the test episodes' fingerprint differs from the record's"))
        print(f"{r['run_id']}: {what} ({r['mean']:.2f} %, {r['threads']} threads)")
    print(f"{len(runs) - bad} of {len(runs)} shipped models re-test exactly")
    return EXIT_OK if not bad else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

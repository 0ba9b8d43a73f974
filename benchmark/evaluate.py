"""python -m benchmark.evaluate: re-test trained runs' saved models on a fixed episode set, without re-training.

Each selected run (--runs FOLDER ..., or every finished run with a saved model under --results-dir, optionally
filtered by --methods) loads its model.pt and is tested on the test episodes given by --dataset, --split, --data-dir,
--ways, --shots, --queries, --test-episodes and --eval-seed (each defaults to the run's own: its dataset and split,
its ways and shots, its number of test episodes; --eval-seed 0 and 15 queries as in benchmark.run), with the
runner's own evaluation loop, so re-testing a run on its own test episodes reproduces its recorded accuracies.
Every combination of --ways x --shots is one evaluation. Results go next to the training run's records, in
<run>/evaluations/<eval-id>/ (evaluation.json and test_episodes.csv; the training run's files are never touched);
an evaluation whose episodes (their fingerprint) were already tested is skipped. Everything is checked before
anything is computed: a target dataset whose image shape differs from the model's, or a number of ways the model's
classifier cannot take (MAML, Reptile and Meta-LSTM have one output per trained class), prints one line and exits
with code 2, as does any bad input (a value of the wrong type or out of range: counts and --threads at least 1,
--eval-seed 0 or more) and a run folder whose records are damaged or foreign (the file is named: delete that folder
and re-run it). `python -m benchmark.report` then lists the evaluations in its cross-evaluation table.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .cli.toolkit import (
    EXIT_USAGE,
    Parser,
    UsageError,
    at_least,
    existing_dir,
    note,
    progress_factory,
    usage_errors,
)
from .pipeline.method_options import add_method_files, announce_method_files, load_method_files

__all__ = ["EXIT_USAGE", "EvaluationJob", "UsageError", "eval_id", "main", "parser", "plan", "record", "evaluate_job"]


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m benchmark.evaluate", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m benchmark.evaluate --runs results/protonet-omniglot-5w1s-conv4-quick-s0 --ways 20 "
               "--shots 1 5\n"
               "  python -m benchmark.evaluate --methods protonet,maml --test-episodes 1000\n"
               "  python -m benchmark.evaluate --runs results/RUN --dataset omniglot --split lake")
    p.add_argument("--runs", nargs="+", default=None, metavar="RUN",
                   help="run folders (results/<run-id>) or their model.pt; default: every finished run with a saved "
                        "model under --results-dir")
    p.add_argument("--results-dir", default="results", help="where to find runs without --runs; default: results")
    p.add_argument("--methods", default=None, help="only runs of these methods (comma list, 'all' or 'variants' as "
                   "in benchmark.run); default: every selected run")
    add_method_files(p)
    p.add_argument("--dataset", default=None, help="test dataset; default: each run's own")
    p.add_argument("--split", default=None, help="the test dataset's named class split (the test classes of it are "
                   "used); default: the run's own split for its own dataset, else the dataset's default")
    p.add_argument("--data-dir", default=None, help="folder with the test dataset; default: the run's own for its "
                   "own dataset, else the embedded Omniglot")
    p.add_argument("--ways", type=int, nargs="+", default=None, help="classes per test episode; default: the run's")
    p.add_argument("--shots", type=int, nargs="+", default=None, help="support examples per class; default: the run's")
    p.add_argument("--queries", type=int, default=15, help="query examples per class; default: 15")
    p.add_argument("--test-episodes", type=int, default=None, help="test episodes; default: the run's number")
    p.add_argument("--eval-seed", type=int, default=0, help="seed of the test episodes; default: 0 (benchmark.run's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]; default: auto (CUDA when present)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch, at least 1; default: "
                   "PyTorch's")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


@dataclass
class EvaluationJob:
    """One evaluation: a run's saved model on one fixed episode set."""

    run_dir: Path
    summary: dict
    payload: dict  # model.pt
    method: object  # the saved model, rebuilt once per run folder on the evaluation's device (benchmark.pipeline.models)
    dataset: object  # FewShotDataset
    data_dir: str | None
    episodes: object  # EpisodeSet
    folder: object  # EvaluationFolder
    seen: int | None = None  # test classes that were training or validation classes of the run (same dataset)

    @property
    def label(self) -> str:
        ds, spec = self.dataset, self.episodes.spec
        return f"{ds.name} ({ds.split_name}) {spec.ways}-way {spec.shots}-shot"


def eval_id(dataset: str, split: str, default_split: str, ways: int, shots: int, fingerprint: str) -> str:
    """``<dataset>[-<split>]-<ways>w<shots>s-<first 12 hex digits of the test-episode fingerprint>``."""
    data = dataset if split == default_split else f"{dataset}-{split}"
    return f"{data}-{ways}w{shots}s-{fingerprint[:12]}"


#: The fields of an evaluation record the command prints.
EVALUATION_KEYS = ("run_id", "mean", "ci95", "n_episodes", "ms_per_test_episode")


def _select(args) -> list[Path]:
    """The run folders to evaluate (finished, with a saved model)."""
    from .pipeline import registry
    from .store.folders import RecordError, RunFolder, run_folders

    wanted = None
    if args.methods is not None:
        try:
            wanted = set(registry.resolve(args.methods))
        except ValueError as e:
            raise UsageError(str(e)) from None
    if args.runs:
        dirs = []
        for r in args.runs:
            folder = RunFolder.from_path(r)
            if not folder.is_finished():
                raise UsageError(f"{r} is not a finished run folder (no {RunFolder.SUMMARY}); give results/<run-id>")
            if not folder.has_model():
                raise UsageError(f"{folder.path} has no saved model ({RunFolder.MODEL}): it ran with --no-save-model "
                                 "or before models were saved; re-run it to keep one")
            dirs.append(folder.path)
    else:
        if not Path(args.results_dir).is_dir():
            raise UsageError(f"results directory {args.results_dir} does not exist; give --runs or --results-dir")
        dirs = [f.path for f in run_folders(Path(args.results_dir)) if f.is_finished() and f.has_model()]
    try:
        summaries = {d: RunFolder.from_path(d).read_summary() for d in dirs}  # damaged: refused
    except RecordError as e:
        raise UsageError(str(e)) from None
    if wanted is not None:
        dirs = [d for d in dirs if summaries[d]["method"] in wanted]
    if not dirs:
        raise UsageError("no finished run with a saved model (model.pt) selected" +
                         ("" if args.runs else f" under {args.results_dir}") +
                         (f" for --methods {args.methods}" if args.methods else ""))
    return list(dict.fromkeys(dirs))


def plan(args) -> tuple[list[EvaluationJob], object]:
    """Validate everything and build the evaluations; raises UsageError with one clear line."""
    from .data import DATASETS
    from .kit.episodes import check_spec
    from .pipeline.episode_sets import episode_set
    from .store.files import check_writable
    from .store.folders import EvaluationFolder

    at_least("--ways", args.ways)
    at_least("--shots", args.shots)
    at_least("--queries", args.queries)
    at_least("--test-episodes", args.test_episodes)
    at_least("--eval-seed", args.eval_seed, low=0)
    at_least("--threads", args.threads)
    existing_dir("--data-dir", args.data_dir)
    load_method_files(args.method_file)
    from .pipeline.machine import setup_torch  # imports torch: after the arguments are read

    device = setup_torch(args.device, args.threads)
    from .pipeline.machine import configure_determinism

    configure_determinism(device)  # deterministic CUDA kernels, before any CUDA work (nothing changes on the CPU)
    jobs = []
    for d in _select(args):
        summary, config, payload, method = _saved_run(d, device)
        run_id = summary["run_id"]
        changed = origin_changed(payload.get("method_origin") or {}, type(method).origin)
        if changed:
            note(f"warning: {run_id}: {changed}")
        dataset, split, data_dir, ds = _test_data(args, summary, config, payload)
        n = args.test_episodes or int(summary["n_episodes"])
        seen = _seen_classes(ds, summary, config) if ds.name == summary["dataset"] else None
        for ways, shots in itertools.product(args.ways or [summary["ways"]], args.shots or [summary["shots"]]):
            try:
                method.check_test_ways(ways)
                check_spec(ds, "test", ways, shots, args.queries)
            except ValueError as e:
                raise UsageError(f"{run_id}: {e}") from None
            episodes = episode_set(ds, "test", ways, shots, args.queries, args.eval_seed, n)
            eid = eval_id(dataset, split, DATASETS[dataset].default_split, ways, shots, episodes.fingerprint)
            jobs.append(EvaluationJob(d, summary, payload, method, ds, data_dir, episodes, EvaluationFolder(d, eid), seen))
        try:
            check_writable(d)
        except OSError as e:
            raise UsageError(str(e).replace("--results-dir", "a writable copy of the run")) from None
    return jobs, device


def _saved_run(d: Path, device) -> tuple[dict, dict, dict, object]:
    """The saved run in folder ``d``: its summary, configuration, model payload and method rebuilt on ``device``;
    UsageError when one of its records (or of its earlier evaluations) is damaged or its model cannot be read."""
    from .pipeline.models import ModelError, read_model, rebuild
    from .store.folders import RecordError, RunFolder, evaluation_folders

    folder = RunFolder(d.parent, d.name)
    try:
        summary, config = folder.read_summary(), folder.read_config()
        for f in evaluation_folders(d):
            f.read_record(need=EVALUATION_KEYS)  # a damaged earlier evaluation: refused before any work
    except RecordError as e:
        raise UsageError(str(e)) from None
    try:
        payload = read_model(d)
        method = rebuild(payload, device)
    except ModelError as e:
        raise UsageError(str(e)) from None
    return summary, config, payload, method


def _test_data(args, summary: dict, config: dict, payload: dict) -> tuple[str, str, str | None, object]:
    """(dataset, split, data folder, the dataset loaded) a saved run is tested on: ``--dataset``, else its own (with
    its own split and data folder unless ``--split`` and ``--data-dir`` say otherwise); UsageError when it cannot be
    loaded, or when its images are not of the shape the model (``payload``) takes."""
    from .data import DataError, load_dataset, resolve_split

    run_id = summary["run_id"]
    own = args.dataset in (None, summary["dataset"])
    dataset = summary["dataset"] if args.dataset is None else args.dataset
    try:
        split = resolve_split(dataset, args.split or (summary.get("split") if own else None))
        data_dir = args.data_dir if args.data_dir is not None else (config.get("data_dir") if own else None)
        ds = load_dataset(dataset, data_dir, split)
    except DataError as e:
        raise UsageError(f"{run_id}: {e}") from None
    shape = tuple(payload["image_shape"])
    if shape != ds.image_shape:
        raise UsageError(f"{run_id}: its model takes {_shape(shape)} images and {dataset} has "
                         f"{_shape(ds.image_shape)}; a saved model is tested only on data of its own image shape "
                         "and channels")
    return dataset, split, data_dir, ds


def _seen_classes(ds, summary: dict, config: dict) -> int | None:
    """How many of ``ds``'s test classes the run trained or validated on (another split of its own dataset can
    share classes: the Vinyals split's training characters include Lake's evaluation alphabets); None when the
    run's own data cannot be loaded to tell."""
    from .data import DataError, load_dataset

    try:
        own = load_dataset(summary["dataset"], config.get("data_dir"), summary.get("split"))
    except DataError:
        return None
    trained = set(own.splits["train"].names) | set(own.splits["val"].names)
    return sum(n in trained for n in ds.splits["test"].names)


def _shape(s) -> str:
    c, h, w = s
    return f"{c}-channel {h}x{w}"


def origin_changed(trained: dict, now: dict) -> str | None:
    """Why the method evaluated now is not the code the run was trained with, in words (None when it is, or when
    it cannot be told): a method file whose SHA-256 differs from the one the run recorded, or another package
    version."""
    if trained.get("kind") == "file" and now.get("kind") == "file" and trained.get("sha256") != now.get("sha256"):
        return (f"the method file {now.get('path')} (sha256 {str(now.get('sha256'))[:12]}) is not the one the run was "
                f"trained with (sha256 {str(trained.get('sha256'))[:12]}); the evaluation records which it used")
    if trained.get("kind") == "entry_point" and now.get("kind") == "entry_point" and \
            trained.get("version") != now.get("version"):
        return (f"the method's package is {now.get('package')} {now.get('version')}, the run was trained with "
                f"{trained.get('version')}; the evaluation records which it used")
    return None


def record(job: EvaluationJob, acc, secs, seconds: float, device) -> dict:
    """``evaluation.json`` of a finished evaluation."""
    from .data import DATASETS
    from .pipeline.machine import code_version, environment
    from .store.files import utc_timestamp
    from .store.folders import RunFolder
    from .store.statistics import mean_ci95

    s, ds, spec, payload = job.summary, job.dataset, job.episodes.spec, job.payload
    mean, ci = mean_ci95(acc)
    config = RunFolder.from_path(job.run_dir).read_config()
    return {
        "kind": "evaluation", "eval_id": job.folder.eval_id, "run_id": s["run_id"], "method": s["method"],
        "family": s.get("family"),
        "trained": {k: s.get(k) for k in ("dataset", "split", "default_split", "ways", "shots", "queries", "backbone",
                                          "profile", "seed", "test_fingerprint", "dataset_fingerprint",
                                          "code_version")} | {"overrides": config.get("overrides") or []},
        "dataset": ds.name, "split": ds.split_name, "default_split": DATASETS[ds.name].default_split,
        "ways": spec.ways, "shots": spec.shots, "queries": spec.queries, "eval_seed": spec.seed,
        "n_episodes": len(acc), "mean": 100 * mean, "ci95": 100 * ci, "precision": s["precision"],
        "test_fingerprint": job.episodes.fingerprint, "dataset_fingerprint": ds.fingerprint,
        "dataset_source": ds.source, "data_dir": str(job.data_dir) if job.data_dir else None,
        "ms_per_test_episode": 1000 * float(acc.size and secs.mean()), "seconds": seconds,
        "device": str(device), "environment": environment(device), "code_version": code_version(),
        "model_code_version": payload.get("code_version"), "test_classes_seen_in_training": job.seen,
        "method_origin": dict(type(job.method).origin), "trained_method_origin": payload.get("method_origin"),
        "finished_at": utc_timestamp(),
    }


def evaluate_job(job: EvaluationJob, device, progress=None) -> dict:
    """Evaluate one job (or return its record when already done)."""
    from .pipeline.steps import evaluate
    from .store.folders import test_table

    if job.folder.is_finished():
        return job.folder.read_record(need=EVALUATION_KEYS)
    t0 = time.perf_counter()
    acc, secs = evaluate(job.method, job.episodes, device, progress, desc=f"{job.summary['method']} {job.label}",
                         precision=job.summary["precision"])  # the run's precision
    rec = record(job, acc, secs, time.perf_counter() - t0, device)
    job.folder.write(rec, test_table(acc, secs))
    return rec


def main(argv: list[str] | None = None) -> int:
    announce_method_files(argv if argv is not None else sys.argv[1:])
    args = parser().parse_args(argv)
    return usage_errors(lambda: _main(args))


def _main(args) -> int:
    jobs, device = plan(args)
    progress = progress_factory(args.no_progress)
    done = skipped = 0
    for job in jobs:
        skip = job.folder.is_finished()
        rec = evaluate_job(job, device, progress)
        done += not skip
        skipped += skip
        print(f"{rec['run_id']} on {job.label}: {rec['mean']:.2f} +- {rec['ci95']:.2f} % over {rec['n_episodes']} "
              f"episodes, {rec['ms_per_test_episode']:.1f} ms per episode"
              f"{' (already evaluated, skipped)' if skip else ''} -> {job.folder.path}", file=sys.stderr)
        if rec.get("test_classes_seen_in_training"):
            print(f"  warning: {rec['test_classes_seen_in_training']} of these test classes were training or "
                  "validation classes of the run (another split of its dataset): not a few-shot test of new classes",
                  file=sys.stderr)
    print(f"{done} evaluations done, {skipped} skipped; python -m benchmark.report lists them", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

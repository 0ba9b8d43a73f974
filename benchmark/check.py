"""python -m benchmark.check METHOD [...]: does a method obey the rules that make the comparison fair?

Runs the method on the ``smoke`` profile (shortened: ``--steps`` training steps, ``--test-episodes`` test
episodes, on the embedded Omniglot 5-way) through the harness's own runner, in a temporary results directory, and
checks the method contract (:mod:`methods.base`), one line per check:

* profiles: ``profile_hyper`` answers every profile (smoke, quick, paper) for 1- and 5-shot with the method's
  ``Hyper`` dataclass, and the paper profile's training budget is a count;
* logits: ``predict`` returns finite logits of shape [ways x queries, ways], and ``train_step`` finite metrics;
* global random state: the episodes the method trains on (given, and drawn itself through ``ctx.sampler``) are the
  same when torch's, numpy's and Python's global generators are disturbed before every step, and ``train_step`` and
  ``predict`` leave those generators untouched (a method that draws from them makes its results depend on whatever
  else draws from them);
* predict_many: ``predict_many`` on a group of episodes gives ``predict``'s logits, episode by episode;
* same seed: two runs with the same seed give identical per-episode test accuracies and curves;
* resume: a run stopped mid-way and resumed equals an uninterrupted one;
* saved model: the saved ``model.pt`` reloads (:func:`benchmark.pipeline.models.load_run`) and predicts the run's test
  episodes with the same per-episode accuracies;
* query labels: ``predict`` and ``predict_many`` classify test episodes that carry no query labels (reading
  ``episode.query_y``, or looking for the labelled episode behind one, fails it);
* label invariance: a test episode scored twice, the query labels the harness holds (within reach of the call)
  permuted in between, gets the same logits: nothing of the method reaches the labels, by whatever route;
* the rules, in every check as in every run: the method's code (construction, ``train_step``, ``predict``,
  ``predict_many``) runs watched (:mod:`benchmark.pipeline.guard`): file and other I/O, frame and garbage-collector
  introspection and imports of the harness's rooms fail the check that ran it, with one line naming the rule and
  the method's file:line;
* training split: building the method and training it reach nothing beyond the run's training split (no dataset, no
  validation or test split through ``ctx.sampler``);
* training budget: the training episodes a step consumes (the meta-batch plus those drawn through ``ctx.sampler``,
  counted by the harness) do not exceed ``tasks_per_step`` (the paper budget's unit), a ``tasks`` metric a method
  still reports matches the count, and the step takes at most one ``torch.optim`` optimiser step per training
  episode or classification batch it drew (every update is paid for by counted data); its FLOPs per training
  episode are shown;
* transduction: a query scored alone (with the support set) gets the logits it gets among the other queries, and
  reordering the queries reorders the logits; a method whose logits depend on the other queries is transductive,
  which is a fact (recorded with every run), and a failure only when the method does not declare it
  (``transductive = True`` or ``is_transductive``); logits that do not follow the queries' order fail;
* hyperparameter sources (a warning, not a failure): each field the method's ``Hyper`` adds carries a comment
  citing its source.

Exit 0 when every check passed (warnings allowed), 1 when one failed, 2 for bad input. External methods load with
``--method-file PATH`` or from installed packages (docs/your-method.md).
"""
from __future__ import annotations

import argparse
import sys

from .cli.toolkit import EXIT_FAILED, EXIT_OK, Parser, UsageError, at_least, usage_errors
from .pipeline.method_checks import (  # noqa: F401 - the checks' API, importable from here
    FAILED,
    PASSED,
    WARNING,
    Check,
    CheckFailed,
    MethodChecker,
    check_config,
    check_method,
)
from .pipeline.method_options import add_method_files, announce_method_files, load_method_files


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m benchmark.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n  python -m benchmark.check protonet\n"
                                       "  python -m benchmark.check all\n"
                                       "  python -m benchmark.check my-method --method-file my_method.py")
    p.add_argument("methods", nargs="+", help="method names, or 'all' / 'variants' / 'external' as in benchmark.run")
    add_method_files(p)
    p.add_argument("--steps", type=int, default=4, help="training steps of each run (at least 2, so that a run can "
                   "be stopped and resumed); default: 4")
    p.add_argument("--test-episodes", type=int, default=8, help="test episodes of each run; default: 8")
    p.add_argument("--shots", type=int, default=1, help="shots of the 5-way setting; default: 1")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch, at least 1; default: "
                   "PyTorch's")
    return p


def _check_settings(names: list[str], args) -> None:
    """Each method's run configuration as :class:`MethodChecker` builds it is valid (e.g. ``--shots`` within what the
    embedded Omniglot's classes hold): one line and exit 2 before any check runs, as ``benchmark.run`` does."""
    from .data import DataError
    from .pipeline import prepare

    for name in names:
        try:
            prepare(check_config(name, args.steps, args.test_episodes, args.shots))
        except (ValueError, DataError) as e:
            raise UsageError(f"{name}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    announce_method_files(argv if argv is not None else sys.argv[1:])
    args = parser().parse_args(argv)
    return usage_errors(lambda: _main(args))


def _main(args) -> int:
    from .pipeline import registry

    at_least("--steps", args.steps, low=2)
    at_least("--test-episodes", args.test_episodes)
    at_least("--shots", args.shots)
    load_method_files(args.method_file)
    from .pipeline.machine import setup_torch  # imports torch: after the arguments are read

    setup_torch("cpu", args.threads)
    try:
        names = registry.resolve(",".join(args.methods))
    except ValueError as e:
        raise UsageError(str(e)) from None
    _check_settings(names, args)
    failed = 0
    for name in names:
        o = registry.origin(name)
        print(f"{name} ({'built-in' if o['kind'] == 'builtin' else registry.describe(o)}):", flush=True)
        for c in check_method(name, args.steps, args.test_episodes, args.shots):
            print(f"  {c.line()}", flush=True)
            failed += c.status == FAILED
    print(f"{len(names)} method(s) checked; {failed} check(s) failed", flush=True)
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

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
import dataclasses
import inspect
import io
import random
import sys
import tempfile
import tokenize
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .cli.toolkit import EXIT_FAILED, EXIT_OK, Parser, UsageError, at_least, usage_errors
from .pipeline.guard import RuleBreach
from .pipeline.method_options import add_method_files, announce_method_files, load_method_files
from .store.compare import first_difference, read_records, records_differ

PASSED, FAILED, WARNING = "passed", "failed", "warning"


@dataclass
class Check:
    """The verdict of one check: ``status`` (passed, failed, warning) and a one-line ``detail``."""

    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"{self.status.upper():8s} {self.name}: {self.detail}"


class CheckFailed(Exception):
    """A check's reason for failing (one line)."""


class _SpySampler:
    """A training sampler that records what the method draws through it (kind, arguments, episode digest)."""

    def __init__(self, sampler, log: list):
        self._s, self._log = sampler, log

    def __getattr__(self, name):
        return getattr(self._s, name)

    def episode(self, index, *args, **kwargs):
        ep = self._s.episode(index, *args, **kwargs)
        self._log.append(("episode", int(index), args, tuple(sorted(kwargs.items(), key=str)), ep.digest()))
        return ep

    def batch(self, index, *args, **kwargs):
        x, y = self._s.batch(index, *args, **kwargs)
        self._log.append(("batch", int(index), args, tuple(sorted(kwargs.items(), key=str)), y.tolist()))
        return x, y


class MethodChecker:
    """The checks of one method (see the module docstring); :meth:`run` returns their verdicts."""

    def __init__(self, name: str, workdir: Path, steps: int = 4, test_episodes: int = 8, shots: int = 1,
                 note: Callable[[str], None] | None = None):
        import torch

        from .pipeline import prepare
        from .pipeline.config import RunConfig

        self.name, self.workdir, self.steps, self.shots = name, Path(workdir), steps, shots
        self.note = note or (lambda text: None)
        self.device = torch.device("cpu")
        over = (("train_steps", steps), ("val_every", max(1, steps // 2)))
        self.cfg = RunConfig(name, "omniglot", 5, shots, profile="smoke", test_episodes=test_episodes,
                             val_episodes=2, overrides=over)
        self.prepared = prepare(self.cfg)
        self.cls = self.prepared.cls
        self._runs: dict[str, dict] = {}

    # ---- helpers
    def _fresh(self, sampler_log: list | None = None):
        """A newly built method, as a run builds it (:mod:`benchmark.pipeline.builder`), optionally with a spying
        sampler."""
        from .pipeline.builder import build_method, method_context

        ctx = method_context(self.prepared, self.device, self.workdir / "context")
        if sampler_log is not None:
            ctx.sampler = _SpySampler(ctx.sampler, sampler_log)
        return build_method(self.prepared, ctx)[0], ctx

    def _watched(self, what: str):
        """The rules of identical terms, watched around a call into the method (:mod:`benchmark.pipeline.guard`)."""
        from .pipeline.guard import watching

        return watching(self.cls, what)

    def _train(self, method, ctx, steps: int, before_step: Callable[[int], None] | None = None) -> list[dict]:
        out = []
        for step in range(steps):
            if before_step is not None:
                before_step(step)
            episodes = self._meta_batch(method, ctx, step)
            with self._watched("train_step"):
                out.append(dict(method.train_step(episodes, step)))
        return out

    def _meta_batch(self, method, ctx, step: int) -> list:
        """The meta-batch a run hands ``method`` at ``step`` (none for a method that meta-trains on none)."""
        from .pipeline.steps import MetaBatches

        return MetaBatches.of(method, self.prepared.hp).draw(ctx.sampler, step, self.device)

    def _test_set(self):
        from .pipeline.episode_sets import test_set

        return test_set(self.prepared)

    def _run(self, label: str, stop_after: int | None = None) -> dict:
        """A run through the harness in its own results directory (``stop_after``: interrupt, then resume)."""
        from .pipeline import run
        from .pipeline.training import Interrupted
        from .store.folders import RunFolder

        if label not in self._runs:
            where = self.workdir / label
            if stop_after is not None:
                try:
                    run(self.prepared, where, self.device, stop_after=stop_after)
                except Interrupted:
                    pass
                else:
                    raise CheckFailed(f"the run did not stop after {stop_after} of {self.steps} steps")
            run(self.prepared, where, self.device)
            folder = RunFolder(where, self.cfg.run_id)
            self._runs[label] = {"folder": folder, **read_records(folder)}
        return self._runs[label]

    # ---- the checks
    def check_profiles(self) -> str:
        from .kit.context import Setting
        from .kit.profiles import PROFILES

        for profile in PROFILES:
            for shots in (1, 5):
                hp = self.cls.hyper(profile, Setting("omniglot", 5, shots))
                if not isinstance(hp, self.cls.Hyper):
                    raise CheckFailed(f"profile_hyper({profile!r}, {shots}-shot) returned {type(hp).__name__}, "
                                      f"not {self.cls.Hyper.__name__}")
        paper = self.cls.paper_train_episodes(Setting("omniglot", 5, 1))
        if not isinstance(paper, int) or paper < 0:  # 0: no meta-training (e.g. the transfer baselines)
            raise CheckFailed(f"the paper profile's training episodes are {paper!r}, not a count")
        return f"{', '.join(PROFILES)} x 1/5-shot give {self.cls.Hyper.__name__}; paper: {paper:,} training episodes"

    def check_logits(self) -> str:
        import torch

        method, ctx = self._fresh()
        metrics = self._train(method, ctx, 1)[0]
        bad = [k for k, v in metrics.items() if not torch.isfinite(torch.tensor(float(v)))]
        if bad:
            raise CheckFailed(f"train_step returned non-finite {', '.join(bad)}")
        test = self._test_set()
        with torch.set_grad_enabled(method.adapts_at_test), self._watched("predict"):
            logits = method.predict(test.hidden(0))
        want = (len(test.query_labels(0)), test.spec.ways)
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != want:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise CheckFailed(f"predict returned {got}, expected a tensor of shape {list(want)} (queries x ways)")
        if not torch.isfinite(logits).all():
            raise CheckFailed("predict returned non-finite logits")
        return f"predict gives finite [{want[0]}, {want[1]}] logits; train_step's metrics are finite"

    def check_global_random_state(self) -> str:
        import numpy as np
        import torch

        def states():
            return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()

        def same(a, b) -> list[str]:
            return [n for n, x, y, eq in zip(("torch", "numpy", "random"), a, b,
                                             (torch.equal, np.array_equal, lambda u, v: u == v)) if not eq(x, y)]

        plain: list = []
        method, ctx = self._fresh(plain)
        touched: set[str] = set()
        for step in range(self.steps):
            before = states()
            self._train_one(method, ctx, step)
            touched.update(f"train_step ({n})" for n in same(before, states()))
        ep = self._test_set().hidden(0)
        before = states()
        with torch.set_grad_enabled(method.adapts_at_test), self._watched("predict"):
            method.predict(ep)
        touched.update(f"predict ({n})" for n in same(before, states()))
        disturbed: list = []
        method, ctx = self._fresh(disturbed)

        def disturb(step):
            torch.manual_seed(1000 + step)
            np.random.seed(1000 + step)
            random.seed(1000 + step)

        for step in range(self.steps):
            disturb(step)
            self._train_one(method, ctx, step)
        if [e[:2] + e[4:] for e in plain] != [e[:2] + e[4:] for e in disturbed]:
            raise CheckFailed("the episodes or batches the method draws through ctx.sampler change when the global "
                              "random generators change: choose them from the step (a pure function of it), not "
                              "from torch/numpy/random global state")
        if touched:
            raise CheckFailed(f"{', '.join(sorted(touched))} draws from the global random generator: its results "
                              "then depend on whatever else draws from it; use a torch.Generator seeded from the "
                              "step or the episode (or ctx.seed)")
        draws = sum(e[0] != "step" for e in plain)
        return (f"{draws} draws through ctx.sampler in {self.steps} steps unchanged under disturbed global generators; train_step "
                "and predict leave them untouched")

    def _train_one(self, method, ctx, step: int) -> None:
        eps = self._meta_batch(method, ctx, step)
        ctx.sampler._log.append(("step", step, (), (), b"".join(e.digest() for e in eps)))
        with self._watched("train_step"):
            method.train_step(eps, step)

    def check_predict_many(self) -> str:
        import torch

        method, ctx = self._fresh()
        self._train(method, ctx, min(2, self.steps))
        test = self._test_set()
        n = min(len(test), max(2, int(getattr(method, "eval_group", 1)), 4))
        eps = [test.hidden(i) for i in range(n)]
        with torch.set_grad_enabled(method.adapts_at_test):
            with self._watched("predict"):
                one = [method.predict(e) for e in eps]
            with self._watched("predict_many"):
                many = method.predict_many(eps)
        if len(many) != len(one):
            raise CheckFailed(f"predict_many returned {len(many)} results for {len(one)} episodes")
        for i, (a, b) in enumerate(zip(one, many)):
            if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-4):
                worst = (a - b).abs().max().item() if a.shape == b.shape else float("nan")
                raise CheckFailed(f"predict_many differs from predict on episode {i} of the group "
                                  f"(largest difference {worst:.3g}; shapes {list(a.shape)} / {list(b.shape)})")
        return f"the same logits as predict on a group of {n} episodes (tolerance 1e-4)"

    def check_query_labels(self) -> str:
        import torch

        from .kit.episodes import QueryLabelsHidden

        method, ctx = self._fresh()
        self._train(method, ctx, 1)
        test = self._test_set()
        eps = [test.hidden(i) for i in range(min(2, len(test)))]
        try:
            with torch.set_grad_enabled(method.adapts_at_test):
                with self._watched("predict"):
                    method.predict(eps[0])
                with self._watched("predict_many"):
                    method.predict_many(eps)
        except QueryLabelsHidden as e:
            if "query labels" in str(e):
                raise CheckFailed("predict reads the query labels (episode.query_y) of test episodes: evaluation "
                                  "episodes carry none (the harness scores the logits); classify from the support "
                                  "set and the query images") from None
            raise CheckFailed(f"predict looks behind the test episode it is handed for its labels: {e}") from None
        return "predict and predict_many classify test episodes without their query labels"

    def check_training_split(self) -> str:
        from .kit.episodes import OutsideTrainingSplit

        try:
            method, ctx = self._fresh()
            self._train(method, ctx, self.steps)
        except OutsideTrainingSplit as e:
            raise CheckFailed(f"reaches beyond its training split through ctx.sampler ({e})") from None
        return (f"built and trained {self.steps} steps on its training split only "
                f"({ctx.sampler.episodes_drawn} episodes, {ctx.sampler.images_drawn} batch images drawn through "
                "ctx.sampler)")

    def check_training_budget(self) -> str:
        from pathlib import Path as _Path

        from .pipeline.training import Checkpointing, TasksMisreported, Trainer

        method, ctx = self._fresh()
        hp = self.prepared.hp
        declared = self.cls.tasks_per_step(hp)
        trainer = Trainer(method, hp, ctx, self._val_set(), Checkpointing(_Path(self.workdir) / "budget.pt"))
        flops, total = None, 0
        for step in range(self.steps):
            batches = ctx.sampler.batches_drawn
            eps = self._meta_batch(method, ctx, step)
            try:
                r = trainer.step(eps, step)
            except TasksMisreported as e:
                raise CheckFailed(str(e)) from None
            total += r.tasks
            if r.flops is not None:
                flops, updates = r.flops, r.optimizer_steps
                paid = r.tasks + ctx.sampler.batches_drawn - batches
                if updates > paid:
                    raise CheckFailed(f"takes {updates} optimiser steps in one train_step on {r.tasks} training "
                                      f"episode(s) and {paid - r.tasks} batch(es): at most one update per episode or "
                                      f"batch drawn ({flops / max(r.tasks, 1):.3g} FLOPs per training episode); "
                                      "train longer with more episodes instead")
            if r.tasks > declared:
                raise CheckFailed(f"consumes {r.tasks} training episodes per step ({len(eps)} handed over, "
                                  f"{r.tasks - len(eps)} drawn through ctx.sampler) but tasks_per_step declares "
                                  f"{declared}: its budget fraction would be understated {r.tasks / max(declared, 1):.3g}"
                                  "x; declare them in tasks_per_step")
        per = trainer.state["flops"]
        per_ep = (f"{per['flops'] / per['episodes']:.3g} FLOPs per training episode" if per and per["episodes"]
                  else "no training episode")
        return (f"{total} training episodes in {self.steps} steps (tasks_per_step {declared}), "
                f"{per['optimizer_steps'] if per else 0} optimiser step(s) on the first; {per_ep}")

    def check_transduction(self) -> str:
        import torch

        from .kit.episodes import Episode

        method, ctx = self._fresh()
        self._train(method, ctx, min(2, self.steps))
        ep = self._test_set()[0]
        n = len(ep.query_y)
        declared = self.cls.is_transductive(self.prepared.hp)

        def logits(order) -> torch.Tensor:
            sub = Episode(ep.spec, ep.index, ep.classes, ep.support_idx, ep.query_idx, ep.support_x, ep.support_y,
                          ep.query_x[order], ep.query_y[order])
            with torch.set_grad_enabled(method.adapts_at_test), self._watched("predict"):
                return method.predict(sub.hidden()).detach()

        full = logits(torch.arange(n))
        rev = torch.arange(n - 1, -1, -1)
        reordered = logits(rev)
        moved = (reordered - full[rev]).abs().max().item()
        alone = {i: logits(torch.tensor([i])) for i in sorted({0, n // 2, n - 1})}
        change = max((alone[i][0] - full[i]).abs().max().item() for i in alone)
        tol = 1e-4 * max(1.0, full.abs().max().item())
        if moved > tol and change <= tol:
            raise CheckFailed(f"the logits do not follow the queries when they are reordered (largest difference "
                              f"{moved:.3g}) although each query alone gets its own: predict uses the queries' "
                              "positions (e.g. their class-major order), not their images")
        if change > tol and not declared:
            raise CheckFailed(f"transductive: a query's logits change by up to {change:.3g} when it is scored alone "
                              "instead of among the other queries (it uses the other queries), and the method does "
                              "not declare it: set transductive = True (it is recorded with every run)")
        if change > tol:
            return (f"transductive (declared): a query's logits change by up to {change:.3g} when it is scored alone")
        note = " (declared transductive, not measured so on this episode)" if declared else ""
        return (f"not transductive{note}: {len(alone)} queries scored alone get the logits they get among all {n}; "
                "reordered queries get reordered logits")

    def check_label_invariance(self) -> str:
        import torch

        method, ctx = self._fresh()
        self._train(method, ctx, min(2, self.steps))
        labelled = self._test_set()[0]  # the harness's labelled copy, deliberately within reach while predict runs
        ways, n = labelled.ways, len(labelled.query_y)

        def logits() -> torch.Tensor:
            state = torch.get_rng_state()
            try:
                with torch.set_grad_enabled(method.adapts_at_test), self._watched("predict"):
                    return method.predict(labelled.hidden()).detach().clone()
            finally:
                torch.set_rng_state(state)

        first = logits()
        labelled.query_y.copy_((labelled.query_y + 1) % ways)  # every query's label changes, nothing else
        second = logits()
        change = (second - first).abs().max().item()
        tol = 1e-4 * max(1.0, first.abs().max().item())
        if change > tol:
            raise CheckFailed(f"the logits change by up to {change:.3g} when the harness's query labels are permuted "
                              "between two predictions of the same episode: predict reaches the labels")
        return f"the same logits for the {n} queries of a test episode scored twice, its labels permuted in between"

    def _val_set(self):
        from .pipeline.episode_sets import validation_set

        return validation_set(self.prepared)

    def check_same_seed(self) -> str:
        a, b = self._run("run-a"), self._run("run-b")
        why = records_differ(a, b)
        if why:
            raise CheckFailed(f"two runs with seed {self.cfg.seed}: {why}")
        return f"two runs: identical accuracies on {len(a['episodes'])} test episodes, identical curves"

    def check_resume(self) -> str:
        a = self._run("run-a")
        stop = self.steps - 1  # after the last validation but one: a checkpoint between two validations
        r = self._run("run-resumed", stop_after=stop)
        if r["summary"].get("resumed_at_steps") != [stop]:
            raise CheckFailed(f"the run did not resume from step {stop} (resumed_at_steps "
                              f"{r['summary'].get('resumed_at_steps')})")
        why = records_differ(a, r)
        if why:
            raise CheckFailed(f"stopped after step {stop} and resumed: {why}")
        return f"stopped after step {stop} of {self.steps} and resumed: identical to the uninterrupted run"

    def check_saved_model(self) -> str:
        from .pipeline.models import load_run
        from .pipeline.steps import evaluate

        a = self._run("run-a")
        method = load_run(a["folder"].path)
        acc, _ = evaluate(method, self._test_set(), self.device)
        why = first_difference(a["episodes"]["accuracy"], acc, "per-episode test accuracies")
        if why:
            raise CheckFailed(f"the reloaded model.pt: {why}")
        return f"model.pt reloads and scores the {len(acc)} test episodes exactly as the run did"

    def check_sources(self) -> str:
        """Fields the method's Hyper adds without a comment (``# ...`` on the field's line or the line above)."""
        from methods.base import Hyper

        own = [f.name for f in dataclasses.fields(self.cls.Hyper) if f.name not in
               {g.name for g in dataclasses.fields(Hyper)}]
        if not own:
            return "no fields of its own"
        commented: set[str] = set()
        for klass in self.cls.Hyper.__mro__:
            if klass is Hyper or not dataclasses.is_dataclass(klass):
                continue
            try:
                src = inspect.getsource(klass)
            except (OSError, TypeError):
                continue
            lines = src.splitlines()
            comments = {t.start[0] for t in tokenize.generate_tokens(io.StringIO(src).readline)
                        if t.type == tokenize.COMMENT}
            for i, line in enumerate(lines, 1):
                field = line.strip().split(":")[0].strip()
                if field in own and (i in comments or i - 1 in comments):
                    commented.add(field)
        missing = [f for f in own if f not in commented]
        if missing:
            raise CheckFailed(f"no source comment on {', '.join(missing)} (cite the paper's section or the "
                              "official code's file beside each default)")
        return f"all {len(own)} fields of {self.cls.Hyper.__name__} carry a source comment"

    CHECKS = (("profiles", "check_profiles", FAILED), ("logits", "check_logits", FAILED),
              ("query labels", "check_query_labels", FAILED), ("label invariance", "check_label_invariance", FAILED),
              ("training split", "check_training_split", FAILED),
              ("training budget", "check_training_budget", FAILED), ("transduction", "check_transduction", FAILED),
              ("global random state", "check_global_random_state", FAILED),
              ("predict_many", "check_predict_many", FAILED), ("same seed", "check_same_seed", FAILED),
              ("resume", "check_resume", FAILED), ("saved model", "check_saved_model", FAILED),
              ("hyperparameter sources", "check_sources", WARNING))

    def run(self, only: list[str] | None = None) -> list[Check]:
        """The verdicts of every check (``only``: of the checks of those names)."""
        return [self.verdict(name, fn, on_fail) for name, fn, on_fail in self.CHECKS if only is None or name in only]

    def verdict(self, name: str, fn: str, on_fail: str) -> Check:
        self.note(f"{self.name}: {name} ...")
        try:
            return Check(name, PASSED, getattr(self, fn)())
        except CheckFailed as e:
            return Check(name, on_fail, str(e))
        except RuleBreach as e:  # the guard's one line: the rule, what the method did, where
            return Check(name, FAILED, str(e))
        except Exception as e:  # noqa: BLE001 - the method raised: that is the verdict
            where = traceback.extract_tb(e.__traceback__)[-1]
            return Check(name, FAILED, f"raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                         f"({Path(where.filename).name}:{where.lineno})")


def check_method(name: str, steps: int = 4, test_episodes: int = 8, shots: int = 1,
                 workdir: str | Path | None = None, note: Callable[[str], None] | None = None,
                 only: list[str] | None = None) -> list[Check]:
    """The checks of method ``name`` (a registry name), in ``workdir`` (default: a temporary folder, removed);
    ``only``: just the checks of those names."""
    if workdir is not None:
        return MethodChecker(name, Path(workdir), steps, test_episodes, shots, note).run(only)
    with tempfile.TemporaryDirectory(prefix="fewshot-check-") as tmp:
        return MethodChecker(name, Path(tmp), steps, test_episodes, shots, note).run(only)


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
    from .pipeline.config import RunConfig

    over = (("train_steps", args.steps), ("val_every", max(1, args.steps // 2)))
    for name in names:
        try:
            prepare(RunConfig(name, "omniglot", 5, args.shots, profile="smoke", test_episodes=args.test_episodes,
                              val_episodes=2, overrides=over))
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

"""The checks of ``python -m benchmark.check`` that build a method as a run builds it and call into it (its
``predict``, ``predict_many`` and ``train_step``): logits, query labels, label invariance, training split, training
budget, transduction, global random state and predict_many; what each checks is ``benchmark.check``'s docstring.

:class:`CallChecks` holds them and their helpers (the method built afresh, trained through the harness's meta-batches,
called under the rules); it is a part of :class:`benchmark.pipeline.method_checks.MethodChecker`, whose constructor
sets the state they read (``prepared``, ``cls``, ``cfg``, ``device``, ``workdir``, ``steps``). A check returns its
one-line detail or raises :class:`CheckFailed`.
"""
from __future__ import annotations

import random
from typing import Callable


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


class CallChecks:
    """The checks that call into a freshly built method, with their helpers (see the module docstring)."""

    # ---- helpers
    def _fresh(self, sampler_log: list | None = None):
        """A newly built method, as a run builds it (:mod:`benchmark.pipeline.builder`), optionally with a spying
        sampler."""
        from .builder import build_method, method_context

        ctx = method_context(self.prepared, self.device, self.workdir / "context")
        if sampler_log is not None:
            ctx.sampler = _SpySampler(ctx.sampler, sampler_log)
        return build_method(self.prepared, ctx)[0], ctx

    def _watched(self, what: str):
        """The rules of identical terms, watched around a call into the method (:mod:`benchmark.pipeline.guard`)."""
        from .guard import watching

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
        from .steps import MetaBatches

        return MetaBatches.of(method, self.prepared.hp).draw(ctx.sampler, step, self.device)

    def _test_set(self):
        from .episode_sets import test_set

        return test_set(self.prepared)

    # ---- the checks
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

        from ..kit.episodes import QueryLabelsHidden

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
        from ..kit.episodes import OutsideTrainingSplit

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

        from .training import Checkpointing, TasksMisreported, Trainer

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

        from ..kit.episodes import Episode

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
        from .episode_sets import validation_set

        return validation_set(self.prepared)

"""The method contract's checks that ``python -m benchmark.check`` runs (what each checks is that command's
docstring): :class:`MethodChecker` runs them on one method and gives their verdicts (:class:`Check`),
:func:`check_method` the same in a temporary folder. The checks that call into a built method are
:class:`~benchmark.pipeline.call_checks.CallChecks`'; those here read the method's declarations (profiles,
hyperparameter sources) and compare whole runs through the harness (same seed, resume, saved model).
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import tempfile
import tokenize
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..store.compare import first_difference, read_records, records_differ
from .call_checks import CallChecks, CheckFailed
from .guard import RuleBreach

if TYPE_CHECKING:
    from .config import RunConfig

PASSED, FAILED, WARNING = "passed", "failed", "warning"


def check_config(name: str, steps: int = 4, test_episodes: int = 8, shots: int = 1) -> RunConfig:
    """The run a check of method ``name`` makes: the ``smoke`` profile on the embedded Omniglot 5-way, ``steps``
    training steps validated twice, ``test_episodes`` test episodes and 2 validation episodes."""
    from .config import RunConfig

    over = (("train_steps", steps), ("val_every", max(1, steps // 2)))
    return RunConfig(name, "omniglot", 5, shots, profile="smoke", test_episodes=test_episodes, val_episodes=2,
                     overrides=over)


@dataclass
class Check:
    """The verdict of one check: ``status`` (passed, failed, warning) and a one-line ``detail``."""

    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"{self.status.upper():8s} {self.name}: {self.detail}"


class MethodChecker(CallChecks):
    """The checks of one method (``benchmark.check``'s docstring); :meth:`run` returns their verdicts."""

    def __init__(self, name: str, workdir: Path, steps: int = 4, test_episodes: int = 8, shots: int = 1,
                 note: Callable[[str], None] | None = None):
        import torch

        from .runner import prepare

        self.name, self.workdir, self.steps, self.shots = name, Path(workdir), steps, shots
        self.note = note or (lambda text: None)
        self.device = torch.device("cpu")
        self.cfg = check_config(name, steps, test_episodes, shots)
        self.prepared = prepare(self.cfg)
        self.cls = self.prepared.cls
        self._runs: dict[str, dict] = {}

    # ---- helpers
    def _run(self, label: str, stop_after: int | None = None) -> dict:
        """A run through the harness in its own results directory (``stop_after``: interrupt, then resume)."""
        from ..store.folders import RunFolder
        from .runner import run
        from .training import Interrupted

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
        from ..kit.context import Setting
        from ..kit.profiles import PROFILES

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
        from .models import load_run
        from .steps import evaluate

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

"""Cost-weighted time left for a job of several runs.

The job's outer progress bar counts runs (``total`` = number of runs, ``update(1)`` as each ends), so tqdm's own
estimate of the time left is the mean time of the finished runs times the runs left. Runs differ in cost by an order
of magnitude (on Omniglot's quick profile a ProtoNet run took 87 s, a Reptile 5-shot run 564 s),
and the job runs the costly ones last, so that estimate is far too low for most of the job. This module weights each
run by an estimate of its cost instead:

* :func:`expected_seconds` estimates what one prepared run costs: its training episodes times the milliseconds per
  training episode, plus its validation and test episodes times the milliseconds per test episode. The figures per
  method come from the records of finished runs of the same method, dataset and backbone under ``results_dir``
  when there are any (``summary.json``: ``ms_per_train_episode``, ``ms_per_test_episode``), else from
  :data:`MEASURED_MS`, measured on 2 CPU cores (docs/measurements.md, "The main job"), scaled by the
  image size.
* :class:`RunsETA` turns those costs into time left: the seconds elapsed per unit of expected cost of the runs
  finished so far, times the expected cost of the runs not finished. Only the ratios of the costs matter, so on a
  machine faster or slower than the table's (every cost off by the same factor) the estimate stays right.

Intended wiring in the runner (``benchmark/run.py``), which keeps its bar over runs as it is and adds the estimate
as the bar's postfix::

    from benchmark.pipeline.eta import RunsETA, costs_for

    todo = [p for p in prepared if not already_finished(p)]     # the PreparedRuns this job will execute
    eta = RunsETA(costs_for(todo, results_dir))                 # run id -> expected seconds
    bar = tqdm(total=len(todo), desc="runs")
    ...
    # as each run ends (finished or failed: its time was spent either way):
    eta.finished(run_id)
    bar.update(1)
    bar.set_postfix_str(eta.postfix())   # "about 34 min left (cost-weighted)"

(Alternatively a bar counted in expected seconds, ``tqdm(total=eta.total_seconds(), unit="s")`` with
``bar.update(eta.finished(run_id))``, makes tqdm's own remaining time the cost-weighted one; but its counter then
reads seconds, not runs.) A run that the job skips after the costs were built is dropped with
:meth:`RunsETA.discard`, so that it counts neither as done nor as left.

The estimate is refreshed when a run ends; between two ends the postfix keeps the last figure.
"""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

#: Milliseconds per (training episode, test episode) per method and shots, Omniglot 28x28x1, 5-way, ``conv4``, the
#: ``quick`` profile, 2 CPU threads: from docs/measurements.md's table "The main job" (commit
#: a6d4ffd), its columns "training s", "training episodes" (ms per training episode = 1000 x training s / training
#: episodes) and "ms per test episode". MTL's shared pretraining (98 s, once per job) is not in these figures.
MEASURED_MS: dict[str, dict[int, tuple[float, float]]] = {
    "protonet": {1: (1000 * 71 / 450, 11.0), 5: (1000 * 63 / 250, 13.0)},
    "matching": {1: (1000 * 85 / 2000, 12.0), 5: (1000 * 91 / 1700, 15.0)},
    "relation": {1: (1000 * 90 / 1450, 14.0), 5: (1000 * 81 / 1350, 16.0)},
    "tadam": {1: (1000 * 85 / 2000, 15.0), 5: (1000 * 125 / 1900, 22.0)},
    "maml": {1: (1000 * 124 / 4480, 28.0), 5: (1000 * 153 / 1600, 26.0)},
    "reptile": {1: (1000 * 110 / 3000, 359.0), 5: (1000 * 106 / 3000, 658.0)},
    "mtl": {1: (1000 * 77 / 1800, 16.0), 5: (1000 * 80 / 1800, 20.0)},
    "meta_lstm": {1: (1000 * 94 / 150, 308.0), 5: (1000 * 93 / 180, 279.0)},
}
#: The pixels of one model input that :data:`MEASURED_MS` was measured on (Omniglot: 1 x 28 x 28).
MEASURED_PIXELS = 28 * 28 * 1
#: Figures for a method that neither the records nor the table know: the median of the table's, per shots.
DEFAULT_MS: dict[int, tuple[float, float]] = {
    s: (statistics.median(v[s][0] for v in MEASURED_MS.values()),
        statistics.median(v[s][1] for v in MEASURED_MS.values())) for s in (1, 5)}


def _at_shots(figures: dict[int, tuple[float, float]], shots: int) -> tuple[float, float]:
    """The 1- and 5-shot figures interpolated linearly in ``shots`` (outside 1..5: the nearer one)."""
    t = min(max((shots - 1) / 4, 0.0), 1.0)
    (a_train, a_test), (b_train, b_test) = figures[1], figures[5]
    return a_train + t * (b_train - a_train), a_test + t * (b_test - a_test)


def finished_summaries(results_dir: str | Path | None) -> list[dict]:
    """The summaries of the finished runs under ``results_dir`` (none when it is None or absent)."""
    if results_dir is None or not Path(results_dir).is_dir():
        return []
    from ..store.folders import RunFolder, finished_runs

    out = []
    for path in finished_runs(Path(results_dir)):
        try:
            out.append(RunFolder(path.parent, path.name).read_summary(need=()))  # whatever fields it has
        except (OSError, ValueError):  # a summary being written or damaged: not a figure to go by
            continue
    return out


def _recorded_ms(summaries: Iterable[dict], method: str, dataset: str, backbone: str,
                 shots: int) -> tuple[float, float] | None:
    """Mean (ms per training episode, ms per test episode) of the records of ``method`` on ``dataset`` and
    ``backbone``, those with ``shots`` if any, else all shots; None when there is no such record."""
    same = [s for s in summaries if s.get("method") == method and s.get("dataset") == dataset
            and s.get("backbone", "conv4") == backbone
            and isinstance(s.get("ms_per_train_episode"), (int, float))
            and isinstance(s.get("ms_per_test_episode"), (int, float))]
    if not same:
        return None
    exact = [s for s in same if s.get("shots") == shots] or same
    return (statistics.fmean(s["ms_per_train_episode"] for s in exact),
            statistics.fmean(s["ms_per_test_episode"] for s in exact))


def method_ms(prepared_run, summaries: Iterable[dict] = ()) -> tuple[tuple[float, float], str]:
    """(ms per training episode, ms per test episode) for a prepared run, and where they come from: ``"records"``
    (finished runs of the same method, dataset and backbone), ``"table"`` (:data:`MEASURED_MS`, for the method or
    the main method it is a variant of, scaled by pixels per image relative to 28x28x1) or ``"default"``
    (:data:`DEFAULT_MS`, scaled alike). The table is for ``conv4`` and the quick profile's episode shapes; other
    backbones and shapes are not modelled (their records, once one run has finished, are)."""
    cfg, cls = prepared_run.cfg, prepared_run.cls
    recorded = _recorded_ms(summaries, cfg.method, cfg.dataset, cfg.backbone, cfg.shots)
    if recorded is not None:
        return recorded, "records"
    scale = math.prod(prepared_run.dataset.image_shape) / MEASURED_PIXELS
    name = cfg.method if cfg.method in MEASURED_MS else getattr(cls, "variant_of", None)
    figures, source = (MEASURED_MS[name], "table") if name in MEASURED_MS else (DEFAULT_MS, "default")
    train, test = _at_shots(figures, cfg.shots)
    return (scale * train, scale * test), source


def expected_seconds(prepared_run, results_dir: str | Path | None = None, *,
                     summaries: list[dict] | None = None) -> float:
    """Expected cost of a run in seconds: training episodes (``train_steps x tasks_per_step``) x ms per training
    episode + (validations x ``n_val`` + ``n_test``) x ms per test episode, the figures from :func:`method_ms`.
    Validations are one per ``val_every`` steps and one at the last step when it is not a multiple.

    ``summaries``: the finished runs' summaries, already read (:func:`finished_summaries`), to read the records
    once for many runs; else they are read from ``results_dir``."""
    cfg, cls, hp = prepared_run.cfg, prepared_run.cls, prepared_run.hp
    if summaries is None:
        summaries = finished_summaries(results_dir)
    (train_ms, test_ms), _ = method_ms(prepared_run, summaries)
    steps = hp.train_steps
    validations = steps // hp.val_every + (1 if steps % hp.val_every else 0)
    train_episodes = steps * cls.tasks_per_step(hp)
    return (train_episodes * train_ms + (validations * cfg.n_val + cfg.n_test) * test_ms) / 1000.0


def format_left(seconds: float) -> str:
    """``"about 34 min left (cost-weighted)"`` (seconds under a minute, hours and minutes from 90 minutes on)."""
    if seconds < 60:
        text = f"{max(0, round(seconds))} s"
    elif seconds < 90 * 60:
        text = f"{round(seconds / 60)} min"
    else:
        minutes = round(seconds / 60)
        text = f"{minutes // 60} h {minutes % 60:02d} min"
    return f"about {text} left (cost-weighted)"


class RunsETA:
    """Time left for a set of runs, from their expected costs (``run id -> seconds``, :func:`expected_seconds`).

    ``remaining_seconds()`` is the time elapsed since this object was made, per second of expected cost of the runs
    finished so far, times the expected cost of the runs not finished yet; None before the first run finishes.
    ``clock``: a function returning seconds (``time.monotonic``; tests pass a fake one).
    """

    def __init__(self, costs: dict[Hashable, float], clock: Callable[[], float] = time.monotonic):
        self.costs = {k: max(float(v), 0.0) for k, v in costs.items()}
        self.clock = clock
        self.start = clock()
        self.done: set[Hashable] = set()

    def finished(self, run_id: Hashable) -> float:
        """Mark a run as ended (finished or failed); returns its expected cost (for a bar counted in seconds)."""
        if run_id not in self.costs:
            raise KeyError(f"unknown run {run_id!r}")
        if run_id in self.done:
            return 0.0
        self.done.add(run_id)
        return self.costs[run_id]

    def discard(self, run_id: Hashable) -> None:
        """Forget a run the job will not execute (e.g. found finished): it counts neither as done nor as left."""
        self.costs.pop(run_id, None)
        self.done.discard(run_id)

    def total_seconds(self) -> float:
        """Expected cost of all the runs."""
        return sum(self.costs.values())

    def done_seconds(self) -> float:
        return sum(self.costs[k] for k in self.done)

    def left_seconds(self) -> float:
        """Expected cost of the runs not finished yet."""
        return self.total_seconds() - self.done_seconds()

    def remaining_seconds(self) -> float | None:
        done = self.done_seconds()
        if not self.done or done <= 0:
            return None
        return (self.clock() - self.start) / done * self.left_seconds()

    def postfix(self) -> str:
        """Text for the progress bar: ``"about 34 min left (cost-weighted)"``; empty before the first run ends."""
        left = self.remaining_seconds()
        return "" if left is None else format_left(left)

    def __repr__(self) -> str:
        return f"RunsETA({len(self.done)}/{len(self.costs)} runs done, {self.postfix() or 'no estimate yet'})"


def costs_for(prepared_runs: Iterable[Any], results_dir: str | Path | None = None) -> dict[str, float]:
    """``run id -> expected seconds`` for prepared runs, the records under ``results_dir`` read once."""
    summaries = finished_summaries(results_dir)
    return {p.cfg.run_id: expected_seconds(p, summaries=summaries) for p in prepared_runs}

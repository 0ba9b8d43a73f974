"""The sequential executor (``--executor sequential``, the default): one run after another in this process."""
from __future__ import annotations

import dataclasses
from typing import Callable

from ..runner import JobTemplate, Outcome, RunJob, run_job


class SequentialExecutor:
    """The runs one after another in this process (``--executor sequential``): ``template`` is the command's
    :class:`~benchmark.pipeline.runner.JobTemplate`, ``progress`` the bars' factory, ``note`` prints messages."""

    name = "sequential"

    def __init__(self, template: JobTemplate, progress: Callable | None = None,
                 note: Callable[[str], None] = print):
        self.template, self.progress, self.note = template, progress, note

    def execute(self, prepared: list, on_outcome: Callable[[Outcome], None]) -> list[Outcome]:
        """Run every prepared run; ``on_outcome`` is called as each ends. Ctrl-C raises
        :class:`~benchmark.pipeline.training.Interrupted` (the run's checkpoint saved)."""
        from ..machine import placement

        job = RunJob(None, self.template, placement(self.template.device, self.name), self.progress, self.note)
        outs = []
        for p in prepared:
            o = run_job(dataclasses.replace(job, prepared=p))
            outs.append(o)
            on_outcome(o)
        return outs


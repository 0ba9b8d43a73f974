"""The GPU check's report: the markdown summary (:func:`write_summary`, rewritten after every part) and what the
parts read of their jobs' results folders (the finished runs, a line for each failed run)."""
from __future__ import annotations

import time
from pathlib import Path

from .plan import Part, Plan


def finished_runs(results_dir: Path) -> dict:
    """Run id -> :class:`~benchmark.store.folders.RunFolder` of each finished run under ``results_dir``."""
    from ..store.folders import run_folders

    return {f.run_id: f for f in run_folders(results_dir) if f.is_finished()}


def failure_lines(dirs: list[Path]) -> list[str]:
    """A line for each run recorded as failed under any of ``dirs`` (``<run>.partial/failed.json``; a run stopped
    at a time limit keeps its checkpoint and is not failed)."""
    from ..store.folders import failed_runs

    return [f"- failed run: {f.run_id}: {f.read_failure().get('reason', '?')}" for d in dirs for f in failed_runs(d)]



def write_summary(path: Path, plan: Plan, parts: list[Part], budget_s: float, started: float) -> str:
    """The check's markdown summary of ``parts`` so far (the device, the verdict of each part, then each part's
    lines), written to ``path``; its text."""
    from ..pipeline.machine import code_version, environment, resolve_device

    try:
        env = environment(resolve_device(plan.device))
    except Exception as e:  # noqa: BLE001
        env = {"error": str(e)}
    lines = ["# GPU check", "",
             f"Device `{plan.device}` ({env.get('device_name', '?')}), {'dry run (tiny sizes)' if plan.dry else 'full'}"
             f"; code {code_version()}; torch {env.get('torch', '?')}; budget {budget_s:.0f} s, took "
             f"{time.monotonic() - started:.0f} s.", "", "## Verdict", "", "| part | result | seconds |",
             "|---|---|---|"]
    for p in parts:
        verdict = "PASS" if p.ok else ("FAIL" if p.ok is False else "not run (time)" if any(
            "(time)" in line for line in p.lines) else "not run")
        lines.append(f"| {p.title} | {verdict} | {p.seconds:.0f} |")
    for p in parts:
        lines += ["", f"## {p.title}", ""] + p.lines
        if p.error:
            lines += ["", "Error:", "", "```", p.error.strip(), "```"]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


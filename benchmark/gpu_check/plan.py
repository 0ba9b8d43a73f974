"""The GPU check's plan and its parts' results: what each part runs (:class:`Plan`: the full sizes on CUDA, tiny ones
in the dry run) and what each part hands back to the summary (:class:`Part`)."""
from __future__ import annotations

from dataclasses import dataclass, field

TITLES = {"speed": "(a) Speed: ms and FLOPs per training episode, ms per test episode, paper-profile shapes",
          "capture": "(capture) --capture (CUDA graphs) against eager: paired smoke runs, timed steps",
          "determinism": "(b) Determinism: the smoke main job twice",
          "resume": "(c) Resume: stopped mid-way and resumed = uninterrupted",
          "packing": "(d) Packing: K worker processes on one GPU, quick profile",
          "quick": "(e) The quick main job on one GPU",
          "reproduce": "(f) Reproduce: paper-profile runs of the cheapest settings"}


@dataclass
class Part:
    name: str
    title: str
    ok: bool | None = None  # None: not run / skipped
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    #: part (a) only: what it measured, for part (f): (method, shots) -> projected paper hours of training + test
    projections: dict[tuple[str, int], float] = field(default_factory=dict)


@dataclass
class Plan:
    """What each part runs: the full sizes on CUDA, tiny ones in the dry run."""

    device: str
    dry: bool
    speed_methods: list[str]
    speed_shots: list[int]
    precisions: list[str]
    speed_profile: str
    speed_steps: int
    speed_warmup: int
    speed_test_episodes: int
    job_args: list[str]  # benchmark.run arguments of the determinism job
    resume_methods: list[str]
    resume_overrides: tuple
    resume_stop: int
    quick_args: list[str]  # benchmark.run arguments of the packing and quick parts (the executor is added)
    workers: list[int]  # K of the packing part; the quick part uses the last
    reproduce_args: list[str]  # benchmark.run arguments of a reproduction, besides --methods and --shots
    capture: bool = False  # the capture part runs --capture (CUDA); else its jobs run eager twice (the dry run)
    capture_args: tuple = ()  # benchmark.run arguments of the capture part's paired jobs (eager, then --capture)
    capture_methods: tuple = ("protonet", "matching")  # the capture part's timed cases (1-shot)


def make_plan(device: str, dry: bool) -> Plan:
    from ..pipeline import registry

    if dry:
        tiny = ["--set", "train_steps=2", "val_every=1", "--test-episodes", "4", "--val-episodes", "2"]
        return Plan(device, True, ["protonet", "maml"], [1], ["fp32", "bf16"], "smoke", 1, 1, 2,
                    ["--methods", "protonet", "--shots", "1", "--profile", "smoke", *tiny],
                    ["protonet"], (("train_steps", 4), ("val_every", 2), ("train_ways", 5), ("train_queries", 5)), 3,
                    ["--methods", "protonet", "--shots", "1", "--profile", "smoke", *tiny], [2],
                    ["--profile", "smoke", *tiny], False,
                    ("--methods", "protonet", "--shots", "1", "--profile", "smoke", *tiny), ("protonet",))
    return Plan(device, False, registry.main_methods(), [1, 5], ["fp32", "bf16"], "paper", 5, 2, 10,
                ["--methods", "all", "--profile", "smoke"],
                ["protonet", "maml"], (("train_steps", 12), ("val_every", 4)), 6,
                ["--methods", "all", "--profile", "quick"], [1, 2, 4, 8], ["--profile", "paper"],
                str(device).startswith("cuda"),
                ("--methods", "protonet,matching", "--shots", "1", "--profile", "smoke"))


"""Profiles: the named budgets of a run (``smoke``, ``quick``, ``paper``), and the one check of a profile's name.

A leaf module (it imports nothing of the project, nor torch), so the harness and the methods both import it: a
profile fixes the evaluation budget here (:class:`Profile`), and each method's ``profile_hyper`` its training budget.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """Evaluation budget of a profile (the training budget is each method's ``hyper(profile, setting)``)."""

    name: str
    val_episodes: int
    test_episodes: int
    doc: str


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", 20, 100, "seconds per run; for tests and trying the tool"),
    "quick": Profile("quick", 100, 600, "about 2 minutes per method and setting on 2 CPU cores; the default"),
    "paper": Profile("paper", 600, 600, "the papers' hyperparameters and episode budgets; meant for a GPU"),
}


def check_profile(name: str) -> Profile:
    """The profile called ``name``: the one place an unknown profile name is refused (ValueError, one line)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}")
    return PROFILES[name]

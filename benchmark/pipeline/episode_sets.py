"""A run's fixed episode sets, built in one place: the validation set (best-checkpoint selection) and the test set.

Both depend on the setting and ``eval_seed``, never on the training seed, so every method and every seed of a
setting is validated and tested on the same episodes (their fingerprints, in every summary, prove it). The runner,
the method's context, ``benchmark.check``, ``benchmark.speed`` and ``benchmark.evaluate`` all take their sets from
here.
"""
from __future__ import annotations

from ..data import FewShotDataset
from ..kit.episodes import EpisodeSet


def episode_set(ds: FewShotDataset, split: str, ways: int, shots: int, queries: int, eval_seed: int,
                n: int) -> EpisodeSet:
    """The ``n`` fixed episodes of ``split`` (``"val"`` or ``"test"``) for a setting, keyed by ``eval_seed``."""
    return EpisodeSet(ds, split, ways, shots, queries, eval_seed, n, stream=split)


def validation_set(prepared) -> EpisodeSet:
    """The prepared run's validation episodes (``cfg.n_val`` of them)."""
    c = prepared.cfg
    return episode_set(prepared.dataset, "val", c.ways, c.shots, c.queries, c.eval_seed, c.n_val)


def test_set(prepared, n: int | None = None) -> EpisodeSet:
    """The prepared run's test episodes (``cfg.n_test`` of them, or the first ``n``: the same episodes, fewer)."""
    c = prepared.cfg
    return episode_set(prepared.dataset, "test", c.ways, c.shots, c.queries, c.eval_seed, c.n_test if n is None else n)

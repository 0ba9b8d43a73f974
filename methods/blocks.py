"""Building blocks several methods share (no method imports another method; they import these).

* prototypes, squared Euclidean distance and the episode cross-entropy of the prototype-based methods (ProtoNet,
  TADAM);
* ``MAMLNet``: a backbone followed by a linear classifier, run functionally by the gradient-based methods (MAML,
  Reptile, and the Meta-LSTM's learner);
* batched test-time adaptation (several test episodes adapted in one vectorised pass, ``torch.func.vmap`` over
  per-episode parameter copies): ``resolve_batched_adaptation`` (the per-device default), ``shape_groups`` (episodes
  of one shape, which can be stacked), ``stack_episodes``, ``episode_copies`` (one copy of each tensor per episode)
  and ``gather_batches`` (each episode's own mini-batch of its support set); ``device_indices``, the one way a
  method copies host indices (mini-batches drawn on the host) to the device: once per step or group, never per
  inner iteration (on CUDA pinned and without waiting);
* the classifier pretraining of the transfer methods (MTL and its ``pretrain-only`` variant, Baseline and
  Baseline++): ``train_image_count`` (epochs are counted in images of the training split), ``seeded_fork`` (the
  pretraining's own seeded torch RNG, so that computing or reusing a cached pretraining leaves the run's later random
  draws identical) and ``train_classifier`` (the loop: batches ``ctx.sampler.batch(i, ...)`` over all training
  classes, cross-entropy, one optimiser step per batch; it hands its full state to ``ctx.snapshots`` every
  ``SNAPSHOT_EVERY`` iterations and when its caller asks, and a stopped pretraining resumes from the last snapshot
  to the same result).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.kit.backbones import channels_last
from benchmark.kit.episodes import Episode, TrainingSampler, keyed_rng


def prototypes(z: torch.Tensor, y: torch.Tensor, ways: int) -> torch.Tensor:
    """Mean embedding per class: ``z`` [n, d], labels ``y`` [n] in 0..ways-1 -> [ways, d]."""
    onehot = F.one_hot(y, ways).to(z.dtype)
    return onehot.t() @ z / onehot.sum(0).unsqueeze(1)


def cross_entropy(logits: torch.Tensor, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy of the query logits, the logits): a ``forward`` for :meth:`Method.backward_episodes`."""
    return F.cross_entropy(logits, episode.query_y), logits


def sq_euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances, [n, d] x [m, d] -> [n, m]."""
    return (a.unsqueeze(1) - b.unsqueeze(0)).pow(2).sum(-1)


class MAMLNet(nn.Module):
    """Backbone followed by a linear classifier; the whole network is MAML's initialisation."""

    def __init__(self, backbone: nn.Module, features: int, ways: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(features, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(channels_last(x, restride_single_channel=True)).flatten(1))


# ------------------------------------------------------------------------------------------------ batched adaptation
def resolve_batched_adaptation(hp, device: torch.device) -> bool:
    """``hp.batched_adaptation`` when set, else the device's default: vectorised on CUDA (one kernel launch per layer
    for a whole group of test episodes instead of one per episode: the GPU was idle ~89% of the time adapting one
    episode at a time, issue 28), looped elsewhere (the CPU path and its numbers stay those of ``predict``). The value
    is written back into ``hp``, so a run's recorded hyperparameters say which path ran (as MAML's ``vectorize``)."""
    if hp.batched_adaptation is None:
        hp.batched_adaptation = torch.device(device).type == "cuda"
    return bool(hp.batched_adaptation)


#: test episodes one batched ``predict_many`` call adapts together on the CPU (tests force the batched path there);
#: on CUDA the harness sizes groups by the device's total memory (``benchmark.pipeline.execution.group_size``)
BATCHED_EVAL_GROUP = 8


def shape_groups(episodes: Sequence[Episode]) -> list[list[int]]:
    """Indices of ``episodes`` grouped by shape (ways, support size, query size, image shape), in first-seen order:
    the episodes of one group can be stacked along a new leading dimension."""
    groups: dict[tuple, list[int]] = {}
    for i, ep in enumerate(episodes):
        key = (ep.ways, tuple(ep.support_x.shape), tuple(ep.query_x.shape))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def stack_episodes(episodes: Sequence[Episode], *fields: str) -> list[torch.Tensor]:
    """``torch.stack`` of each named field over the episodes (``[G, ...]``), one tensor per field."""
    return [torch.stack([getattr(ep, f) for ep in episodes]) for f in fields]


def episode_copies(tensors: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """``n`` independent copies of each tensor stacked along a new leading dimension (``[n, *shape]``, detached):
    per-episode parameters or optimiser states that start equal and then evolve separately."""
    return {k: v.detach().unsqueeze(0).expand(n, *v.shape).clone() for k, v in tensors.items()}


def device_indices(a, device: torch.device) -> torch.Tensor:
    """An integer host array (or a list of equal-length arrays, stacked) as an int64 tensor on ``device``: the one
    copy of host indices to the device a method makes per step or per group of episodes (CUDA: from pinned memory,
    without waiting for the device; the CPU: ``torch.as_tensor``'s tensor, as before). Index rows of the result per
    inner iteration instead of copying each iteration's indices (a blocking copy each time)."""
    a = np.ascontiguousarray(np.stack(a) if isinstance(a, (list, tuple)) else a, dtype=np.int64)
    t = torch.as_tensor(a)
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def gather_batches(x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Episode ``g``'s mini-batch ``x[g, indices[g]]``, ``y[g, indices[g]]`` for every ``g``, from stacked support
    sets ``x`` ``[G, n, ...]`` and labels ``y`` ``[G, n]``; ``indices``: ``[G, b]`` on ``x``'s device (a row of
    :func:`device_indices`' one copy of every iteration's indices) -> ``[G, b, ...]``, ``[G, b]``."""
    rows = torch.arange(indices.shape[0], device=x.device).unsqueeze(1)
    return x[rows, indices], y[rows, indices]


# ------------------------------------------------------------------------------------------------ pretraining
def train_image_count(sampler: TrainingSampler) -> int:
    """Images of the sampler's split (training split): one epoch of classifier pretraining is this many images."""
    return sampler.n_images


@contextmanager
def seeded_fork(device: torch.device, *key) -> Iterator[None]:
    """Run the block under a forked torch RNG seeded from ``keyed_rng(*key)``; the global RNG is restored after it,
    so whether a cached artefact is computed or read does not shift any later random draw of the run."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(keyed_rng(*key).integers(2 ** 62)))
        yield


#: iterations of :func:`train_classifier` between two snapshots of its state (``ctx.snapshots``; MTL also snapshots
#: after each of its validations). Measured on the 2-core CPU, shared with two training runs, one torch thread: the
#: largest conv4 state, with Omniglot's 4,112-class head, is 3.5 MB with SGD momentum (MTL) and took 12 ms to write
#: atomically (median of 10), 5.0 MB with Adam (Baseline) 25 ms; one iteration took 120-130 ms at 128 images (MTL)
#: and 16 ms at 16 images (Baseline). Every 2,000 iterations a snapshot then costs under 0.01% of MTL's time and
#: about 0.1% of Baseline's (still under 1% at 2 ms an iteration, a fast GPU's), and a stop loses at most 2,000
#: iterations (half a minute of Baseline's pretraining on this CPU).
SNAPSHOT_EVERY = 2000


def train_classifier(ctx, net: nn.Module, head: nn.Module, optimizer: torch.optim.Optimizer, iters: int,
                     batch: int, stream: str, desc: str, scheduler=None,
                     after_step: Callable[[int], bool | None] | None = None, keep: dict | None = None) -> None:
    """``iters`` steps of ``head(net(x))`` trained with cross-entropy on batches ``ctx.sampler.batch(i, batch,
    stream)`` (uniform over the training split's images, labels 0..n_classes-1): one ``optimizer`` (and
    ``scheduler``) step per batch, ``net`` in training mode; ``after_step(i)`` after step ``i`` (e.g. a
    validation, which may switch ``net`` to eval mode).

    Resumable: every ``SNAPSHOT_EVERY`` iterations, and after a step whose ``after_step`` returned True (e.g. one
    that validated), the loop hands ``ctx.snapshots`` its full state (iterations done, ``net``, ``head``,
    ``optimizer``, ``scheduler`` and the caller's ``keep`` dict, e.g. a best-so-far record; the harness keeps the
    random generators' states with it);
    started again after a stop, it loads the last one (``keep`` is restored in place) and goes on from there, to the
    same result as an uninterrupted loop (the batches are pure functions of the iteration index). Nothing is kept
    after the last step: the caller's result is then stored instead."""
    start = 0
    saved = ctx.snapshots.load()
    if saved is not None:
        start, state = saved
        net.load_state_dict(state["net"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if keep is not None:
            keep.clear()
            keep.update(state["keep"])
    for it in ctx.iterate(range(start, iters), total=iters - start, desc=desc):
        net.train()
        x, y = ctx.sampler.batch(it, batch, stream=stream)
        loss = F.cross_entropy(head(net(x.to(ctx.device))), y.to(ctx.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        asked = after_step(it) if after_step is not None else False
        if it + 1 < iters and (asked or (it + 1) % SNAPSHOT_EVERY == 0):
            ctx.snapshots.save(it + 1, {
                "net": net.state_dict(), "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(), "keep": keep})

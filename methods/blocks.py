"""Building blocks several methods share (no method imports another method; they import these).

* prototypes, squared Euclidean distance and the episode cross-entropy of the prototype-based methods (ProtoNet,
  TADAM);
* ``MAMLNet``: a backbone followed by a linear classifier, run functionally by the gradient-based methods (MAML,
  Reptile, and the Meta-LSTM's learner);
* the classifier pretraining of the transfer methods (MTL and its ``pretrain-only`` variant, Baseline and
  Baseline++): ``train_image_count`` (epochs are counted in images of the training split), ``seeded_fork`` (the
  pretraining's own seeded torch RNG, so that computing or reusing a cached pretraining leaves the run's later random
  draws identical) and ``train_classifier`` (the loop: batches ``ctx.sampler.batch(i, ...)`` over all training
  classes, cross-entropy, one optimiser step per batch).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

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


def train_classifier(ctx, net: nn.Module, head: nn.Module, optimizer: torch.optim.Optimizer, iters: int,
                     batch: int, stream: str, desc: str, scheduler=None,
                     after_step: Callable[[int], None] | None = None) -> None:
    """``iters`` steps of ``head(net(x))`` trained with cross-entropy on batches ``ctx.sampler.batch(i, batch,
    stream)`` (uniform over the training split's images, labels 0..n_classes-1): one ``optimizer`` (and
    ``scheduler``) step per batch, ``net`` in training mode; ``after_step(i)`` after step ``i`` (e.g. a
    validation, which may switch ``net`` to eval mode)."""
    for it in ctx.iterate(range(iters), total=iters, desc=desc):
        net.train()
        x, y = ctx.sampler.batch(it, batch, stream=stream)
        loss = F.cross_entropy(head(net(x.to(ctx.device))), y.to(ctx.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step(it)

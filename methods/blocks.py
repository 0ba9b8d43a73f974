"""Building blocks several methods share (no method imports another method; they import these).

* prototypes, squared Euclidean distance and the episode cross-entropy of the prototype-based methods (ProtoNet,
  TADAM);
* ``MAMLNet``: a backbone followed by a linear classifier, run functionally by the gradient-based methods (MAML,
  Reptile, and the Meta-LSTM's learner).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.backbones import channels_last
from benchmark.episodes import Episode


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

"""Relation Network (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018).

An embedding module f keeps a spatial feature map; a class's map is the element-wise sum of its support examples'
maps (Sec. 3.3, K-shot); each (class, query) pair is concatenated depth-wise, ``C(f(x_i), f(x_j))``, and a learned
relation module g scores it in [0, 1] (Eq. 1). Training regresses the scores onto one-hot targets with mean squared
error (Eq. 2), with Adam.

Architecture (Sec. 3.4, Fig. 2):

* Embedding: four conv blocks (3x3 conv, 64 filters, BatchNorm, ReLU), 2x2 max-pooling in the first two only. In
  this benchmark the embedding is the run's shared backbone with ``keep_spatial=True``; the paper's own embedding is
  ``--backbone conv4-relation`` ([64, 7, 7] on 28x28 Omniglot; the paper's code leaves blocks 1-2 unpadded, which
  gives [64, 5, 5]; the shared backbone pads every conv). ``conv4`` gives [64, 3, 3] (its last pooling skipped),
  ``resnet12`` [640, 1, 1] on 28x28.
* Relation module: two conv blocks (3x3 conv, 64 filters, BatchNorm, ReLU, 2x2 max-pool) on the 2C-channel pair,
  then FC (hidden 8, ReLU) and FC (1, sigmoid).

Adapting the relation module to the feature-map size (decision; the paper fixes it per dataset):

* Both relation convs use padding 1, so they never shrink the map.
* Each block max-pools 2x2 (floor) only when the map is at least 2x2, and otherwise skips its pooling.
* An adaptive average pool to 1x1 follows, so the first FC layer always sees 64 inputs.

With the paper's Omniglot map (5x5) this is exactly the paper's path (5 -> 2 -> 1, FC on 64 = 64x1x1, padding 1 as in
the authors' Omniglot code). Maps then go 7 -> 3 -> 1 (conv4-relation), 3 -> 1 -> 1 (conv4: second pool skipped) and
1 -> 1 -> 1 (resnet12). For miniImageNet's 19x19 map the paper uses unpadded relation convs and an FC on 64x3x3; here
it is 19 -> 9 -> 4 -> average -> 64.

Protocol (Sec. 4): Adam, learning rate 1e-3 halved every 100,000 episodes (authors' schedule); training episodes have
the test ways and shots with 19 / 15 / 10 / 5 queries per class for Omniglot 5w1s / 5w5s / 20w1s / 20w5s, and 15 / 10
for miniImageNet 5w1s / 5w5s; 1,000,000 training episodes on Omniglot and 500,000 on miniImageNet (authors' code).
Weight initialisation follows the authors' code (``weights_init``, applied to both networks): He-normal (fan-out)
convolutions with zero bias, BatchNorm weight 1 and bias 0, N(0, 0.01) linear weights with bias 1; the shared
backbone is re-initialised this way when the Relation Network builds it (the initialisation is part of the method's
training protocol, the architecture stays the shared one). Each network's gradient norm is clipped at 0.5 before the
Adam step (authors' code, ``clip_grad_norm(..., 0.5)`` on the encoder and on the relation module separately).
The loss is the mean (not the sum of Eq. 2) of the squared errors over all (query, class) pairs, as in the authors'
code; with Adam the two differ only by a constant scale. ``predict`` returns the relation scores as logits.

Variant ``relation-mean``: a class's support maps are averaged instead of summed (identical at 1 shot). Sec. 3.3 and
the authors' code sum them; some re-implementations (easyfsl) average, and at the quick budget, 5-shot, one seed, that
choice alone measured +1.61 +- 0.32 points. The variant shows what it costs or gains; the main entry sums.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.kit.episodes import Episode

from .base import Context, EmbeddingPredict, Hyper, Setting


@dataclass
class RelationHyper(Hyper):
    lr: float = 1e-3  # Sung et al. Sec. 4: Adam, learning rate 1e-3
    lr_halve_every: int = 100000  # Sec. 4 / authors' code: "annealed by half every 100,000 episodes"
    relation_width: int = 64  # Sec. 3.4: relation-module conv blocks of 64 filters
    hidden: int = 8  # Sec. 3.4: first FC layer 8-dimensional, ReLU; second 1-dimensional, sigmoid
    clip_norm: float = 0.5  # authors' code: gradient norm of each network clipped at 0.5 (0: no clipping)


# Sec. 4.1: query images per class in training episodes (Omniglot) and Sec. 4.2 (miniImageNet)
PAPER_QUERIES = {("omniglot", 5, 1): 19, ("omniglot", 5, 5): 15, ("omniglot", 20, 1): 10, ("omniglot", 20, 5): 5,
                 ("miniimagenet", 5, 1): 15, ("miniimagenet", 5, 5): 10}


def paper_queries(setting: Setting) -> int:
    """The paper's training queries per class for the setting (nearest listed one when not in the paper)."""
    key = (setting.dataset, setting.ways, setting.shots)
    if key in PAPER_QUERIES:
        return PAPER_QUERIES[key]
    if setting.dataset == "omniglot":
        return PAPER_QUERIES[("omniglot", 5 if setting.ways <= 5 else 20, 1 if setting.shots == 1 else 5)]
    return 15 if setting.shots == 1 else 10


def authors_init(net: nn.Module) -> None:
    """The authors' ``weights_init``: He-normal (fan-out) convolutions with zero bias, BatchNorm (1, 0), linear
    layers N(0, 0.01) with bias 1."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.ones_(m.bias)


class RelationModule(nn.Module):
    """g: two conv blocks and two FC layers on a depth-wise concatenated pair of feature maps -> score in (0, 1)."""

    def __init__(self, in_channels: int, width: int = 64, hidden: int = 8):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, 1)
        authors_init(self)

    @staticmethod
    def _pool(h: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(h, 2) if min(h.shape[-2:]) >= 2 else h

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        h = self._pool(F.relu(self.bn1(self.conv1(pairs))))
        h = self._pool(F.relu(self.bn2(self.conv2(h))))
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(h)))).squeeze(1)


def class_maps(z: torch.Tensor, y: torch.Tensor, ways: int, mean: bool = False) -> torch.Tensor:
    """Element-wise sum (Sec. 3.3), or with ``mean`` the average, of each class's support feature maps:
    [n, C, h, w] -> [ways, C, h, w]."""
    onehot = F.one_hot(y, ways).to(z.dtype)  # [n, ways]
    if mean:
        onehot = onehot / onehot.sum(0, keepdim=True)
    return torch.einsum("nk,nchw->kchw", onehot, z)


class RelationNet(EmbeddingPredict):
    """Relation Network: a learned deep non-linear metric on pairs of (class, query) feature maps."""

    name = "relation"
    family = "metric"
    idea = ("a small CNN and MLP score each query feature map against each class's summed support maps in [0, 1], "
            "regressed to one-hot targets by mean squared error")
    paper = ("Sung, Yang, Zhang, Xiang, Torr & Hospedales. Learning to Compare: Relation Network for Few-Shot "
             "Learning. CVPR 2018")
    Hyper = RelationHyper
    metric_facts = {
        "support embedding": "CNN feature map, summed over each class's shots",
        "query embedding": "the same CNN feature map",
        "distance": "learned relation module (CNN + MLP, sigmoid) on depth-wise concatenated maps",
        "distinctive": "the metric itself is learned; MSE regression of relation scores to one-hot targets",
    }
    mean_support = False  # Sec. 3.3: a class's support maps are summed (True: averaged, the relation-mean variant)

    @classmethod
    def profile_hyper(cls, profile: str, setting: Setting) -> RelationHyper:
        queries = paper_queries(setting)
        if profile == "paper":
            steps = 1000000 if setting.dataset == "omniglot" else 500000
            return RelationHyper(train_steps=steps, train_queries=queries, val_every=5000)
        if profile == "quick":
            # ~2 minutes of training on 2 CPU cores, Omniglot 28x28 5-way, conv4 (estimated ~85-90 ms per step)
            steps = 1450 if setting.shots == 1 else 1350
            # the authors' schedule (halve every 100,000 episodes) is kept: no decay within the budget
            return RelationHyper(train_steps=steps, train_queries=queries, val_every=250)  # 6 curve points
        # smoke (Method.hyper has checked the profile name)
        return RelationHyper(train_steps=100, train_queries=5, val_every=25)

    def __init__(self, hp: RelationHyper, ctx: Context):
        super().__init__(hp, ctx)
        self.encoder = ctx.backbone(keep_spatial=True)
        authors_init(self.encoder)
        channels = ctx.feature_shape(self.encoder)[0]
        self.relation = RelationModule(2 * channels, hp.relation_width, hp.hidden).to(ctx.device)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=hp.lr_halve_every, gamma=0.5)

    def score(self, episode: Episode, z: torch.Tensor | None = None) -> torch.Tensor:
        """Relation scores r_{q,k} in (0, 1) for every query q and class k: [n_query, ways]; ``z``: the episode's
        (support, query) feature maps when already computed."""
        if z is None:
            z = self.encoder(torch.cat([episode.support_x, episode.query_x]))
        n = episode.support_x.shape[0]
        cls = class_maps(z[:n], episode.support_y, episode.ways, self.mean_support)  # [ways, C, h, w]
        q = z[n:]
        nq, ways = q.shape[0], cls.shape[0]
        pairs = torch.cat([cls.unsqueeze(0).expand(nq, -1, -1, -1, -1),
                           q.unsqueeze(1).expand(-1, ways, -1, -1, -1)], dim=2)  # [nq, ways, 2C, h, w]
        return self.relation(pairs.flatten(0, 1)).view(nq, ways)

    def train_step(self, episodes: list[Episode], step: int) -> dict[str, float]:
        self.train()
        self.optimizer.zero_grad(set_to_none=True)
        out = self.backward_episodes(episodes, self._mse)
        if self.hp.clip_norm:
            for net in (self.encoder, self.relation):
                nn.utils.clip_grad_norm_(net.parameters(), self.hp.clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        return out

    def _mse(self, ep: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean squared error of the relation scores against one-hot targets (Sung et al. Eq. 4)."""
        r = self.score(ep)
        return F.mse_loss(r, F.one_hot(ep.query_y, ep.ways).to(r.dtype)), r


class RelationNetMean(RelationNet):
    """Relation Network with each class's support feature maps averaged instead of summed (same at 1 shot)."""

    name = "relation-mean"
    variant_of = "relation"
    idea = ("a small CNN and MLP score each query feature map against each class's averaged support maps in [0, 1], "
            "regressed to one-hot targets by mean squared error")
    metric_facts = {**RelationNet.metric_facts, "support embedding": "CNN feature map, averaged over each class's shots"}
    mean_support = True

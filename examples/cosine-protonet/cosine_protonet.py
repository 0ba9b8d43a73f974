"""Prototypical Networks with a scaled cosine similarity: an external method for the few-shot benchmark.

Prototypes are the mean support embeddings (Snell et al., NeurIPS 2017, Sec. 2.2); a query's logit for a class is
its cosine similarity to the prototype times a learned scale, as in Gidaris & Komodakis's cosine classifier
(CVPR 2018, "Dynamic Few-Shot Visual Learning without Forgetting", Sec. 3.2, Eq. 3), so the softmax is not capped
by the bounded cosine. Everything else is ProtoNet's protocol.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from methods.base import Context, Hyper, Method, Setting
from methods.blocks import cross_entropy, prototypes


@dataclass
class CosineProtoHyper(Hyper):
    lr: float = 1e-3  # Snell et al. Sec. 3.1: Adam, learning rate 1e-3
    lr_halve_every: int = 2000  # Snell et al. Sec. 3.1: halved every 2,000 episodes
    init_scale: float = 10.0  # Gidaris & Komodakis Sec. 3.2: the scale s is learned; 10 is this example's start


class CosineProtoNet(Method):
    name = "cosine-protonet"
    family = "metric"
    idea = "class prototype = mean support embedding; scaled cosine similarity"
    paper = "Snell et al. NeurIPS 2017 (prototypes); Gidaris & Komodakis CVPR 2018 (scaled cosine)"
    Hyper = CosineProtoHyper
    metric_facts = {"support embedding": "shared CNN f, averaged per class (prototype)",
                    "query embedding": "the same CNN f", "distance": "cosine similarity times a learned scale",
                    "distinctive": "ProtoNet with a bounded similarity and a learned temperature"}

    @classmethod
    def profile_hyper(cls, profile: str, setting: Setting) -> CosineProtoHyper:
        shots1 = setting.shots == 1
        if profile == "paper":  # ProtoNet's (Snell et al. Sec. 3.1): 60-way Omniglot episodes, 5 queries
            return CosineProtoHyper(train_steps=20000, train_ways=60, train_queries=5, val_every=500)
        if profile == "quick":  # the built-in ProtoNet's quick budget on Omniglot
            return CosineProtoHyper(train_steps=450 if shots1 else 250, train_ways=60, train_queries=5, val_every=50)
        return CosineProtoHyper(train_steps=60, train_ways=20, train_queries=5, val_every=20)

    def __init__(self, hp: CosineProtoHyper, ctx: Context):
        super().__init__(hp, ctx)
        self.encoder = ctx.backbone()
        self.scale = torch.nn.Parameter(torch.tensor(hp.init_scale, device=ctx.device))
        self.optimizer = torch.optim.Adam([*self.encoder.parameters(), self.scale], lr=hp.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=hp.lr_halve_every, gamma=0.5)

    def logits(self, episode) -> torch.Tensor:
        z = self.encoder(torch.cat([episode.support_x, episode.query_x]))
        n = episode.support_x.shape[0]
        protos = prototypes(z[:n], episode.support_y, episode.ways)
        return self.scale * F.normalize(z[n:], dim=-1) @ F.normalize(protos, dim=-1).t()

    def train_step(self, episodes, step: int) -> dict[str, float]:
        self.train()
        self.optimizer.zero_grad(set_to_none=True)
        out = self.backward_episodes(episodes, lambda ep: cross_entropy(self.logits(ep), ep))
        self.optimizer.step()
        self.scheduler.step()
        return out

    @torch.no_grad()
    def predict(self, episode) -> torch.Tensor:
        self.eval()
        return self.logits(episode)

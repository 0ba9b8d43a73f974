"""Baseline and Baseline++: transfer learning by fine-tuning (Chen, Liu, Kira, Wang & Huang, ICLR 2019).

No meta-learning. Two stages (Chen et al., Sec. 3.1 and Fig. 1):

1. **Training stage.** The shared backbone plus a classifier over all training classes (``ctx.sampler.batch``,
   labels ``0..n_classes-1``) is trained with cross-entropy: Adam at PyTorch's default learning rate 1e-3 (the
   official code's ``train.py``: ``torch.optim.Adam(model.parameters())``), batches of 16 (``SimpleDataManager(
   batch_size=16)``), no learning-rate schedule and no validation: the code keeps the last epoch's model (its
   ``test_loop`` returns -1 for the baselines unless the CUB-only Davies-Bouldin option is set). The classifier is
   then discarded and the backbone frozen. The pretrained backbone is computed once per (dataset, backbone, seed,
   head, pretraining hyperparameters) through ``ctx.cached`` and shared by every ways/shots setting, under its own
   seeded torch RNG (``blocks.seeded_fork``). A run stopped during it resumes it from its last snapshot (every
   ``blocks.SNAPSHOT_EVERY`` iterations, through ``ctx.snapshots``) to the same backbone.
2. **Fine-tuning stage** (every test episode). A *new* classifier with one output per episode class is trained on the
   frozen features of the support set and classifies the queries: 100 passes over the support set in shuffled
   mini-batches of 4 (the paper's "100 iterations"; ``methods/baselinefinetune.py`` loops ``for epoch in
   range(100)`` over ``range(0, support_size, 4)``, so a 5-way 5-shot episode takes 700 updates, a 1-shot one 200),
   SGD with learning rate 0.01, momentum 0.9, dampening 0.9 and weight decay 0.001, as torch.optim.SGD defines them
   (no dampening on the first step).

**Baseline** uses linear classifiers (``nn.Linear``; the pretraining classifier's bias starts at zero as in
``baselinetrain.py``). **Baseline++** (Sec. 3.2) uses the cosine-similarity classifier of the code's
``backbone.distLinear`` in both stages: logits ``scale * <x / (|x| + 1e-5), g_c v_c / |v_c|>``, the weight
normalisation ``W = g v / |v|`` per class (``WeightNorm.apply(..., dim=0)``: a learnable norm ``g_c`` per class,
initialised to ``|v_c|``, no bias) and a fixed scale of 2 for classifiers with at most 200 outputs and 10 above
(``distLinear``: "in omniglot, a larger scale factor is required to handle >1000 output classes"). So Omniglot's
4,112-class pretraining classifier uses 10, miniImageNet's (64) and CUB's (100) 2, and the 5-way test-time classifier
2, all as in the official code. ``scale`` overrides the rule for both stages.

Decisions where the harness differs from the official code:

* **Batches** are drawn uniformly from the training split's images (``ctx.sampler.batch(i, 16,
  stream="baseline-pretrain")``, the same stream and the same backbone initialisation for both heads), not as
  shuffled epochs; an epoch is ``n_train_images / 16`` batches. No data augmentation (the paper's Table 1 figures on
  miniImageNet and CUB were trained with it; the benchmark has none).
* **Pretraining classifier width**: one output per training class. The code sizes it with ``--num_classes`` (200 by
  default, 4,112 or more for Omniglot); its outputs beyond the label ids never receive a label and only take part in
  the softmax. The cosine scale rule gives the same scales either way (see above).
* **Test-time randomness**: the new classifier's initialisation (nn.Linear's default, uniform in ``+-1/sqrt(d)``) and
  the support-set shuffling come from a local ``torch.Generator`` seeded from the run's seed (``keyed_rng(
  "baseline-finetune", seed)``), reset for every episode: a prediction is a pure function of the model and the
  episode's tensors, the global RNG is never read, and ``predict_many`` fine-tunes a group of same-shaped episodes
  in lockstep (batched tensors) with the numbers of ``predict`` on each. The code draws both from the global RNG.
* **Budget**: the training stage is spent in ``__init__`` (as MTL's pretraining), so the run has one no-op training
  step, ``train_episodes`` 0 and no ``budget_fraction`` (its budget is in images, not episodes); the pretraining's
  seconds are in the run's ``summary["cache"]`` record.

**Relation to MTL's ``pretrain-only`` variant** (``methods/mtl.py``; the MTL paper's "update theta" ablation). The
same: the backbone is pretrained as a classifier over all training classes with cross-entropy on
``ctx.sampler.batch`` batches (the one loop, ``blocks.train_classifier``, under a seeded torch RNG,
``blocks.seeded_fork``), cached and shared across settings, then frozen; each test episode fits a linear classifier on
the support features; nothing is meta-trained. What differs: the pretraining recipe (here Adam 1e-3, batch 16, fixed
epochs, last state; MTL: SGD with Nesterov momentum, lr 0.1 decayed in steps, batch 128, weight decay, and the best
of several 5-way 1-shot meta-validations) and therefore the cache entry (``baseline-pretrain``, not
``mtl-pretrain``); and the test-time classifier (here a fresh random initialisation per episode and mini-batch SGD
with momentum and weight decay, 100 passes; ``pretrain-only``: full-batch gradient descent, 100 steps, from one
fixed kaiming-normal initialisation stored in the model). Baseline++'s cosine classifier has no MTL counterpart.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.kit.episodes import Episode, keyed_rng

from .base import Context, Hyper, Method, Setting
from .blocks import seeded_fork, train_classifier, train_image_count

#: Training images of the datasets the profiles size their budgets for (epochs are counted in these): Omniglot's
#: Vinyals split (4,112 classes x 20) and, for every other dataset, miniImageNet's 64 x 600 (as MTL's profiles).
OMNIGLOT_TRAIN_IMAGES = 82240
OTHER_TRAIN_IMAGES = 38400


@dataclass
class BaselineHyper(Hyper):
    # ---- no meta-training: one no-op step, validated once (the harness's curve point)
    train_steps: int = 1
    val_every: int = 1
    # ---- training stage (official code, train.py)
    pre_epochs: float = 400.0  # train.py: stop_epoch 400 for baseline/baseline++ on miniImagenet and by default
    pre_batch: int = 16  # train.py: SimpleDataManager(image_size, batch_size=16) for baseline/baseline++
    pre_lr: float = 1e-3  # train.py: torch.optim.Adam(model.parameters()), i.e. PyTorch's default lr 1e-3
    # ---- fine-tuning stage (official code, methods/baselinefinetune.py set_forward_adaptation)
    finetune_epochs: int = 100  # baselinefinetune.py: for epoch in range(100), each a pass over the support set
    finetune_batch: int = 4  # baselinefinetune.py: batch_size = 4
    finetune_lr: float = 0.01  # baselinefinetune.py: torch.optim.SGD(..., lr=0.01, ...)
    finetune_momentum: float = 0.9  # baselinefinetune.py: momentum=0.9
    finetune_dampening: float = 0.9  # baselinefinetune.py: dampening=0.9
    finetune_weight_decay: float = 1e-3  # baselinefinetune.py: weight_decay=0.001
    # ---- Baseline++ only: cosine classifier scale; None: backbone.py distLinear's rule, 2 for <= 200 classes, else 10
    scale: float | None = None


def cosine_scale(hp: BaselineHyper, classes: int) -> float:
    """The cosine classifier's scale for a classifier with ``classes`` outputs (``distLinear``'s rule, or ``scale``)."""
    if hp.scale is not None:
        return float(hp.scale)
    return 2.0 if classes <= 200 else 10.0


def cosine_logits(z: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float) -> torch.Tensor:
    """Baseline++'s scores ``scale * <z / (|z| + 1e-5), g_c v_c / |v_c|>``; batched: ``z`` [..., n, d], ``v``
    [..., C, d], ``g`` [..., C] -> [..., n, C]."""
    zn = z / (z.norm(dim=-1, keepdim=True) + 1e-5)
    w = g.unsqueeze(-1) * v / v.norm(dim=-1, keepdim=True)
    return scale * (zn @ w.transpose(-1, -2))


class CosineClassifier(nn.Module):
    """The weight-normalised cosine classifier (``distLinear``): direction ``v`` with nn.Linear's initialisation,
    norm ``g`` initialised to ``|v|`` per class, no bias."""

    def __init__(self, features: int, classes: int, scale: float):
        super().__init__()
        self.v = nn.Parameter(nn.Linear(features, classes, bias=False).weight.detach().clone())
        self.g = nn.Parameter(self.v.detach().norm(dim=1))
        self.scale = scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return cosine_logits(z, self.v, self.g, self.scale)


def sgd_update(params: list[torch.Tensor], grads: tuple[torch.Tensor, ...], bufs: list[torch.Tensor | None],
               lr: float, momentum: float, dampening: float, weight_decay: float) -> None:
    """One in-place step of torch.optim.SGD (not Nesterov) on ``params``; ``bufs`` holds the momentum buffers (None
    before the first step, which, as in torch, starts the buffer at the gradient without dampening)."""
    with torch.no_grad():
        for i, (p, g) in enumerate(zip(params, grads)):
            if weight_decay:
                g = g.add(p, alpha=weight_decay)
            if momentum:
                if bufs[i] is None:
                    bufs[i] = g.clone()
                else:
                    bufs[i].mul_(momentum).add_(g, alpha=1 - dampening)
                g = bufs[i]
            p.add_(g, alpha=-lr)


class Baseline(Method):
    """Baseline: a linear classifier over all training classes pretrains the backbone; per test episode a new linear
    classifier is fine-tuned on the frozen support features."""

    name = "baseline"
    family = "transfer"
    idea = "pretrain a classifier on all training classes; per episode, a new linear classifier on frozen features"
    paper = "Chen, Liu, Kira, Wang & Huang. A Closer Look at Few-shot Classification. ICLR 2019"
    Hyper = BaselineHyper
    adapts_at_test = True  # the test-time classifier is trained by gradient steps
    cosine = False  # Baseline++: the cosine-similarity classifier in both stages

    @classmethod
    def profile_hyper(cls, profile: str, setting: Setting) -> BaselineHyper:
        omniglot = setting.dataset == "omniglot"
        if profile == "paper":
            # train.py's stop_epoch for baseline/baseline++: omniglot 5, CUB 200 (its comment: "different as stated in
            # the open-review paper. However, using 400 epoch in baseline actually lead to over-fitting"),
            # miniImagenet 400, any other dataset 400.
            epochs = {"omniglot": 5.0, "cub": 200.0, "miniimagenet": 400.0}.get(setting.dataset, 400.0)
            return BaselineHyper(pre_epochs=epochs)
        n_img = OMNIGLOT_TRAIN_IMAGES if omniglot else OTHER_TRAIN_IMAGES
        if profile == "quick":
            # conv4 on 2 CPU cores: 8,000 batches of 16 (128,000 images, ~1.6 Omniglot epochs of the code's 5), one
            # pretraining per head shared by the 1- and 5-shot settings; the fine-tuning stage as in the paper.
            return BaselineHyper(pre_epochs=8000 * 16 / n_img)
        # smoke (Method.hyper has checked the profile name): 100 batches of 16; the paper's fine-tuning stage (with
        # fewer passes the new classifier stays near its random initialisation: lr 0.01, damped momentum)
        return BaselineHyper(pre_epochs=100 * 16 / n_img)

    meta_trains = False  # the training stage is classifier pretraining (batches of images), no episode

    @classmethod
    def tasks_per_step(cls, hp: BaselineHyper) -> int:
        return 0  # no training episodes: the budget is the pretraining's images (no budget_fraction)

    def __init__(self, hp: BaselineHyper, ctx: Context):
        super().__init__(hp, ctx)
        self.encoder = ctx.backbone()
        if not ctx.restoring:  # a saved model's state replaces the pretrained weights (benchmark.pipeline.models.load_run)
            self.encoder.load_state_dict(self._pretrained())
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.features = math.prod(ctx.feature_shape(self.encoder))
        self.finetune_seed = int(keyed_rng("baseline-finetune", ctx.seed).integers(2 ** 62))

    # ------------------------------------------------------------------------------------------- training stage
    def pretrain_key(self) -> dict:
        hp = self.hp
        key = {"version": 1, "head": "cosine" if self.cosine else "linear", "optimizer": "adam",
               "pre_epochs": hp.pre_epochs, "pre_batch": hp.pre_batch, "pre_lr": hp.pre_lr}
        if self.cosine:
            key["scale"] = cosine_scale(hp, self.ctx.sampler.n_classes)
        return key

    def _pretrained(self) -> dict:
        return self.ctx.cached("baseline-pretrain", self.pretrain_key(), self._pretrain)

    def _pretrain(self) -> dict:
        ctx, hp = self.ctx, self.hp
        with seeded_fork(ctx.device, "baseline-pretrain-init", ctx.seed):
            net = ctx.backbone()
            d, n = math.prod(ctx.feature_shape(net)), ctx.sampler.n_classes
            if self.cosine:
                head = CosineClassifier(d, n, cosine_scale(hp, n)).to(ctx.device)
            else:
                head = nn.Linear(d, n).to(ctx.device)
                nn.init.zeros_(head.bias)  # baselinetrain.py: self.classifier.bias.data.fill_(0)
            opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=hp.pre_lr)
            iters = max(1, round(hp.pre_epochs * train_image_count(ctx.sampler) / hp.pre_batch))
            train_classifier(ctx, net, head, opt, iters, hp.pre_batch, "baseline-pretrain", f"{self.name} pretrain")
            return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}

    def train_step(self, episodes: list[Episode], step: int) -> dict[str, float]:
        return {}  # nothing is meta-trained (meta_trains: the harness hands no episode)

    # ------------------------------------------------------------------------------------------- fine-tuning stage
    def _head_init(self, ways: int, gen: torch.Generator) -> list[torch.Tensor]:
        """The new classifier's parameters (nn.Linear's default initialisation, from ``gen``): [w, b] for Baseline,
        [v, g] (g = |v| per class) for Baseline++."""
        d = self.features
        bound = 1 / math.sqrt(d)
        w = (torch.rand(ways, d, generator=gen) * 2 - 1) * bound
        if self.cosine:
            return [w, w.norm(dim=1)]
        return [w, (torch.rand(ways, generator=gen) * 2 - 1) * bound]

    def _head_logits(self, z: torch.Tensor, params: list[torch.Tensor], ways: int) -> torch.Tensor:
        if self.cosine:
            return cosine_logits(z, params[0], params[1], cosine_scale(self.hp, ways))
        return z @ params[0].transpose(-1, -2) + params[1].unsqueeze(-2)

    def finetune(self, zs: torch.Tensor, ys: torch.Tensor, ways: int) -> list[torch.Tensor]:
        """The test-time classifiers of ``E`` same-shaped episodes, trained in lockstep: support features ``zs``
        [E, n, d] and labels ``ys`` [E, n]; every episode starts from the same initialisation and sees the same
        mini-batch order (a pure function of the run's seed, ``ways`` and ``n``). Returns the parameters, batched."""
        hp, (n_eps, n) = self.hp, ys.shape
        gen = torch.Generator().manual_seed(self.finetune_seed)
        params = [p.to(zs.device).expand(n_eps, *p.shape).clone().requires_grad_(True)
                  for p in self._head_init(ways, gen)]
        bufs: list[torch.Tensor | None] = [None] * len(params)
        with torch.enable_grad():
            for _ in range(hp.finetune_epochs):
                perm = torch.randperm(n, generator=gen).to(zs.device)
                for i in range(0, n, hp.finetune_batch):
                    idx = perm[i:i + hp.finetune_batch]
                    logits = self._head_logits(zs[:, idx], params, ways)
                    # the sum over episodes of each episode's mean loss: each episode's classifier gets its own gradient
                    loss = F.cross_entropy(logits.flatten(0, 1), ys[:, idx].flatten(), reduction="sum") / len(idx)
                    grads = torch.autograd.grad(loss, params)
                    sgd_update(params, grads, bufs, hp.finetune_lr, hp.finetune_momentum, hp.finetune_dampening,
                               hp.finetune_weight_decay)
        return [p.detach() for p in params]

    def predict(self, episode: Episode) -> torch.Tensor:
        return self.predict_many([episode])[0]

    eval_group = 20  # test episodes embedded in one encoder pass and fine-tuned in lockstep

    def predict_many(self, episodes: list[Episode]) -> list[torch.Tensor]:
        self.eval()
        with torch.no_grad():
            z = self.embed_episodes(self.encoder, episodes)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, ep in enumerate(episodes):
            groups.setdefault((ep.ways, len(ep.support_y)), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(episodes)
        for (ways, n), idx in groups.items():
            zs = torch.stack([z[i][:n] for i in idx])
            ys = torch.stack([episodes[i].support_y for i in idx])
            params = self.finetune(zs, ys, ways)
            with torch.no_grad():
                for j, i in enumerate(idx):
                    out[i] = self._head_logits(z[i][n:], [p[j] for p in params], ways)
        return out

    def adapted_parameters(self) -> int:
        return self.ctx.setting.ways * (self.features + 1)  # [ways, d] weight (direction) + bias (per-class norm)


class BaselinePlusPlus(Baseline):
    """Baseline++: the same two stages with a weight-normalised cosine-similarity classifier (scaled) in both."""

    name = "baseline++"
    idea = "Baseline with a scaled cosine-similarity classifier (weight-normalised) in pretraining and fine-tuning"
    cosine = True

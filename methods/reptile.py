"""Reptile (Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", arXiv 1803.02999, 2018).

Reptile meta-learns an initialisation ``theta`` by repeatedly training on a task and moving the initialisation
toward the trained weights (Nichol et al., Algorithm 2, the batched version):

    phi_i  = U^k_{tau_i}(theta)                         (k inner iterations of Adam on mini-batches of task i)
    theta <- theta + eps_t * (mean_i phi_i - theta)      (outer step; eps annealed linearly from 1 to 0)

No second derivatives and no query set are involved in training. At test time the network is fine-tuned on the
support set in the same way (50 iterations) and then classifies the queries.

Network: ``ctx.backbone(bn_running_stats=False)`` and a linear layer to ``ways`` outputs (the authors' Omniglot net
is the benchmark's ``--backbone conv4-strided``: four 3x3 stride-2 convolutions of 64 filters, flattened; their
miniImageNet net is ``--backbone conv4-32``). All parameters are meta-learned and adapted.

Protocol (paper App. A, Table 3, and the commands in the authors' README), Omniglot 5-way: Adam with beta1 = 0 and
learning rate 1e-3 in the inner loop, 5 inner iterations on mini-batches of 10, meta-batch 5 tasks, outer step size
1 annealed linearly to 0 over 100K outer iterations; evaluation fine-tunes for 50 iterations on mini-batches of 5.

Decisions and details taken from the authors' code where the paper is silent:

* Training shots: training tasks have ``train_shots`` = 10 examples per class (15 on miniImageNet) whatever the test
  shots, the paper's "training shots" (Table 3); that is how 1-shot 5-way training gets mini-batches of 10 from a
  50-image task. Training episodes carry one query per class (the harness needs at least one); Reptile does not use
  it.
* Mini-batches: as in the authors' ``_mini_batches``, the task's examples are shuffled and cut into consecutive
  batches, reshuffling at the end of each pass (each example is used once per pass; a batch may straddle two passes).
  Each pass's permutation is a pure function of a key, ``keyed_rng(seed, "reptile", step, task, pass)`` in training
  (``pass`` indexes the passes over the task's examples; in the paper's Omniglot setting, 50 examples, 5 batches of
  10, one pass) and ``keyed_rng("reptile-eval", *episode key, pass)`` at test (no dependence on global RNG).
* Inner Adam state: in the authors' code the Adam moments and step counter are not part of the reset between tasks;
  they carry over from task to task during meta-training, and evaluation starts from a copy of them that is then
  discarded. ``inner_state="carry"`` (default) does that (the state lives in module buffers, so checkpoints and the
  best-validation snapshot keep it); ``"reset"`` starts every task from a fresh Adam state. The update follows
  TensorFlow's Adam (``lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``, eps = 1e-8).
  ``inner_optimizer="sgd"`` replaces Adam with plain SGD (used by the tests and for the paper's SGD ablations).
* BatchNorm: the authors' network always normalises with the current batch's statistics
  (``tf.layers.batch_normalization(training=True)``), so there are no running averages (``bn_running_stats=False``).
  This is why transduction matters: ``transductive=False`` (default, the paper's main table) classifies each query
  in a batch made of the whole support set plus that one query, exactly as the authors' non-transductive
  evaluation, so no query sees another query's statistics; ``transductive=True`` classifies all queries in one batch
  (the queries' own statistics), the authors' ``--transductive``. The choice is a hyperparameter, so it is recorded
  in each run's config.json. The non-transductive (support + query) batches are computed together in one forward
  pass whose BatchNorm normalises each group with its own statistics (``explicit_batchnorm(group=n + 1)``): the
  same numbers as one forward pass per query (tested), about 2.5x faster than ``vmap`` over the queries on CPU.
* The ``quick`` profile keeps every paper hyperparameter except the number of outer iterations (budget), and the
  outer step size is annealed over the steps actually run.

Batched test-time adaptation (``batched_adaptation``; default: on CUDA only): ``predict_many`` fine-tunes a group of
test episodes together, each with its own copy of the parameters and of the Adam state (``[G, ...]`` tensors): the
gradients of the ``G`` episodes' mini-batches come from one ``torch.func.vmap`` of ``torch.func.grad`` over the
copies (the convolutions become grouped convolutions), and the Adam update is the same element-wise ``_foreach``
update as one episode's, on the stacked tensors. Each episode keeps its own keyed mini-batches and the same step
count, so it follows the same trajectory as ``predict`` up to floating-point rounding (tested: same logits within
1e-4, same predictions); the (support + query) classification batches of all the group's episodes then run in one
vmapped pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from benchmark.kit.backbones import explicit_batchnorm
from benchmark.kit.episodes import Episode, keyed_rng

from .base import Context, Hyper, Method, Setting
from .blocks import (
    BATCHED_EVAL_GROUP,
    MAMLNet,
    device_indices,
    episode_copies,
    gather_batches,
    resolve_batched_adaptation,
    shape_groups,
    stack_episodes,
)


@dataclass
class ReptileHyper(Hyper):
    inner_lr: float = 1e-3  # Nichol et al. Table 3 (Omniglot): Adam learning rate 0.001 (20-way: 0.0005)
    inner_iters: int = 5  # Table 3: inner iterations 5 (Omniglot 20-way 10, miniImageNet 8)
    inner_batch: int = 10  # Table 3: inner batch size 10 (Omniglot 20-way 20)
    inner_optimizer: str = "adam"  # App. A: "Adam with beta1 = 0" in the inner loop; "sgd" for tests/ablations
    adam_beta1: float = 0.0  # App. A: beta1 = 0
    adam_beta2: float = 0.999  # TensorFlow's default, used by the authors' code
    adam_eps: float = 1e-8  # TensorFlow's default
    inner_state: str = "carry"  # authors' code: Adam state carries over between tasks ("reset": fresh per task)
    meta_step: float = 1.0  # Table 3: outer step size 1.0 ...
    meta_step_final: float = 0.0  # ... annealed linearly to 0 (authors' README: --meta-step-final 0)
    eval_iters: int = 50  # Table 3: evaluation inner iterations 50
    eval_batch: int = 5  # Table 3 / README: evaluation inner batch 5 (miniImageNet 5-shot: 15; 20-way: 10)
    transductive: bool = False  # Sec. 6 / Table 1: main results non-transductive; True: the --transductive runs
    # Test episodes adapted together in one vectorised pass (predict_many; see the module docstring) or one at a time;
    # the same per-episode predictions (tested). Default None: by device, resolved when the method is built
    # (blocks.resolve_batched_adaptation): CUDA vectorised (a test episode took 227 ms one at a time on an H200, its
    # 50 small Adam steps bound by kernel launches: issue 28), CPU looped (today's path and numbers; not timed here).
    batched_adaptation: bool | None = None


def _buf(name: str) -> str:
    """Buffer name for a parameter's optimiser state ('.' is not allowed in buffer names)."""
    return name.replace(".", "__")


class Reptile(Method):
    """Reptile: train on a task with Adam, move the initialisation toward the trained weights."""

    name = "reptile"
    family = "initialization"
    compile_note = ("its network runs functionally over adapted weights that are new tensors at every inner step "
                    "(torch.func.functional_call), which a compiled module would re-trace")
    idea = ("after a few Adam steps on a task, the initialisation moves part of the way toward the adapted "
            "weights (first-order: no second derivatives)")
    paper = "Nichol, Achiam & Schulman. On First-Order Meta-Learning Algorithms. arXiv:1803.02999, 2018"
    Hyper = ReptileHyper
    adapts_at_test = True
    fixed_head = True  # the head has one output per class: re-tested only with the trained ways

    @classmethod
    def profile_hyper(cls, profile: str, setting: Setting) -> ReptileHyper:
        omniglot = setting.dataset == "omniglot"
        if omniglot and setting.ways >= 20:  # Table 3 / README, Omniglot 20-way
            inner = dict(inner_lr=5e-4, inner_iters=10, inner_batch=20, eval_batch=10)
            shots, paper_steps = 10, 200000
        elif omniglot:  # Omniglot 5-way
            inner = dict(inner_lr=1e-3, inner_iters=5, inner_batch=10, eval_batch=5)
            shots, paper_steps = 10, 100000
        else:  # miniImageNet (README: eval batch 5 for 1-shot, 15 for 5-shot)
            inner = dict(inner_lr=1e-3, inner_iters=8, inner_batch=10, eval_batch=5 if setting.shots == 1 else 15)
            shots, paper_steps = 15, 100000
        common = dict(meta_batch=5, train_shots=shots, train_queries=1, **inner)
        if profile == "paper":
            return ReptileHyper(train_steps=paper_steps, val_every=5000, **common)
        if profile == "quick":
            # About 2 minutes on 2 CPU cores, Omniglot 5-way 28x28, default conv4: a task (5 Adam iterations on 10
            # images) measured 40 ms (2 threads, idle machine), 200 ms per meta-step. One validation, at the end:
            # the non-transductive evaluation (50 iterations, then each query batched with the support set) costs
            # about 0.37 s (1-shot) and 0.75 s (5-shot) per episode, and the meta step is annealed to 0, so the
            # final initialisation is the one the paper tests.
            return ReptileHyper(train_steps=600, val_every=600, **common)
        # smoke (Method.hyper has checked the profile name)
        return ReptileHyper(train_steps=20, val_every=10, **{**common, "eval_iters": 10})

    def __init__(self, hp: ReptileHyper, ctx: Context):
        super().__init__(hp, ctx)
        if hp.inner_optimizer not in ("adam", "sgd"):
            raise ValueError(f"inner_optimizer must be 'adam' or 'sgd', not {hp.inner_optimizer!r}")
        if hp.inner_state not in ("carry", "reset"):
            raise ValueError(f"inner_state must be 'carry' or 'reset', not {hp.inner_state!r}")
        self.require_test_ways(hp.train_ways)
        if resolve_batched_adaptation(hp, ctx.device):
            self.eval_group = BATCHED_EVAL_GROUP  # the harness hands predict_many groups (on CUDA sized by memory)
        backbone = ctx.backbone(bn_running_stats=False)
        self.net = MAMLNet(backbone, math.prod(ctx.feature_shape(backbone)), ctx.setting.ways).to(ctx.device)
        # Inner Adam state carried between tasks (authors' code); buffers, so checkpoints and snapshots keep it.
        self.register_buffer("adam_t", torch.zeros((), dtype=torch.float64, device=ctx.device))
        self._adam_t_host: float | None = None  # adam_t's value, kept on the host (None: read it from the buffer)
        self.adam_m, self.adam_v = torch.nn.Module(), torch.nn.Module()
        for k, p in self.net.named_parameters():
            self.adam_m.register_buffer(_buf(k), torch.zeros_like(p))
            self.adam_v.register_buffer(_buf(k), torch.zeros_like(p))

    # ------------------------------------------------------------------ inner loop
    def _state(self, fresh: bool) -> dict:
        """A working copy of the inner Adam state: fresh zeros, or the carried one."""
        names = [k for k, _ in self.net.named_parameters()]
        if fresh:
            zeros = lambda: {k: torch.zeros_like(p) for k, p in self.net.named_parameters()}  # noqa: E731
            return {"t": 0.0, "m": zeros(), "v": zeros()}
        if self._adam_t_host is None:  # once after building or loading: a device read waits for the device
            self._adam_t_host = float(self.adam_t)
        return {"t": self._adam_t_host, **{s: {k: getattr(getattr(self, f"adam_{s}"), _buf(k)).clone() for k in names}
                                            for s in ("m", "v")}}

    def _store_state(self, state: dict) -> None:
        self.adam_t.fill_(state["t"])
        self._adam_t_host = float(state["t"])
        for s in ("m", "v"):
            for k, v in state[s].items():
                getattr(getattr(self, f"adam_{s}"), _buf(k)).copy_(v)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._adam_t_host = None  # a loaded adam_t (checkpoint, best state) is read again when next needed

    @staticmethod
    def batch_indices(n: int, batch: int, iters: int, key: tuple) -> list[np.ndarray]:
        """``iters`` mini-batches of ``batch`` indices into ``range(n)``: consecutive slices of a stream of
        permutations, permutation ``p`` drawn from ``keyed_rng(*key, p)`` (the authors' ``_mini_batches``)."""
        batch = min(batch, n)
        passes = math.ceil(batch * iters / n)
        stream = np.concatenate([np.argsort(keyed_rng(*key, p).bit_generator.random_raw(n), kind="stable")
                                 for p in range(passes)])
        return [stream[i * batch:(i + 1) * batch] for i in range(iters)]

    def inner_train(self, params: dict[str, torch.Tensor], state: dict, x: torch.Tensor, y: torch.Tensor,
                    batches: list[np.ndarray]) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """Train ``params`` (leaf tensors, updated in place) on the mini-batches; returns the last batch's loss and
        accuracy (before its update), as metrics (:meth:`~methods.base.Method.metric`). The mini-batches' indices
        reach the device in one copy (:func:`~methods.blocks.device_indices`), not one per iteration."""
        names, tensors = list(params), tuple(params.values())
        last = None
        every = device_indices(batches, x.device) if batches else None
        for i in range(len(batches)):
            idx_t = every[i]
            logits = functional_call(self.net, params, (x[idx_t],))
            loss = F.cross_entropy(logits, y[idx_t])
            grads = torch.autograd.grad(loss, tensors)
            last = (loss, logits, y[idx_t])  # read once, after the loop: no wait for the device per inner step
            with torch.no_grad():
                state["t"] = self.inner_update(list(tensors), list(grads), [state["m"][k] for k in names],
                                               [state["v"][k] for k in names], state["t"])
        if last is None:
            return 0.0, 0.0
        return self.metric(last[0]), self.accuracy_metric(last[1], last[2])

    def inner_update(self, tensors: list[torch.Tensor], grads: list[torch.Tensor], ms: list[torch.Tensor],
                     vs: list[torch.Tensor], t: float) -> float:
        """One in-place inner step on ``tensors`` (SGD, or TensorFlow's Adam with moments ``ms``/``vs`` at step
        ``t``); returns the new step count. ``_foreach`` ops: the same element-wise update as a per-tensor loop,
        fewer dispatches."""
        hp = self.hp
        if hp.inner_optimizer == "sgd":
            torch._foreach_add_(tensors, grads, alpha=-hp.inner_lr)
            return t
        t += 1.0
        b1, b2 = hp.adam_beta1, hp.adam_beta2
        lr_t = hp.inner_lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        torch._foreach_mul_(ms, b1)
        torch._foreach_add_(ms, grads, alpha=1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
        denom = torch._foreach_add(torch._foreach_sqrt(vs), hp.adam_eps)
        torch._foreach_addcdiv_(tensors, ms, denom, value=-lr_t)
        return t

    def leaf_params(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().clone().requires_grad_(True) for k, p in self.net.named_parameters()}

    # ------------------------------------------------------------------ meta-training
    def meta_step_size(self, step: int) -> float:
        frac = step / max(self.hp.train_steps, 1)
        return frac * self.hp.meta_step_final + (1 - frac) * self.hp.meta_step

    def train_step(self, episodes: list[Episode], step: int) -> dict[str, float]:
        self.train()
        hp = self.hp
        theta = {k: p.detach().clone() for k, p in self.net.named_parameters()}
        mean_phi = {k: torch.zeros_like(p) for k, p in theta.items()}
        state = self._state(fresh=hp.inner_state == "reset")
        loss_sum, acc_sum = 0.0, 0.0
        for task, ep in enumerate(episodes):
            if hp.inner_state == "reset" and task > 0:
                state = self._state(fresh=True)
            params = self.leaf_params()  # every task starts from theta
            batches = self.batch_indices(len(ep.support_y), hp.inner_batch, hp.inner_iters,
                                         (self.ctx.seed, "reptile", int(step), task))
            loss, acc = self.inner_train(params, state, ep.support_x, ep.support_y, batches)
            loss_sum += loss / len(episodes)
            acc_sum += acc / len(episodes)
            for k, p in params.items():
                mean_phi[k] += p.detach() / len(episodes)
        eps = self.meta_step_size(step)
        with torch.no_grad():
            for k, p in self.net.named_parameters():
                p.copy_(theta[k] + eps * (mean_phi[k] - theta[k]))
        if hp.inner_state == "carry":
            self._store_state(state)
        return {"loss": loss_sum, "acc": acc_sum, "meta_step": eps}

    # ------------------------------------------------------------------ test
    def adapt(self, episode: Episode) -> dict[str, torch.Tensor]:
        """Fine-tuned parameters for ``episode``'s support set (``eval_iters`` iterations); the module is untouched."""
        hp = self.hp
        params = self.leaf_params()
        state = self._state(fresh=hp.inner_state == "reset")
        batches = self.batch_indices(len(episode.support_y), hp.eval_batch, hp.eval_iters,
                                     ("reptile-eval", *episode.spec.key(episode.index)))
        with torch.enable_grad():
            self.inner_train(params, state, episode.support_x, episode.support_y, batches)
        return {k: p.detach() for k, p in params.items()}

    @torch.no_grad()
    def classify(self, params: dict[str, torch.Tensor], support_x: torch.Tensor, query_x: torch.Tensor
                 ) -> torch.Tensor:
        """Query logits: transductive (all queries in one batch) or not (each query batched with the support set)."""
        if self.hp.transductive:
            return functional_call(self.net, params, (query_x,))
        n = support_x.shape[0]
        batched = torch.cat([support_x.unsqueeze(0).expand(query_x.shape[0], *support_x.shape),
                             query_x.unsqueeze(1)], dim=1)  # [Q, n + 1, C, H, W]
        chunk = max(1, 1024 // (n + 1))  # queries per forward pass (bounds memory)
        out = []
        with explicit_batchnorm(self.net, group=n + 1):  # each (support + query) group has its own statistics
            for xb in batched.split(chunk):
                out.append(functional_call(self.net, params, (xb.flatten(0, 1),)).view(xb.shape[0], n + 1, -1)[:, n])
        return torch.cat(out)

    @classmethod
    def is_transductive(cls, hp: ReptileHyper) -> bool:
        """Transductive exactly when ``hp.transductive`` (all queries in one BatchNorm batch); measured by
        ``benchmark.check``."""
        return bool(hp.transductive)

    def predict(self, episode: Episode) -> torch.Tensor:
        self.eval()  # BatchNorm keeps using batch statistics (no running averages exist)
        return self.classify(self.adapt(episode), episode.support_x, episode.query_x)

    # ------------------------------------------------------------------ test, a group of episodes at once
    def adapt_many(self, episodes: list[Episode]) -> dict[str, torch.Tensor]:
        """``adapt`` of episodes of one shape, together: parameters ``[G, ...]``, row ``g`` episode ``g``'s.

        Every episode starts from the same parameters and Adam state and takes its own keyed mini-batches; one
        vmapped ``grad`` gives all the episodes' gradients, and ``inner_update`` (element-wise) updates the stacked
        parameters and moments as it updates one episode's."""
        hp = self.hp
        names = [k for k, _ in self.net.named_parameters()]
        params = episode_copies(dict(self.net.named_parameters()), len(episodes))
        state = self._state(fresh=hp.inner_state == "reset")
        ms, vs = (list(episode_copies(state[s], len(episodes)).values()) for s in ("m", "v"))
        t = state["t"]
        batches = [self.batch_indices(len(ep.support_y), hp.eval_batch, hp.eval_iters,
                                      ("reptile-eval", *ep.spec.key(ep.index))) for ep in episodes]
        xs, ys = stack_episodes(episodes, "support_x", "support_y")
        every = (device_indices([np.stack([b[i] for b in batches]) for i in range(hp.eval_iters)], xs.device)
                 if hp.eval_iters else None)  # one copy of every iteration's indices of the group

        def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(functional_call(self.net, p, (x,)), y)

        grads_of = vmap(grad(loss))
        for i in range(hp.eval_iters):
            x, y = gather_batches(xs, ys, every[i])
            with torch.enable_grad():
                g = grads_of(params, x, y)
            with torch.no_grad():
                t = self.inner_update([params[k] for k in names], [g[k] for k in names], ms, vs, t)
        return params

    @torch.no_grad()
    def classify_many(self, params: dict[str, torch.Tensor], support_x: torch.Tensor, query_x: torch.Tensor
                      ) -> torch.Tensor:
        """``classify`` of a group: ``params`` ``[G, ...]``, ``support_x`` ``[G, n, ...]``, ``query_x``
        ``[G, Q, ...]`` -> logits ``[G, Q, ways]``, one vmapped pass per chunk of queries (the same queries per
        chunk as ``classify``, for each of the ``G`` episodes)."""
        forward = vmap(lambda p, x: functional_call(self.net, p, (x,)))
        if self.hp.transductive:
            return forward(params, query_x)
        g, n, q = support_x.shape[0], support_x.shape[1], query_x.shape[1]
        batched = torch.cat([support_x.unsqueeze(1).expand(g, q, *support_x.shape[1:]),
                             query_x.unsqueeze(2)], dim=2)  # [G, Q, n + 1, C, H, W]
        chunk = max(1, 1024 // (n + 1))  # queries per episode per pass, as in classify
        out = []
        with explicit_batchnorm(self.net, group=n + 1):
            for xb in batched.split(chunk, dim=1):
                logits = forward(params, xb.flatten(1, 2))  # [G, c * (n + 1), ways]
                out.append(logits.view(g, xb.shape[1], n + 1, -1)[:, :, n])
        return torch.cat(out, dim=1)

    def predict_many(self, episodes: list[Episode]) -> list[torch.Tensor]:
        """``predict`` of each episode; with ``batched_adaptation`` the episodes of each shape adapt and are
        classified together (:meth:`adapt_many`, :meth:`classify_many`)."""
        if not self.hp.batched_adaptation:
            return [self.predict(ep) for ep in episodes]
        self.eval()
        out: list[torch.Tensor | None] = [None] * len(episodes)
        for idx in shape_groups(episodes):
            group = [episodes[i] for i in idx]
            sx, qx = stack_episodes(group, "support_x", "query_x")
            logits = self.classify_many(self.adapt_many(group), sx, qx)
            for j, i in enumerate(idx):
                out[i] = logits[j]
        return out

    @property
    def eval_activation_bytes(self) -> int:
        """Estimated bytes of activations per input value of a test episode in a batched ``predict_many``, for the
        harness's CUDA group size: the classification pass dominates (adaptation holds one step's graph of
        ``eval_batch`` images, a few percent of it). Non-transductive, each episode's pass holds up to
        ``min(Q, 1024 // (n + 1)) * (n + 1)`` images (each query with the support set) for its ``n + Q`` input
        images: that ratio times 2,048 bytes (the harness's default per value of a pass that keeps every
        activation; a no-grad pass holds fewer at once, so this is an upper estimate)."""
        s = self.ctx.setting
        n, q = s.ways * s.shots, s.ways * s.queries
        per_pass = q if self.hp.transductive else min(q, max(1, 1024 // (n + 1))) * (n + 1)
        return math.ceil(per_pass / (n + q)) * 4 * 512

    def adapted_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

"""Meta-LSTM optimizer (Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017).

A learner network (the run's backbone followed by a linear classifier over the episode's ways) is trained on an
episode's support set by a learned, coordinate-wise update rule; the meta-learner is trained so that the learner's
query-set loss after T updates is small.

The update (Sec. 3.1-3.2, Eq. 2-4): the learner's flat parameter vector is the cell state of an LSTM,

    c_t = f_t * c_{t-1} + i_t * (-grad_t),
    i_t = sigmoid(W_I . [x_t, c_{t-1}, i_{t-1}] + b_I)      (a learned per-coordinate learning rate),
    f_t = sigmoid(W_F . [x_t, c_{t-1}, f_{t-1}] + b_F)      (a learned per-coordinate shrinkage),

with one set of weights shared across all coordinates (Sec. 3.2, "parameter sharing"), and ``c_0`` (the learner's
initialisation) learned too. ``x_t`` is the 20-d output of a first, ordinary LSTM layer (hidden size 20, one state per
coordinate) whose input is the preprocessed loss and gradient (Sec. 3.2 / Andrychowicz et al.
2016: each of the two is mapped to (log|v|/p, sign v) if |v| >= e^-p else (-1, e^p v), p = 10; the scalar loss is
broadcast to every coordinate), as in the authors' code (``meta-learner-lstm.lua``: a 4-feature LSTM feeds the
meta-learner cell). With ``f_t = 1`` and ``i_t = lr`` the rule is plain gradient descent (tested).

Protocol (Sec. 4 and the authors' code): Adam with learning rate 1e-3, the meta-gradient's global norm clipped to
0.25, one episode per meta-update, 15 query examples per class; T = 12 updates with mini-batches of 5 for 1-shot and
T = 8 with mini-batches of 25 for 5-shot (i.e. the whole 5-way support set each update; mini-batches are drawn
without replacement from the support set with ``keyed_rng`` keyed by the episode and the step, never global random
state, so adaptation is a pure function of the episode). Learner: Conv-4 with 32 filters in the paper
(``--backbone conv4-32``); the method runs on whatever ``ctx.backbone()`` builds, functionally
(``torch.func.functional_call`` with the flat vector split and reshaped into the learner's parameters).

Decisions where the paper leaves a detail open (or paper and code differ):

* **Gradient scale**: Eq. 2 as written, ``grad_t`` = the gradient of the mini-batch's mean cross-entropy (also fed,
  with the mean loss, to the preprocessing). The authors' code (``feval`` in ``meta-learner-lstm.lua``) divides that
  gradient once more by the mini-batch size (``gradParameters:div(inputs:size(1))`` after an averaging criterion),
  so its updates start 5x (1-shot) / 25x (5-shot) smaller; the learned input gate can absorb the factor over the
  paper's 75,000 episodes, but on short budgets it cannot (with it the ``smoke`` profile stayed at chance, 23%).
  ``batch_divided_grad=True`` reproduces the code's scale.
* **Second derivatives are dropped** (Sec. 3.2, "we ignore the gradient of the learner's gradient"): the gradient
  and the loss fed to the meta-learner are computed at a detached copy of ``c_{t-1}``. The meta-gradient still flows
  through the cell-state chain (``f_t * c_{t-1}``), through the gates (which see ``c_{t-1}``) and into both LSTM
  layers, as in the authors' code (``DirectNode.getValue`` breaks only the learner's gradient computation).
* **Previous gate value**: the paper's Eq. 4 feeds ``i_{t-1}`` / ``f_{t-1}``; we feed the gate values (after the
  sigmoid), both zero at t = 1. (The Lua code feeds the pre-sigmoid activations; with the +-0.01 initial weights the
  difference is negligible at the start of training.)
* **Initialisation** (code, ``meta-learner-lstm.lua``): every meta-learner weight and bias uniform in [-0.01, 0.01],
  then the forget-gate bias uniform in [4, 5] (f ~ 0.98-0.99: almost no shrinkage) and the input-gate bias uniform in
  [-5, -4] (i ~ 0.007-0.018: a small learning rate), "so that the model starts with gradient descent"; ``c_0`` is the
  learner's ordinary PyTorch initialisation.
* **Batch normalisation** (Sec. 3.3 and the code): BatchNorm's affine parameters are learner parameters (part of the
  cell state). During meta-training batch statistics are used on both the support mini-batches and the query set.
  During meta-testing (``predict``), batch statistics are used on the support mini-batches, and the query set is
  normalised with running averages accumulated over this episode's T support mini-batches only (reset for every
  episode; momentum 0.9 for 1-shot and 0.95 for 5-shot, the authors' configs' ``BN_momentum``, in the same
  convention as PyTorch's: the weight of the newest batch), so no query statistics leak into the
  prediction and the prediction of one query does not depend on the others.
* **Learner head**: a linear layer over the backbone's flattened features with as many outputs as the episode's
  ways; training episodes therefore have the test setting's ways (``train_ways`` must stay ``None``).
* **Learner steps**: 12 updates of batch 5 (1-shot) and 8 of batch 25 (5-shot), as the paper states and the
  released ``train-imagenet-{1,5}shot.lua`` configs use (the 1-shot config's 5 passes of batch 5 over 25 examples
  are its setting for *evaluating* a 1-shot model on 5-shot tasks).
  The ``smoke`` profile (tests only) uses 5 updates and a meta learning rate of 3e-3 to learn within seconds.
* **Budget**: the paper does not give its number of meta-training episodes; the authors' configs use 75,000
  (1-shot) and 50,000 (5-shot) with a validation every 1,000 (``paper`` profile); the best-validation checkpoint is
  kept (the runner's protocol).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from benchmark.kit.episodes import Episode, draw_without_replacement, keyed_rng

from .base import Context, Hyper, Method, Setting
from .blocks import (  # the learner: backbone + linear head, as MAML's network
    BATCHED_EVAL_GROUP,
    MAMLNet,
    device_indices,
    gather_batches,
    resolve_batched_adaptation,
    shape_groups,
    stack_episodes,
)


@dataclass
class MetaLSTMHyper(Hyper):
    lr: float = 1e-3  # Ravi & Larochelle Sec. 4 / code config: Adam, learning rate 0.001
    grad_clip: float = 0.25  # Sec. 4 / code (maxGradNorm = 0.25): clip the meta-gradient's global norm
    hidden: int = 20  # Sec. 4 / code (nHidden = 20): hidden size of the first LSTM layer
    preprocess_p: float = 10.0  # Sec. 3.2, after Andrychowicz et al. 2016: p = 10 in the gradient/loss preprocessing
    inner_steps: int = 12  # Sec. 4: T = 12 learner updates for 1-shot (8 for 5-shot, set in `hyper`)
    inner_batch: int = 5  # Sec. 4: mini-batches of 5 for 1-shot (25 for 5-shot), drawn from the support set
    forget_bias: tuple[float, float] = (4.0, 5.0)  # code: b_F ~ U(4, 5), forget gate ~ 1 at the start
    input_bias: tuple[float, float] = (-5.0, -4.0)  # code: b_I ~ U(-5, -4), input gate (learning rate) ~ 0.01
    weight_init: float = 0.01  # code: all other meta-learner weights ~ U(-0.01, 0.01)
    bn_momentum: float = 0.9  # code configs: BN_momentum = 0.9 (1-shot), 0.95 (5-shot, set in `hyper`)
    train_queries: int = 15  # Sec. 4: 15 examples per class in each episode's test set
    batch_divided_grad: bool = False  # Eq. 2: mean-loss gradient; True: divided by the batch again (authors' feval)
    # Test episodes adapted together (predict_many: the learner's gradients of a group from one torch.func.vmap of
    # grad over per-episode cell states and BatchNorm averages; the meta-learner, coordinate-wise, runs on the group's
    # coordinates side by side) or one at a time; the same logits up to rounding (tested in float64). Default None: by
    # device at build (blocks.resolve_batched_adaptation): CUDA batched (issue 28: 68 / 51 ms per test episode on an
    # H200, launch-bound), CPU looped (today's path and numbers).
    batched_adaptation: bool | None = None


class CoordinateLSTM(nn.Module):
    """An ordinary LSTM layer applied to every coordinate independently (shared weights), in a transposed layout:
    inputs ``[features, n]``, state ``[hidden, n]`` for ``n`` coordinates.

    Same equations as ``nn.LSTMCell``; computing the gates as ``W [4h, in+h] @ [x; h]`` gives a ``[4h, n]`` block
    whose gate slices are contiguous, so every element-wise operation runs on contiguous memory (``nn.LSTMCell``
    on CPU works on strided chunks of an ``[n, 4h]`` tensor, several times slower for the ~10^5 coordinates of a
    Conv-4 learner).
    """

    def __init__(self, inputs: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.weight = nn.Parameter(torch.empty(4 * hidden, inputs + hidden))  # gates: input, forget, output, cell
        self.bias = nn.Parameter(torch.empty(4 * hidden, 1))

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.hidden
        if state is None:
            z = x.new_zeros(k, x.shape[1])
            state = (z, z)
        h, c = state
        gates = torch.addmm(self.bias, self.weight, torch.cat([x, h], 0))  # [4k, n]
        if not (torch.is_grad_enabled() and gates.requires_grad):  # adaptation at meta-test: in place, same values
            gates[:3 * k].sigmoid_()
            gates[3 * k:].tanh_()
            c = (gates[k:2 * k] * c).addcmul_(gates[:k], gates[3 * k:])
            return torch.tanh(c).mul_(gates[2 * k:3 * k]), c
        # split, not slicing: a slice's backward materialises a zero-filled [4k, n] gradient per slice, split's
        # backward is one concatenation (same values; 890 -> 779 ms per conv4 training task, 2 threads)
        gi, gf, go, gg = gates.split(k, dim=0)
        c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
        return torch.sigmoid(go) * torch.tanh(c), c


def preprocess(x: torch.Tensor, p: float) -> torch.Tensor:
    """Andrychowicz et al. (2016) preprocessing, used by Ravi & Larochelle Sec. 3.2: two features
    (log|x|/p, sign x) where |x| >= e^-p, else (-1, e^p x); returns ``[2, *x.shape]``."""
    big = x.abs() >= math.exp(-p)
    first = torch.where(big, x.abs().clamp_min(math.exp(-p)).log() / p, torch.full_like(x, -1.0))
    second = torch.where(big, torch.sign(x), x * math.exp(p))
    return torch.stack([first, second], dim=0)


# (step, c_{t-1}, grad) -> (forget gate, input gate): replaces the learned gates (tests; e.g. plain SGD)
GateOverride = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor | float, torch.Tensor | float]]


class MetaLSTM(Method):
    """Meta-LSTM: an LSTM whose cell state is the learner's parameters learns the update rule and the init."""

    name = "meta_lstm"
    family = "optimizer"
    compile_note = ("its learner runs functionally over the flat parameter vector the meta-learner writes at every "
                    "step (torch.func.functional_call), which a compiled module would re-trace")
    idea = ("a coordinate-wise LSTM updates the learner: its cell state is the learner's weights, its gates "
            "per-weight learning and forgetting rates, its initial cell state the learned initialisation")
    paper = "Ravi & Larochelle. Optimization as a Model for Few-Shot Learning. ICLR 2017"
    Hyper = MetaLSTMHyper
    adapts_at_test = True
    fixed_head = True  # the head has one output per class: re-tested only with the trained ways

    @classmethod
    def profile_hyper(cls, profile: str, setting: Setting) -> MetaLSTMHyper:
        one = setting.shots == 1
        # Sec. 4: T and the mini-batch; BatchNorm momentum of the authors' configs (train-imagenet-1shot.lua:
        # BN_momentum = 0.9; train-imagenet-5shot.lua: 0.95)
        shape = dict(inner_steps=12, inner_batch=5, bn_momentum=0.9) if one else dict(inner_steps=8, inner_batch=25,
                                                                                      bn_momentum=0.95)
        if profile == "paper":
            # Authors' configs: nEpisode = 75,000 (1-shot) / 50,000 (5-shot); validation on 100 episodes every 1,000
            # (printPer).
            return MetaLSTMHyper(train_steps=75000 if one else 50000, val_every=1000, **shape)
        if profile == "quick":
            # ~2 minutes of training on 2 CPU cores for Omniglot 28x28 on conv4 (112k learner coordinates): measured
            # 0.78 s (1-shot, T = 12) and 0.65 s (5-shot, T = 8) per task, 2 threads, idle machine. A validation
            # (100 episodes at ~0.38 s) costs about as much as 50 training tasks, hence one, at the end.
            steps = 150 if one else 180
            return MetaLSTMHyper(train_steps=steps, val_every=steps, **shape)
        # smoke (Method.hyper has checked the profile name)
        # seconds, for tests: 5 learner updates instead of T, 5 queries per class, a larger meta learning rate
        return MetaLSTMHyper(train_steps=30, val_every=15, train_queries=5, lr=3e-3, inner_steps=5,
                             inner_batch=shape["inner_batch"])

    def __init__(self, hp: MetaLSTMHyper, ctx: Context):
        super().__init__(hp, ctx)
        if resolve_batched_adaptation(hp, ctx.device):
            self.eval_group = BATCHED_EVAL_GROUP  # the harness hands predict_many groups (on CUDA sized by memory)
        backbone = ctx.backbone()  # BN with running-stat buffers: reset and used per episode at meta-test
        for m in backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = hp.bn_momentum
        self.learner = MAMLNet(backbone, math.prod(ctx.feature_shape(backbone)), ctx.setting.ways).to(ctx.device)
        names, shapes, init = [], [], []
        for n, p in self.learner.named_parameters():
            names.append(n)
            shapes.append(tuple(p.shape))
            init.append(p.detach().reshape(-1))
            p.requires_grad_(False)  # a template only: its values live in the cell state c_0
        self._names, self._shapes = names, shapes
        self._numels = [math.prod(s) for s in shapes]
        self._buffers0 = {n: b.detach().clone() for n, b in self.learner.named_buffers()}
        # meta-learner, first layer: an ordinary LSTM over the preprocessed (loss, gradient), 4 -> hidden
        self.lstm = CoordinateLSTM(4, hp.hidden)
        # meta-learner cell (Eq. 2-4): gates from [x_t (hidden), c_{t-1}, gate_{t-1}]
        self.w_f = nn.Parameter(torch.empty(hp.hidden + 2))
        self.w_i = nn.Parameter(torch.empty(hp.hidden + 2))
        self.b_f = nn.Parameter(torch.empty(()))
        self.b_i = nn.Parameter(torch.empty(()))
        with torch.no_grad():
            for p in [*self.lstm.parameters(), self.w_f, self.w_i]:
                p.uniform_(-hp.weight_init, hp.weight_init)
            self.b_f.uniform_(*hp.forget_bias)
            self.b_i.uniform_(*hp.input_bias)
        self.c0 = nn.Parameter(torch.cat(init).clone())  # the learner's initialisation = initial cell state
        self.to(ctx.device)
        self.optimizer = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=hp.lr)

    # ------------------------------------------------------------------ the learner, run from a flat vector
    def learner_params(self, flat: torch.Tensor, channels_last: bool = True) -> dict[str, torch.Tensor]:
        """``flat`` split and reshaped into the learner's parameters; convolution weights channels-last (as the
        backbone's) unless ``channels_last`` is False (under ``vmap``, which cannot convert a memory format)."""
        out = {}
        for n, s, v in zip(self._names, self._shapes, flat.split(self._numels)):
            v = v.view(s)
            out[n] = v.contiguous(memory_format=torch.channels_last) if channels_last and v.dim() == 4 else v
        return out

    def fresh_buffers(self) -> dict[str, torch.Tensor]:
        """BatchNorm running statistics at their reset values (one set per episode), floating ones in the learner's
        dtype (that of ``c0``)."""
        return {n: b.to(self.c0.dtype, copy=True) if b.is_floating_point() else b.clone()
                for n, b in self._buffers0.items()}

    def learner_forward(self, flat: torch.Tensor, x: torch.Tensor, buffers: dict[str, torch.Tensor],
                        batch_stats: bool = True, channels_last: bool = True) -> torch.Tensor:
        """Logits of the learner with parameters ``flat``; ``batch_stats``: BN normalises with the batch's statistics
        (and updates ``buffers`` in place), else with the running averages in ``buffers``; ``channels_last``: see
        :meth:`learner_params`."""
        self.learner.train(batch_stats)
        return functional_call(self.learner, {**self.learner_params(flat, channels_last), **buffers}, (x,))

    def adapted_parameters(self) -> int:
        return int(self.c0.numel())

    #: estimated bytes per learner coordinate per episode of a batched adaptation (:meth:`adapt_many`): the cell
    #: state, gradient, gates and their previous values, the LSTM's input, hidden and cell states (``hidden`` wide)
    #: and its gate pre-activations, float32, with the temporaries of one update: about 800 bytes
    EVAL_BYTES_PER_COORDINATE = 800

    @property
    def eval_episode_bytes(self) -> int:
        """Memory a test episode of a batched ``predict_many`` takes besides its images' activations, for the
        harness's CUDA group size (:func:`benchmark.pipeline.execution.group_size`): every coordinate of the
        learner is updated by the meta-learner side by side with the other episodes' (``G x n`` coordinates)."""
        return self.EVAL_BYTES_PER_COORDINATE * int(self.c0.numel())

    # ------------------------------------------------------------------ the update procedure
    def minibatches(self, episode: Episode) -> list[np.ndarray]:
        """Support indices of each of the T updates: drawn without replacement per update, a pure function of the
        episode's key (never global random state)."""
        n = episode.support_x.shape[0]
        b = min(self.hp.inner_batch, n)
        key = episode.spec.key(episode.index)
        return [np.sort(draw_without_replacement(keyed_rng(*key, "meta_lstm", "minibatch", t), n, b))
                for t in range(self.hp.inner_steps)]

    def adapt(self, episode: Episode, meta_graph: bool, buffers: dict[str, torch.Tensor] | None = None,
              gate_override: GateOverride | None = None) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """Run the T learner updates on the support set; returns the final cell state (the adapted learner's flat
        parameters) and gate statistics. ``meta_graph``: keep the graph back to the meta-learner's parameters.
        ``gate_override(t, c, grad) -> (f, i)`` replaces the learned gates (e.g. f = 1, i = lr: plain SGD)."""
        hp = self.hp
        n = self.c0.numel()
        buffers = self.fresh_buffers() if buffers is None else buffers
        c = self.c0 if meta_graph else self.c0.detach()
        state = None
        f_prev = i_prev = torch.zeros(n, device=c.device)
        f_sum = i_sum = 0.0
        batches = self.minibatches(episode)
        every = device_indices(batches, c.device) if batches else None  # one copy of every update's indices
        for t, idx in enumerate(batches):
            idx_t = every[t]
            x, y = episode.support_x[idx_t], episode.support_y[idx_t]
            with torch.enable_grad():
                theta = c.detach().requires_grad_(True)  # second derivatives dropped (Sec. 3.2)
                loss = F.cross_entropy(self.learner_forward(theta, x, buffers, batch_stats=True), y)
                (grad,) = torch.autograd.grad(loss, theta)
                if hp.batch_divided_grad:  # the authors' feval: mean-loss gradient divided by the batch size again
                    grad = grad / len(idx)
            loss = loss.detach()
            with torch.set_grad_enabled(meta_graph and torch.is_grad_enabled()):
                if gate_override is not None:
                    f, i = gate_override(t, c, grad)
                else:
                    f, i, state = self.gates(loss[None], grad, c, state, f_prev, i_prev)
                    f_prev, i_prev = f, i
                    f_sum = f_sum + self.metric(f.mean())
                    i_sum = i_sum + self.metric(i.mean())
                c = f * c - i * grad
        steps = max(hp.inner_steps, 1)
        return c, {"forget_gate": f_sum / steps, "input_gate": i_sum / steps}

    def gates(self, loss: torch.Tensor, grad: torch.Tensor, c: torch.Tensor, state, f_prev: torch.Tensor,
              i_prev: torch.Tensor):
        """The meta-learner's forget and input gates (Eq. 2-4) for coordinates ``c`` with gradient ``grad`` (both
        ``[n]``) and loss ``loss`` (``[1]``, or ``[n]``: each coordinate's own episode's loss); the LSTM's new
        state."""
        n = c.shape[0]
        inp = torch.cat([preprocess(loss, self.hp.preprocess_p).expand(2, n), preprocess(grad, self.hp.preprocess_p)],
                        dim=0)  # [4, n]
        state = self.lstm(inp, state)
        h = state[0]
        f = torch.sigmoid(self.w_f[:-2] @ h + self.w_f[-2] * c + self.w_f[-1] * f_prev + self.b_f)
        i = torch.sigmoid(self.w_i[:-2] @ h + self.w_i[-2] * c + self.w_i[-1] * i_prev + self.b_i)
        return f, i, state

    @torch.no_grad()
    def adapt_many(self, episodes: list[Episode]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``adapt`` (at meta-test) of episodes of one shape, together: the final cell states ``[G, n]`` and the
        BatchNorm running averages ``[G, ...]``, row ``g`` episode ``g``'s. Each episode takes its own keyed
        mini-batches; one vmapped ``grad`` gives all the learners' gradients (BatchNorm with each mini-batch's
        statistics, each episode's averages updated in place), and the meta-learner, shared by every coordinate,
        updates the ``G * n`` coordinates side by side."""
        hp = self.hp
        g, n = len(episodes), self.c0.numel()
        c = self.c0.detach().unsqueeze(0).expand(g, n).clone()
        buffers = {k: v.unsqueeze(0).expand(g, *v.shape).clone() for k, v in self.fresh_buffers().items()}
        batches = [self.minibatches(ep) for ep in episodes]
        xs, ys = stack_episodes(episodes, "support_x", "support_y")
        every = (device_indices([np.stack([b[t] for b in batches]) for t in range(hp.inner_steps)], xs.device)
                 if hp.inner_steps else None)  # one copy of every iteration's indices of the group

        def loss_of(theta, x, y, buf):
            return F.cross_entropy(self.learner_forward(theta, x, buf, batch_stats=True, channels_last=False), y)

        grads_of = vmap(grad_and_value(loss_of))
        state = None
        f_prev = i_prev = torch.zeros(g * n, device=c.device, dtype=c.dtype)
        for t in range(hp.inner_steps):
            x, y = gather_batches(xs, ys, every[t])
            with torch.enable_grad():
                grad, loss = grads_of(c, x, y, buffers)
            if hp.batch_divided_grad:
                grad = grad / x.shape[1]
            flat = c.reshape(-1)
            f, i, state = self.gates(loss[:, None].expand(g, n).reshape(-1), grad.reshape(-1), flat, state,
                                     f_prev, i_prev)
            f_prev, i_prev = f, i
            c = (f * flat - i * grad.reshape(-1)).view(g, n)
        return c, buffers

    # ------------------------------------------------------------------ the Method interface
    def train_step(self, episodes: list[Episode], step: int) -> dict[str, float]:
        self.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = acc_sum = f_sum = i_sum = 0.0
        for ep in episodes:
            self.require_test_ways(ep.ways, "a training episode's ways")
            buffers = self.fresh_buffers()
            c, gates = self.adapt(ep, meta_graph=True, buffers=buffers)
            logits = self.learner_forward(c, ep.query_x, buffers, batch_stats=True)  # Sec. 3.3: batch statistics
            loss = F.cross_entropy(logits, ep.query_y) / len(episodes)
            loss.backward()
            loss_sum = loss_sum + self.metric(loss)
            acc_sum = acc_sum + self.accuracy_metric(logits, ep.query_y) / len(episodes)
            f_sum = f_sum + gates["forget_gate"] / len(episodes)
            i_sum = i_sum + gates["input_gate"] / len(episodes)
        torch.nn.utils.clip_grad_norm_([p for p in self.parameters() if p.requires_grad], self.hp.grad_clip)
        self.optimizer.step()
        return {"loss": loss_sum, "acc": acc_sum, "forget_gate": f_sum, "input_gate": i_sum}

    def predict(self, episode: Episode) -> torch.Tensor:
        self.eval()
        buffers = self.fresh_buffers()
        c, _ = self.adapt(episode, meta_graph=False, buffers=buffers)
        with torch.no_grad():  # queries normalised with this episode's support running averages (Sec. 3.3)
            return self.learner_forward(c, episode.query_x, buffers, batch_stats=False)

    def predict_many(self, episodes: list[Episode]) -> list[torch.Tensor]:
        """``predict`` of each episode; with ``batched_adaptation`` the episodes of each shape adapt together
        (:meth:`adapt_many`) and their queries are classified in one vmapped pass (BatchNorm with each episode's own
        running averages, as in ``predict``)."""
        if not self.hp.batched_adaptation:
            return [self.predict(ep) for ep in episodes]
        self.eval()
        out: list[torch.Tensor | None] = [None] * len(episodes)
        forward = vmap(lambda theta, x, buf: self.learner_forward(theta, x, buf, batch_stats=False,
                                                                  channels_last=False))
        for idx in shape_groups(episodes):
            group = [episodes[i] for i in idx]
            c, buffers = self.adapt_many(group)
            (qx,) = stack_episodes(group, "query_x")
            with torch.no_grad():
                logits = forward(c, qx, buffers)
            for j, i in enumerate(idx):
                out[i] = logits[j]
        return out

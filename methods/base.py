"""The interface every few-shot method implements, and what the harness hands it.

A method is an ``nn.Module`` subclass of :class:`Method` with

* class facts: ``name`` (registry key), ``family`` ('metric' | 'initialization' | 'optimizer' | 'transfer'),
  ``idea`` (one line), ``paper`` (citation), ``Hyper`` (its hyperparameter dataclass, a subclass of
  :class:`Hyper`), and, for metric methods, ``metric_facts`` (support embedding, query embedding, distance,
  distinguishing feature);
* ``profile_hyper(profile, setting)``: the hyperparameters for a profile ('smoke', 'quick', 'paper') and a setting
  (called through ``hyper``, which refuses an unknown profile name);
* ``__init__(hp, ctx)``: build networks (through ``ctx.backbone``) and optimisers;
* ``train_step(episodes, step)``: one meta-training step on a meta-batch of episodes, including the optimiser
  update (at most one optimiser step per training episode the step consumes); returns metrics, each a float or,
  better, a :meth:`Method.metric` (a float on the CPU, a tensor on a GPU that the trainer reads at its next
  validation, so that the step never waits for the device);
* ``predict(episode)``: adapt to the episode's support set and return query logits ``[n_query, ways]``
  (a metric method that scores an episode from its images' embeddings subclasses :class:`EmbeddingPredict` and
  implements ``score(episode, z=None)`` instead: ``predict`` and a grouped ``predict_many`` come with it).

What a method sees. Training episodes carry all their labels. Validation and test episodes reach ``predict`` and
``predict_many`` as :class:`~benchmark.kit.episodes.QueryHidden` views: support images and labels, query images,
no query labels (reading ``query_y`` raises); the harness scores the logits. ``ctx.sampler`` gives the run's
training split only (episodes, batches, ``n_classes``, ``n_images``; no dataset, no other split) and the harness
counts every episode drawn through it: a run's training episodes are the meta-batches the harness hands
``train_step`` plus those, and must not exceed :meth:`Method.tasks_per_step` (the paper budget's unit). A method
that uses the other queries of an episode to score a query declares ``transductive = True`` (or overrides
:meth:`Method.is_transductive`); ``benchmark.check`` measures it and records it with every run.

A method draws any further training data from ``ctx.sampler`` (a pure function of its index, never global random
state), reports long preparations through ``ctx.progress`` and caches expensive artefacts with ``ctx.cached``. It
loads no data, writes no files and prints nothing: the harness does those.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from benchmark.kit.context import Context, Setting, train_episode_shape
from benchmark.kit.episodes import Episode
from benchmark.kit.profiles import check_profile

__all__ = ["Context", "Hyper", "Method", "Setting"]


@dataclass
class Hyper:
    """Training-budget fields every method has. Subclasses add their own, each with a comment citing its source.

    ``train_steps``: meta-training steps; ``meta_batch``: episodes per step; ``train_ways``/``train_shots``/
    ``train_queries``: the shape of training episodes (``None`` ways/shots: the test setting's);
    ``val_every``: steps between validations (a convergence-curve point each).
    """

    train_steps: int = 1000
    meta_batch: int = 1
    train_ways: int | None = None
    train_shots: int | None = None
    train_queries: int = 15
    val_every: int = 100

    def replace(self, **changes) -> "Hyper":
        return dataclasses.replace(self, **changes)


class Method(nn.Module):
    """Base class of all methods; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    idea: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Hyper: ClassVar[type[Hyper]] = Hyper
    variant_of: ClassVar[str | None] = None  # registry entries that are ablations/variants name their main method
    adapts_at_test: ClassVar[bool] = False  # predict() needs autograd (gradient steps on the support set)
    metric_facts: ClassVar[dict[str, str] | None] = None  # support/query embedding, distance, distinctive
    #: the classifier head has one output per class of the training setting (MAML, Reptile, the Meta-LSTM's learner):
    #: a trained model is tested only on episodes with that many ways (:meth:`check_test_ways`)
    fixed_head: ClassVar[bool] = False
    #: where the class comes from, set by the registry when it registers it (:func:`benchmark.pipeline.registry.origin`)
    origin: ClassVar[dict] = {"kind": "builtin"}
    #: why ``--compile`` compiles nothing of this method (None: it compiles :meth:`compile_modules`)
    compile_note: ClassVar[str | None] = None
    #: False for a method that meta-trains on no episode (e.g. the transfer baselines, whose training stage is
    #: classifier pretraining): the harness then hands ``train_step`` an empty meta-batch and counts no episode
    meta_trains: ClassVar[bool] = True
    #: a query's logits depend on the episode's other queries (e.g. BatchNorm with the query batch's statistics):
    #: recorded with every run (``transductive``); ``benchmark.check`` fails a method that is and does not say so
    transductive: ClassVar[bool] = False

    def __init__(self, hp: Hyper, ctx: Context):
        super().__init__()
        self.hp, self.ctx = hp, ctx

    # ---- to implement
    @classmethod
    def profile_hyper(cls, profile: str, setting: Setting) -> Hyper:
        """The hyperparameters of ``profile`` (a name of :data:`benchmark.kit.profiles.PROFILES`, already checked)
        for ``setting``."""
        raise NotImplementedError

    def train_step(self, episodes: list[Episode], step: int) -> dict[str, float]:
        raise NotImplementedError

    def predict(self, episode: Episode) -> torch.Tensor:
        raise NotImplementedError

    # ---- provided
    @classmethod
    def hyper(cls, profile: str, setting: Setting) -> Hyper:
        """Hyperparameters for a profile and a setting (an unknown profile name is refused by
        :func:`benchmark.kit.profiles.check_profile`)."""
        check_profile(profile)
        return cls.profile_hyper(profile, setting)

    @classmethod
    def tasks_per_step(cls, hp: Hyper) -> int:
        """Training episodes (tasks) one ``train_step`` consumes under ``hp`` (methods that draw more override)."""
        return hp.meta_batch

    @classmethod
    def is_transductive(cls, hp: Hyper) -> bool:
        """Whether the method is transductive under ``hp`` (default: the class's ``transductive``; a method where it
        is a hyperparameter, e.g. Reptile's, overrides this)."""
        return bool(cls.transductive)

    @classmethod
    def paper_train_episodes(cls, setting: Setting) -> int:
        """Training episodes (tasks) of the ``paper`` profile for ``setting``: the denominator of a run's
        ``budget_fraction``, so a short run's gap to the paper reads as budget, not as a defect."""
        hp = cls.hyper("paper", setting)
        return hp.train_steps * cls.tasks_per_step(hp)

    def predict_many(self, episodes: list[Episode]) -> list[torch.Tensor]:
        """Query logits of several episodes; the same numbers as ``predict`` on each (the harness evaluates in
        groups of ``eval_group`` episodes; methods override this to compute a group in fewer, larger passes)."""
        return [self.predict(ep) for ep in episodes]

    eval_group: ClassVar[int] = 1  # episodes per predict_many call in evaluation

    @staticmethod
    def embed_episodes(encoder: nn.Module, episodes: list[Episode]) -> list[torch.Tensor]:
        """``encoder(cat(support, query))`` of each episode, computed in one pass over all their images. Only for an
        encoder whose output for an image does not depend on the rest of the batch (BatchNorm in eval mode)."""
        xs = [torch.cat([ep.support_x, ep.query_x]) for ep in episodes]
        return list(encoder(torch.cat(xs)).split([len(x) for x in xs]))

    def stateful(self) -> dict[str, Any]:
        """Objects besides the module's parameters whose state a checkpoint must keep (optimisers, schedulers).

        The default finds every ``torch.optim.Optimizer`` and LR scheduler stored as an attribute.
        """
        out = {}
        for k, v in vars(self).items():
            if isinstance(v, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)):
                out[k] = v
        return out

    def training_state(self) -> dict[str, Any]:
        return {"module": self.state_dict(), **{k: v.state_dict() for k, v in self.stateful().items()}}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["module"])
        for k, v in self.stateful().items():
            v.load_state_dict(state[k])

    def compile_modules(self) -> dict[str, nn.Module]:
        """The sub-modules ``--compile`` compiles in place (``nn.Module.compile``: ``torch.compile`` of the module's
        call, parameters and ``state_dict`` unchanged), by attribute name. The default: the ``encoder`` attribute when
        the method has one (the metric methods, MTL, the baselines). A method that calls its network functionally
        over adapted weights (``torch.func.functional_call``) or differentiates through its gradients returns none
        and says why in :attr:`compile_note`."""
        if self.compile_note is not None:
            return {}
        enc = getattr(self, "encoder", None)
        return {"encoder": enc} if isinstance(enc, nn.Module) else {}

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def adapted_parameters(self) -> int:
        """Parameters changed per task at test time (gradient-based methods override); 0 for metric methods."""
        return 0

    def require_test_ways(self, ways: int | None, what: str = "train_ways") -> None:
        """Refuse training episodes whose ways differ from the test setting's, for a method whose classifier head
        has one output per test class (MAML, Reptile, the Meta-LSTM's learner)."""
        if ways not in (None, self.ctx.setting.ways):
            raise ValueError(f"{self.name}'s head has one output per class: {what} must be the test setting's "
                             f"{self.ctx.setting.ways}, not {ways} (leave train_ways unset)")

    def check_test_ways(self, ways: int) -> None:
        """Raise ValueError (one line) when this trained model cannot be tested on ``ways``-way episodes (re-testing
        with ``benchmark.evaluate``); metric methods compare with the support set and take any number of ways."""
        trained = self.ctx.setting.ways
        if self.fixed_head and ways != trained:
            raise ValueError(f"{self.name} was trained {trained}-way and its classifier head has one output per "
                             f"class, so it cannot be tested {ways}-way without retraining (train it with --ways "
                             f"{ways})")

    def train_shape(self) -> tuple[int, int, int]:
        """(ways, shots, queries) of training episodes (:func:`benchmark.kit.context.train_episode_shape`)."""
        return train_episode_shape(self.hp, self.ctx.setting)

    @staticmethod
    def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
        return (logits.argmax(-1) == y).float().mean().item()

    @staticmethod
    def metric(value: torch.Tensor) -> float | torch.Tensor:
        """A training metric from a scalar tensor: its Python float on the CPU; on another device the detached
        float64 tensor there, the same number (a float32 value is exact in float64, and float64 sums of such values
        are Python's float sums), so that the step does not wait for the device: the trainer reads it at its next
        validation (:class:`benchmark.pipeline.training.Trainer`). Sum metrics as ``total = total + metric(x)``."""
        value = value.detach()
        return value.item() if value.device.type == "cpu" else value.double()

    @classmethod
    def accuracy_metric(cls, logits: torch.Tensor, y: torch.Tensor) -> float | torch.Tensor:
        """:meth:`accuracy` as a :meth:`metric` (a float on the CPU, a float64 tensor on another device)."""
        return cls.metric((logits.detach().argmax(-1) == y).float().mean())

    def backward_episodes(self, episodes: list[Episode],
                          forward: Callable[[Episode], tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """Accumulate into ``.grad`` the gradient of the mean over ``episodes`` of the loss of
        ``forward(episode) -> (loss, query scores)``, one backward pass per episode (so one episode's graph is alive
        at a time); returns the mean loss and query accuracy. The episodic training step of the metric methods,
        between their ``zero_grad`` and their optimiser step.

        On the CPU the metrics are Python floats; on another device float64 tensors there, holding the same numbers
        (the same float64 sums of the same float32 values), so that the step never waits for the device: the
        trainer reads them at its next validation (:class:`benchmark.pipeline.training.Trainer`)."""
        loss_sum, acc_sum = 0.0, 0.0
        for ep in episodes:
            loss, scores = forward(ep)
            loss = loss / len(episodes)
            loss.backward()
            loss_sum = loss_sum + self.metric(loss)
            acc_sum = acc_sum + self.accuracy_metric(scores, ep.query_y) / len(episodes)
        return {"loss": loss_sum, "acc": acc_sum}


class EmbeddingPredict(Method):
    """A method whose query scores are ``score(episode, z)``, a function of the per-image embeddings ``z`` that its
    encoder (the attribute named by ``encoder_attr``) gives the episode's ``cat(support, query)``.

    It gets ``predict`` (eval mode, no autograd, ``score(episode)``) and a ``predict_many`` that embeds a group of
    ``eval_group`` episodes in one encoder pass (:meth:`Method.embed_episodes`) and scores each: the same numbers as
    ``predict`` one at a time, as the encoder in eval mode maps each image independently of the batch.
    """

    encoder_attr: ClassVar[str] = "encoder"  # the attribute holding the per-image encoder
    eval_group: ClassVar[int] = 20  # test episodes embedded in one encoder pass (BatchNorm in eval mode)

    def score(self, episode: Episode, z: torch.Tensor | None = None) -> torch.Tensor:
        """Query scores ``[n_query, ways]`` (logits or log-probabilities); ``z``: the encoder's output for
        ``cat(support_x, query_x)`` when already computed (None: computed here)."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, episode: Episode) -> torch.Tensor:
        self.eval()
        return self.score(episode)

    @torch.no_grad()
    def predict_many(self, episodes: list[Episode]) -> list[torch.Tensor]:
        self.eval()
        zs = self.embed_episodes(getattr(self, self.encoder_attr), episodes)
        return [self.score(ep, z) for ep, z in zip(episodes, zs)]

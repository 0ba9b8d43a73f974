"""Backbones shared by every method: Conv-4 and ResNet-12.

Every method builds its feature extractor here, by name (:data:`BACKBONES`), so two methods on ``conv4`` run the
very same code. Two hooks let methods change the network without a second copy of it:

* **Convolution modulators** (MTL's scaling and shifting). Every convolution is a :class:`Conv`; setting its
  ``modulator`` to a module ``m`` makes it convolve with ``m(weight, bias)`` instead of ``(weight, bias)``. The
  modulator is a registered sub-module, so its parameters appear in ``named_parameters`` and work with
  ``torch.func.functional_call``. :func:`convs` lists them.
* **FiLM conditioning** (TADAM). ``forward(x, film=...)`` takes one ``(gamma, beta)`` pair (each ``[C]`` or
  ``[B, C]``) or ``None`` per *FiLM site*, applied as ``gamma * h + beta`` right after a BatchNorm, before the
  non-linearity. ``backbone.film_channels`` lists each site's channel count.

Both networks are plain ``nn.Module`` s with no hidden state besides BatchNorm buffers, so gradient-based methods
can run them functionally (``torch.func.functional_call(net, params, (x,))``). ``bn_running_stats=False`` makes
BatchNorm always normalise with the batch's statistics (MAML's convention) and keeps no buffers, which also makes the
network safe under ``torch.func.vmap``.

Activations and convolution weights use the channels-last memory layout (faster for these convolutions on CPU,
measured in docs/measurements.md); the numbers computed are the same.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbone_table import BACKBONES, BackboneConfig  # noqa: F401 - the table, re-exported

Film = Sequence[tuple[torch.Tensor, torch.Tensor] | None] | None


class Conv(nn.Conv2d):
    """``nn.Conv2d`` whose weight and bias pass through an optional ``modulator(weight, bias) -> (weight, bias)``."""

    modulator: nn.Module | None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.modulator = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if self.modulator is not None:
            w, b = self.modulator(w, b)
        return self._conv_forward(x, w, b)


def convs(net: nn.Module) -> Iterator[tuple[str, Conv]]:
    """Every hookable convolution of ``net`` with its qualified name."""
    return ((n, m) for n, m in net.named_modules() if isinstance(m, Conv))


def _film(h: torch.Tensor, fp: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    if fp is None:
        return h
    gamma, beta = fp
    shape = (-1, h.shape[1], 1, 1) if gamma.ndim == 2 else (1, -1, 1, 1)
    return gamma.view(shape) * h + beta.view(shape)


def channels_last(x: torch.Tensor, *, restride_single_channel: bool = False) -> torch.Tensor:
    """``x`` in channels-last layout (``contiguous(memory_format=torch.channels_last)``); ``x`` unchanged inside
    ``torch.func.vmap``, which cannot set a memory format (it raises RuntimeError, caught here).

    ``contiguous(channels_last)`` leaves a [N, 1, H, W] tensor with NCHW strides as it is (with one channel it already
    counts as channels-last), so the first convolution would choose the NCHW layout and every later layer would pay a
    layout conversion in the forward and the backward pass. ``restride_single_channel=True`` gives such a tensor true
    channels-last strides (a copy): same numbers, less time (the gradient-based methods' ``MAMLNet`` asks for it).
    """
    try:
        if restride_single_channel and x.dim() == 4 and x.shape[1] == 1 and x.stride(1) != 1:
            # inside vmap the physical tensor has rank 5, and empty_like raises "required rank 4 tensor to use
            # channels_last format"
            return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)
        return x.contiguous(memory_format=torch.channels_last)
    except RuntimeError:  # vmap: "NYI: querying is_contiguous inside of vmap for memory_format other than ..."
        return x


def _bn(ch: int, running: bool) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, track_running_stats=running)


class ConvBlock(nn.Module):
    """conv3x3 -> BatchNorm -> [FiLM] -> ReLU -> [max-pool 2]; ``stride=2`` gives MAML's strided variant."""

    def __init__(self, cin: int, cout: int, pool: bool, stride: int = 1, running: bool = True):
        super().__init__()
        self.conv = Conv(cin, cout, 3, stride=stride, padding=1)
        self.bn = _bn(cout, running)
        self.pool = pool

    def forward(self, x, film=None):
        h = F.relu(_film(self.bn(self.conv(x)), film))
        return F.max_pool2d(h, 2) if self.pool else h


class Conv4(nn.Module):
    """Four conv blocks of ``width`` filters (Vinyals et al. 2016; Snell et al. 2017; Finn et al. 2017).

    ``mode='maxpool'``: 3x3 conv (stride 1, padding 1) + BN + ReLU + 2x2 max-pool per block.
    ``mode='strided'``: 3x3 conv with stride 2 and no pooling (MAML's Omniglot network).
    ``pools``: which blocks pool (maxpool mode); Relation Network's own embedding pools only the first two.
    ``keep_spatial``: return the feature map ``[B, C, h, w]`` and skip the last block's pooling (maxpool mode),
    for methods that compare feature maps (Relation Network); otherwise features are flattened.
    """

    def __init__(self, in_channels: int = 1, width: int = 64, mode: str = "maxpool",
                 pools: Sequence[bool] = (True, True, True, True), keep_spatial: bool = False,
                 bn_running_stats: bool = True):
        super().__init__()
        if mode not in ("maxpool", "strided"):
            raise ValueError(f"Conv4 mode must be 'maxpool' or 'strided', not {mode!r}")
        pools = list(pools) if mode == "maxpool" else [False] * 4
        if keep_spatial and mode == "maxpool":
            pools[3] = False
        stride = 2 if mode == "strided" else 1
        chans = [in_channels] + [width] * 4
        self.blocks = nn.ModuleList(ConvBlock(chans[i], chans[i + 1], pools[i], stride, bn_running_stats)
                                    for i in range(4))
        self.keep_spatial = keep_spatial
        self.film_channels = [width] * 4

    def forward(self, x: torch.Tensor, film: Film = None) -> torch.Tensor:
        x = channels_last(x)
        for i, b in enumerate(self.blocks):
            x = b(x, None if film is None else film[i])
        return x if self.keep_spatial else x.flatten(1)


class ResBlock(nn.Module):
    """ResNet-12 block: three 3x3 conv + BN (+ FiLM) layers, LeakyReLU(0.1), a 1x1 conv + BN shortcut, max-pool 2."""

    def __init__(self, cin: int, cout: int, running: bool = True):
        super().__init__()
        self.c1, self.b1 = Conv(cin, cout, 3, padding=1, bias=False), _bn(cout, running)
        self.c2, self.b2 = Conv(cout, cout, 3, padding=1, bias=False), _bn(cout, running)
        self.c3, self.b3 = Conv(cout, cout, 3, padding=1, bias=False), _bn(cout, running)
        self.cs, self.bs = Conv(cin, cout, 1, bias=False), _bn(cout, running)

    def forward(self, x, film=None):
        f = film if film is not None else (None, None, None)
        h = F.leaky_relu(_film(self.b1(self.c1(x)), f[0]), 0.1)
        h = F.leaky_relu(_film(self.b2(self.c2(h)), f[1]), 0.1)
        h = _film(self.b3(self.c3(h)), f[2])
        return F.max_pool2d(F.leaky_relu(h + self.bs(self.cs(x)), 0.1), 2)


class ResNet12(nn.Module):
    """ResNet-12 (Oreshkin et al. 2018; Lee et al. 2019): four residual blocks of widths ``widths``.

    Features are globally average-pooled and flattened unless ``keep_spatial``. FiLM sites: three per block (after
    each of the three main-path BatchNorms), twelve in all. DropBlock regularisation is not included.
    """

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (64, 160, 320, 640), keep_spatial: bool = False,
                 bn_running_stats: bool = True):
        super().__init__()
        chans = [in_channels, *widths]
        self.blocks = nn.ModuleList(ResBlock(chans[i], chans[i + 1], bn_running_stats) for i in range(len(widths)))
        self.keep_spatial = keep_spatial
        self.film_channels = [w for w in widths for _ in range(3)]

    def forward(self, x: torch.Tensor, film: Film = None) -> torch.Tensor:
        x = channels_last(x)
        for i, b in enumerate(self.blocks):
            x = b(x, None if film is None else film[3 * i:3 * i + 3])
        return x if self.keep_spatial else x.mean(dim=(2, 3))


@contextmanager
def explicit_batchnorm(net: nn.Module, group: int | None = None):
    """Within the block, ``net``'s batch-statistics BatchNorm layers (``bn_running_stats=False``) compute their
    normalisation from elementary operations, optionally separately for each run of ``group`` consecutive batch
    elements.

    * ``group=None``: the same numbers as BatchNorm over the whole batch. ``torch.func.vmap`` gets second
      derivatives through ``F.batch_norm`` wrong (PyTorch 2.x: the double-backward of its batching rule; off by up to
      tens of percent in the weights before the norm), but differentiates these operations exactly (MAML).
    * ``group=g``: a batch of ``k * g`` images is normalised as ``k`` separate batches of ``g``, exactly as ``k``
      forward passes would, but in one pass over a plain (channels-last) batch: ~2.5x faster on CPU than ``vmap``
      over the groups (Reptile's non-transductive evaluation).
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None]

    def explicit(bn):
        def forward(x):
            if group is None:  # statistics over everything but the channels
                h, keep = x, (1,)
            else:  # [groups, group, C, H, W]: statistics per group
                h, keep = x.view(-1, group, *x.shape[1:]), (0, 2)
            dims = [d for d in range(h.dim()) if d not in keep]
            mean = h.mean(dims, keepdim=True)
            var = (h - mean).square().mean(dims, keepdim=True)  # biased, as F.batch_norm normalises
            y = ((h - mean) * torch.rsqrt(var + bn.eps)).reshape(x.shape)
            if bn.affine:
                shape = [1, -1] + [1] * (x.dim() - 2)
                y = y * bn.weight.view(shape) + bn.bias.view(shape)
            return y
        return forward

    for m in norms:
        m.forward = explicit(m)
    try:
        yield
    finally:
        for m in norms:
            del m.forward


def build_backbone(name: str, in_channels: int, *, keep_spatial: bool = False,
                   bn_running_stats: bool = True) -> nn.Module:
    """The named backbone (see :data:`BACKBONES`) for inputs of ``in_channels`` channels."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    c = BACKBONES[name]
    if c.kind == "conv4":
        net = Conv4(in_channels, c.width, c.mode, c.pools, keep_spatial, bn_running_stats)
    else:
        net = ResNet12(in_channels, c.widths, keep_spatial, bn_running_stats)
    return net.to(memory_format=torch.channels_last)


def feature_shape(net: nn.Module, image_shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of one image's features (without the batch dimension), found by a dry run in eval mode."""
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            p = next(net.parameters())
            out = net(torch.zeros(2, *image_shape, device=p.device, dtype=p.dtype))
    finally:
        net.train(was)
    return tuple(out.shape[1:])

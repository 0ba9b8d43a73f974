"""The backbone table: each shared backbone's name, architecture parameters and one-line description.

Torch-free, so that ``--help`` lists the backbones without importing PyTorch; :mod:`benchmark.kit.backbones` builds the
networks from it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneConfig:
    kind: str  # "conv4" | "resnet12"
    width: int = 64
    mode: str = "maxpool"
    pools: tuple[bool, ...] = (True, True, True, True)
    widths: tuple[int, ...] = (64, 160, 320, 640)
    doc: str = ""


BACKBONES: dict[str, BackboneConfig] = {
    "conv4": BackboneConfig("conv4", 64, doc="Conv-4, 64 filters, max-pooling (ProtoNet, Matching, TADAM on Conv-4)"),
    "conv4-32": BackboneConfig("conv4", 32, doc="Conv-4, 32 filters, max-pooling (MAML/Meta-LSTM on miniImageNet)"),
    "conv4-strided": BackboneConfig("conv4", 64, "strided", doc="Conv-4, 64 filters, stride 2 (MAML on Omniglot)"),
    "conv4-relation": BackboneConfig("conv4", 64, pools=(True, True, False, False),
                                     doc="Conv-4, 64 filters, pooling in blocks 1-2 only (Relation Network's own)"),
    "resnet12": BackboneConfig("resnet12", doc="ResNet-12, widths 64-160-320-640"),
    "resnet12-narrow": BackboneConfig("resnet12", widths=(32, 64, 128, 256),
                                      doc="ResNet-12, widths 32-64-128-256 (for CPU budgets)"),
}

"""The DAWNBench ResNet-9 (D. Page, myrtle.ai, 2018), the "ResNet9" of seed 003 (6.5M parameters).

``prep`` conv-BN-ReLU (64); ``layer1`` conv-BN-ReLU (128) and 2x2 max pool, plus a residual of
two conv-BN-ReLU (``res1``); ``layer2`` conv-BN-ReLU (256) and max pool; ``layer3`` conv-BN-ReLU
(512) and max pool, plus a residual ``res3``; a global max pool, and a bias-free linear head.
Page scales the logits by 0.125; here the pooled features are scaled (``scale``), which gives the
same logits with a bias-free head and keeps ``forward(x) == head(features(x))``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import ZooModel, check_input, variant


class ConvBN(nn.Sequential):
    """3x3 convolution (no bias), batchnorm, ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()


class Residual(nn.Module):
    """``x + f(x)`` for a stack ``f`` of :class:`ConvBN`."""

    def __init__(self, channels: int, n: int = 2):
        super().__init__()
        self.body = nn.Sequential(*[ConvBN(channels, channels) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The input plus the stack's output."""
        return x + self.body(x)


class ResNet9(ZooModel):
    """Page's ResNet-9.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)``; three max pools, so at least 8x8.
    num_classes : int
        Number of classes.
    widths : sequence of int
        Channels of ``prep``, ``layer1``, ``layer2``, ``layer3`` (64, 128, 256, 512).
    scale : float
        Factor on the pooled features (Page's 0.125 on the logits).
    head_bias : bool
        Whether the classifier has a bias (Page's has none).
    """

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                 widths: Sequence[int] = (64, 128, 256, 512), scale: float = 0.125, head_bias: bool = False):
        super().__init__()
        cin = check_input("ResNet9", input_shape, min_side=8)[0]
        w0, w1, w2, w3 = widths
        self.prep = ConvBN(cin, w0)
        self.layer1 = nn.Sequential(ConvBN(w0, w1), nn.MaxPool2d(2))
        self.res1 = Residual(w1)
        self.layer2 = nn.Sequential(ConvBN(w1, w2), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(ConvBN(w2, w3), nn.MaxPool2d(2))
        self.res3 = Residual(w3)
        self.scale = float(scale)
        self.head = nn.Linear(w3, num_classes, bias=head_bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``scale`` times the global max of the last residual stage."""
        out = self.res1(self.layer1(self.prep(x)))
        out = self.res3(self.layer3(self.layer2(out)))
        return out.amax((2, 3)) * self.scale


variant("resnet9", ResNet9, "The DAWNBench ResNet-9")

__all__ = ["ResNet9"]

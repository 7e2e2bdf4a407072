"""Wide residual networks of Zagoruyko & Komodakis (2016): ``wrn28_10`` (36.5M parameters) and ``wrn16_4``.

WRN-``d``-``k``: a 3x3 stem of 16 channels, three stages of ``n = (d - 4) / 6`` pre-activation
blocks (BN-ReLU-Conv3x3, optional dropout, BN-ReLU-Conv3x3) of widths ``16 k``, ``32 k``,
``64 k``, the later stages starting with stride 2; where a block changes the shape its
shortcut is a 1x1 convolution of the pre-activated input (as in the authors' code); then
BN-ReLU, a global average pool and the linear head. (Li et al.'s ``wrn56_*`` are post-activation
nets of another layout, in :mod:`landscape.models.resnet`.)
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ArchitectureError, check_scalar
from . import ZooModel, check_input, variant


class PreActBlock(nn.Module):
    """Pre-activation wide block; a 1x1 convolution shortcut of ``relu(bn1(x))`` where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``conv2(relu(bn2(conv1(relu(bn1 x))))) + shortcut``."""
        pre = torch.relu(self.bn1(x))
        out = self.conv2(self.dropout(torch.relu(self.bn2(self.conv1(pre)))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(ZooModel):
    """WRN-``depth``-``width``.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)``.
    num_classes : int
        Number of classes.
    depth : int
        ``6 n + 4``.
    width : int
        Widening factor ``k``.
    dropout : float
        Dropout between the two convolutions of a block (0.3 in some of the authors' runs; inactive in eval mode).
    head_bias : bool
        Whether the classifier has a bias.
    """

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, depth: int = 28,
                 width: int = 10, dropout: float = 0.0, head_bias: bool = True):
        super().__init__()
        cin = check_input("WideResNet", input_shape)[0]
        depth = check_scalar(depth, "depth", int, min=10)
        if (depth - 4) % 6:
            raise ArchitectureError(f"WideResNet depth must be 6 n + 4 (10, 16, 22, 28, 40, ...), got {depth}.")
        dropout = check_scalar(dropout, "dropout", float, min=0, max=1, include_max=False)
        n = (depth - 4) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(cin, 16, 3, padding=1, bias=False)
        prev = 16
        for i, w in enumerate(widths, start=1):
            blocks = [PreActBlock(prev if j == 0 else w, w, 2 if (i > 1 and j == 0) else 1, dropout) for j in range(n)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            prev = w
        self.bn = nn.BatchNorm2d(prev)
        self.head = nn.Linear(prev, num_classes, bias=head_bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global average of ``relu(bn(last stage))``."""
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return torch.relu(self.bn(out)).mean((2, 3))


variant("wrn28_10", WideResNet, "Zagoruyko & Komodakis' WRN-28-10", depth=28, width=10)
variant("wrn16_4", WideResNet, "Zagoruyko & Komodakis' WRN-16-4", depth=16, width=4)

__all__ = ["WideResNet", "PreActBlock"]

"""DenseNet-BC (Huang et al. 2017) at CIFAR scale, in Li et al.'s layout (``cifar10/models/densenet.py``).

A 3x3 stem of ``2 k`` channels, dense blocks ``dense1`` ... ``denseN`` of bottleneck layers
(BN-ReLU-Conv1x1 to ``4 k``, BN-ReLU-Conv3x3 to ``k``, the new ``k`` channels concatenated in
front of the input, as Li et al. do), transitions ``trans1`` ... (BN-ReLU-Conv1x1 compressing by
``reduction``, 2x2 average pool), a final batchnorm ``bn`` and ReLU, and a global average pool.
Li et al.'s classifier ``linear`` is our ``head`` (:attr:`DenseNet.foreign_keys`).

* ``densenet121``: Li et al.'s CIFAR DenseNet-121, blocks (6, 12, 24, 16), growth rate 32;
* ``densenet_bc100``: Huang et al.'s DenseNet-BC-100 for CIFAR, three blocks of 16 layers,
  growth rate 12, compression 0.5 (0.8M parameters).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from . import ZooModel, check_input, variant


class DenseLayer(nn.Module):
    """Bottleneck layer: BN-ReLU-Conv1x1(4k), BN-ReLU-Conv3x3(k); output ``[new k channels, input]``."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The input with ``growth`` new channels in front."""
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(torch.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    """BN-ReLU-Conv1x1 then 2x2 average pooling."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compressed and halved map."""
        return torch.nn.functional.avg_pool2d(self.conv(torch.relu(self.bn(x))), 2)


class DenseNet(ZooModel):
    """DenseNet-BC with ``len(blocks)`` dense blocks.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)``; each transition halves the map, so inputs need ``2 ** (len(blocks) - 1)``
        pixels per side at least.
    num_classes : int
        Number of classes.
    blocks : sequence of int
        Bottleneck layers per dense block.
    growth : int
        Growth rate ``k``.
    reduction : float
        Compression of the transitions (``floor(channels * reduction)`` out).
    head_bias : bool
        Whether the classifier has a bias.
    """

    foreign_keys = {"linear.": "head."}

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                 blocks: Sequence[int] = (16, 16, 16), growth: int = 12, reduction: float = 0.5,
                 head_bias: bool = True):
        super().__init__()
        cin = check_input("DenseNet", input_shape, min_side=2 ** (len(blocks) - 1))[0]
        planes = 2 * growth
        self.conv1 = nn.Conv2d(cin, planes, 3, padding=1, bias=False)
        self.n_blocks = len(blocks)
        for i, n in enumerate(blocks, start=1):
            self.add_module(f"dense{i}", nn.Sequential(*[DenseLayer(planes + j * growth, growth) for j in range(n)]))
            planes += n * growth
            if i < len(blocks):
                out = int(math.floor(planes * reduction))
                self.add_module(f"trans{i}", Transition(planes, out))
                planes = out
        self.bn = nn.BatchNorm2d(planes)
        self.head = nn.Linear(planes, num_classes, bias=head_bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global average of ``relu(bn(last dense block))``."""
        out = self.conv1(x)
        for i in range(1, self.n_blocks + 1):
            out = getattr(self, f"dense{i}")(out)
            if i < self.n_blocks:
                out = getattr(self, f"trans{i}")(out)
        return torch.relu(self.bn(out)).mean((2, 3))


variant("densenet121", DenseNet, "Li et al.'s CIFAR DenseNet-121", blocks=(6, 12, 24, 16), growth=32)
variant("densenet_bc100", DenseNet, "Huang et al.'s DenseNet-BC-100 (k=12) for CIFAR", blocks=(16, 16, 16),
        growth=12)

__all__ = ["DenseNet", "DenseLayer", "Transition"]

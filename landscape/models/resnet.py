"""Residual networks at CIFAR scale: He et al.'s CIFAR ResNets, ResNet-18/34/50 and Li et al.'s wide ResNets.

The layout and the parameter names are those of Li et al.'s ``cifar10/models/resnet.py``
(github.com/tomgoldstein/loss-landscape), so their ``.t7`` files load as they are: a stem
``conv1``/``bn1``, stages ``layer1`` ... ``layerK`` of blocks with ``conv1``, ``bn1``, ``conv2``,
``bn2`` (``conv3``, ``bn3`` in bottlenecks) and ``shortcut``; only their classifier ``linear``
is our ``head`` (:attr:`CifarResNet.foreign_keys`). Their fixed final ``avg_pool2d`` (8 for the
CIFAR nets, 4 for ResNet-18/34/50) is a global average pool here, which is the same on 32x32
inputs and lets any input size through.

Shortcuts (``shortcut=``):

* ``"projection"`` (default, Li et al.'s code; He et al.'s option B): identity where the shape
  stays, a 1x1 convolution with batchnorm where it changes;
* ``"padding"`` (He et al.'s option A, the one behind the published 0.27M / 0.85M / 1.7M
  parameters of ResNet-20/56/110): identity, subsampled by the stride, with zero channels added
  on both sides (as in the widely used CIFAR ResNet code of Y. Idelbayev, whose files share these
  parameter names);
* ``"none"``: no shortcut (Li et al.'s ``*_noshort`` nets, whose blocks have no ``shortcut``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import check_choice
from . import ZooModel, check_input, variant

SHORTCUTS = ("projection", "padding", "none")


def _shortcut_kind(shortcut: bool | str) -> str:
    """``True``/``False`` (the digits nets' flag) or one of :data:`SHORTCUTS`."""
    if isinstance(shortcut, bool):
        return "projection" if shortcut else "none"
    return check_choice(shortcut, "shortcut", SHORTCUTS)


class PadShortcut(nn.Module):
    """He et al.'s option A: ``x`` subsampled by ``stride``, with zero channels padded on both sides."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.front, self.back = stride, (cout - cin) // 2, cout - cin - (cout - cin) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The padded, subsampled identity."""
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.front, self.back)) if self.front or self.back else x


def _make_shortcut(kind: str, cin: int, cout: int, stride: int) -> nn.Module | None:
    if kind == "none":
        return None
    if stride == 1 and cin == cout:
        return nn.Identity()
    if kind == "padding":
        return PadShortcut(cin, cout, stride)
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 conv-batchnorm layers, ReLU after each, the shortcut added before the second ReLU.

    Parameters
    ----------
    cin, cout : int
        Input and output channels.
    stride : int
        Stride of the first convolution.
    shortcut : bool or {"projection", "padding", "none"}
        See the module docstring; ``True`` is ``"projection"``, ``False`` is ``"none"``.
    """

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut: bool | str = "projection"):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _make_shortcut(_shortcut_kind(shortcut), cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))``."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return torch.relu(out)


class Bottleneck(nn.Module):
    """1x1 (reduce), 3x3 (stride), 1x1 (expand by 4) conv-batchnorm layers; the shortcut as in :class:`BasicBlock`."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, shortcut: bool | str = "projection"):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = _make_shortcut(_shortcut_kind(shortcut), cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck's output plus the shortcut, then ReLU."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return torch.relu(out)


class CifarResNet(ZooModel):
    """A 3x3 stem and stages of residual blocks, the first block of each later stage with stride 2.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)`` of one input; any channel count and size.
    num_classes : int
        Number of classes.
    blocks : sequence of int
        Blocks per stage (``(n, n, n)`` with ``n = (depth - 2) / 6`` for He et al.'s CIFAR nets).
    widths : sequence of int
        Planes per stage; the stem has ``widths[0]`` channels (16 for ResNet-20, 64 for
        ResNet-18, ``16 k`` for Li et al.'s WRN-56-k).
    bottleneck : bool
        Bottleneck blocks (ResNet-50) instead of basic blocks.
    shortcut : {"projection", "padding", "none"}
        See the module docstring.
    head_bias : bool
        Whether the classifier has a bias (margin losses use only its weights).
    """

    foreign_keys = {"linear.": "head."}  # Li et al.'s classifier is `linear`

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                 blocks: Sequence[int] = (3, 3, 3), widths: Sequence[int] = (16, 32, 64), bottleneck: bool = False,
                 shortcut: str = "projection", head_bias: bool = True):
        super().__init__()
        cin = check_input(type(self).__name__, input_shape)[0]
        block = Bottleneck if bottleneck else BasicBlock
        self.conv1 = nn.Conv2d(cin, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        prev = widths[0]
        self.n_stages = len(widths)
        for i, (planes, n) in enumerate(zip(widths, blocks)):
            layers = []
            for j in range(n):
                layers.append(block(prev, planes, 2 if (i > 0 and j == 0) else 1, shortcut))
                prev = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.head = nn.Linear(prev, num_classes, bias=head_bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global average of the last stage's output."""
        out = torch.relu(self.bn1(self.conv1(x)))
        for i in range(self.n_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        return out.mean((2, 3))


def _cifar_depth(depth: int) -> tuple[int, int, int]:
    return ((depth - 2) // 6,) * 3


HE = "He et al.'s CIFAR ResNet-{d}"
for _d in (20, 32, 44, 56, 110):
    variant(f"resnet{_d}", CifarResNet, HE.format(d=_d), blocks=_cifar_depth(_d))
    variant(f"resnet{_d}_noshort", CifarResNet, HE.format(d=_d) + " without shortcuts (Li et al.)",
            blocks=_cifar_depth(_d), shortcut="none")

IMAGENET_WIDTHS = (64, 128, 256, 512)
variant("resnet18", CifarResNet, "ResNet-18 with a CIFAR stem", blocks=(2, 2, 2, 2), widths=IMAGENET_WIDTHS)
variant("resnet34", CifarResNet, "ResNet-34 with a CIFAR stem", blocks=(3, 4, 6, 3), widths=IMAGENET_WIDTHS)
variant("resnet50", CifarResNet, "ResNet-50 (bottlenecks) with a CIFAR stem", blocks=(3, 4, 6, 3),
        widths=IMAGENET_WIDTHS, bottleneck=True)
for _k in (2, 4):
    variant(f"wrn56_{_k}", CifarResNet, f"Li et al.'s wide ResNet-56 of width factor {_k} (post-activation blocks)",
            blocks=_cifar_depth(56), widths=(16 * _k, 32 * _k, 64 * _k))

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet", "PadShortcut", "SHORTCUTS"]

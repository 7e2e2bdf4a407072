"""The digits toys: small nets for 8x8 inputs (seed 000's MLP, a CNN for Grad-CAM, a tiny ResNet and its plain twin)."""
from __future__ import annotations

import math

from torch import nn

from . import ZooModel, register
from .resnet import BasicBlock


@register("mlp")
class MLP(ZooModel):
    """Fully connected net of seed 000: blocks of affine, batchnorm, ReLU and dropout.

    Parameters
    ----------
    input_shape : tuple of int
        Shape of one input; it is flattened.
    num_classes : int
        Number of classes.
    hidden : sequence of int
        Widths of the hidden blocks; the last one is the feature dimension.
    dropout : float
        Dropout probability after each block (inactive in eval mode).
    head_bias : bool
        Whether the classifier has a bias (margin losses use only its weights).
    """

    def __init__(self, input_shape=(1, 8, 8), num_classes=10, hidden=(128, 64), dropout=0.1, head_bias=True):
        super().__init__()
        width = math.prod(input_shape)
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes, bias=head_bias)

    def features(self, x):
        """Output of the last hidden block."""
        return self.body(x)


def conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    """A 3x3 convolution without bias, batchnorm and ReLU."""
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


@register("cnn")
class CNN(ZooModel):
    """Small convolutional net with batchnorm (for Grad-CAM): three conv blocks, global pooling.

    The last convolution (``body.conv3``) keeps a spatial map for Grad-CAM.
    """

    def __init__(self, input_shape=(1, 8, 8), num_classes=10, channels=(16, 32, 32), head_bias=True):
        super().__init__()
        c1, c2, c3 = channels
        cin = input_shape[0]
        self.body = nn.Sequential()
        for i, (a, b) in enumerate([(cin, c1), (c1, c2)], start=1):
            conv, bn, act = conv_bn(a, b)
            self.body.add_module(f"conv{i}", conv)
            self.body.add_module(f"bn{i}", bn)
            self.body.add_module(f"relu{i}", act)
        self.body.add_module("pool", nn.MaxPool2d(2) if min(input_shape[1:]) >= 8 else nn.Identity())
        conv, bn, act = conv_bn(c2, c3)
        self.body.add_module("conv3", conv)
        self.body.add_module("bn3", bn)
        self.body.add_module("relu3", act)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c3, num_classes, bias=head_bias)

    def features(self, x):
        """Globally average-pooled output of the conv body, flattened."""
        return self.pool(self.body(x)).flatten(1)


class _ResNetLike(ZooModel):
    def __init__(self, input_shape, num_classes, widths, blocks, shortcut, head_bias):
        super().__init__()
        cin = input_shape[0]
        self.stem = nn.Sequential(*conv_bn(cin, widths[0]))
        stages = []
        prev = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(BasicBlock(prev, w, stride, shortcut))
                prev = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(prev, num_classes, bias=head_bias)

    def features(self, x):
        return self.pool(self.stages(self.stem(x))).flatten(1)


@register("resnet")
class ResNet(_ResNetLike):
    """Tiny residual net: a stem and stages of basic blocks with identity/projection shortcuts."""

    def __init__(self, input_shape=(1, 8, 8), num_classes=10, widths=(16, 32), blocks=(2, 2), head_bias=True):
        super().__init__(input_shape, num_classes, widths, blocks, True, head_bias)


@register("plain")
class Plain(_ResNetLike):
    """The ``resnet`` without shortcuts (Li et al.'s comparison of shortcut vs. no shortcut)."""

    def __init__(self, input_shape=(1, 8, 8), num_classes=10, widths=(16, 32), blocks=(2, 2), head_bias=True):
        super().__init__(input_shape, num_classes, widths, blocks, False, head_bias)

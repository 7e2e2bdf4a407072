"""VGG nets with batchnorm and a CIFAR head, in Li et al.'s layout (``cifar10/models/vgg.py``).

Stages of 3x3 convolution (with bias), batchnorm and ReLU, separated by 2x2 max pools in ceil
mode (so 28x28 or 48x48 inputs shrink without dropping a border); then one hidden block
``fc`` = Linear(maps x h x w -> maps), BatchNorm1d, ReLU, whose output is the penultimate
feature, and the linear ``head``. Li et al. call the convolutional part ``features`` (here a
method, so the layers are ``body``) and the classifier ``classifier``
(:attr:`VGG.foreign_keys`); ``fc`` keeps its name. ``vgg9``, ``vgg16`` and ``vgg19`` are their
configurations; ``vgg11`` is Simonyan & Zisserman's configuration A in the same layout.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ArchitectureError
from . import ZooModel, check_input, spatial_after, variant

M = "M"  # a 2x2 max pool
CONFIGS: dict[str, list] = {
    "vgg9": [64, 64, M, 128, 128, M, 256, 256, 256, M],
    "vgg11": [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
    "vgg16": [64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M],
    "vgg19": [64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M],
}


class VGG(ZooModel):
    """Conv-batchnorm-ReLU stages with max pools, a hidden ``fc`` block and a linear head.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)`` of one input.
    num_classes : int
        Number of classes.
    config : sequence of int or "M"
        Output channels of each convolution, ``"M"`` for a max pool (see :data:`CONFIGS`).
    head_bias : bool
        Whether the classifier has a bias.
    """

    foreign_keys = {"features.": "body.", "classifier.": "head."}

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                 config: Sequence[int | str] = tuple(CONFIGS["vgg16"]), head_bias: bool = True):
        super().__init__()
        cin, h, w = check_input("VGG", input_shape)
        convs = [c for c in config if c != M]
        if not convs:
            raise ArchitectureError("VGG config needs at least one convolution, e.g. [64, 'M', 128, 'M'].")
        layers: list[nn.Module] = []
        for c in config:
            if c == M:
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(cin, int(c), 3, padding=1), nn.BatchNorm2d(int(c)), nn.ReLU()]
                cin = int(c)
        self.body = nn.Sequential(*layers)
        pools = sum(1 for c in config if c == M)
        side = spatial_after(h, pools, ceil=True) * spatial_after(w, pools, ceil=True)
        self.fc = nn.Sequential(nn.Linear(cin * side, cin), nn.BatchNorm1d(cin), nn.ReLU())
        self.head = nn.Linear(cin, num_classes, bias=head_bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the hidden ``fc`` block."""
        return self.fc(self.body(x).flatten(1))


for _name, _cfg in CONFIGS.items():
    variant(_name, VGG, f"{_name.upper()} with batchnorm and a CIFAR head", config=tuple(_cfg))

__all__ = ["VGG", "CONFIGS"]

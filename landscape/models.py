"""Architecture registry and the model zoo.

Every zoo model maps an input batch ``(N, C, H, W)`` to logits and exposes

* ``features(x)``: the penultimate embedding ``(N, d)``;
* ``head``: the final ``nn.Linear(d, num_classes)``, so margin losses see features and
  classifier weights (``forward(x) == head(features(x))``).

A user's own architecture plugs in with :func:`register`, or as a ``"module:Class"`` path that
is imported only when the user opts in (see :func:`resolve`): a checkpoint's meta is data and
never decides which code runs.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import os
import sys
from typing import Callable, Sequence

import torch
from torch import nn

from .errors import ArchitectureError, did_you_mean

_ARCHS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str, builder: Callable[..., nn.Module] | None = None):
    """Register an architecture under ``name``; usable as a decorator.

    The builder is called as ``builder(input_shape=..., num_classes=..., **arch_kwargs)``.
    """
    def deco(fn):
        _ARCHS[name] = fn
        return fn

    return deco(builder) if builder is not None else deco


def names() -> list[str]:
    """Names of the registered architectures."""
    return sorted(_ARCHS)


def is_code_path(name: str) -> bool:
    """Whether an architecture name is a ``"module:Class"`` path (code to import) rather than a registered name."""
    return isinstance(name, str) and ":" in name and name not in _ARCHS


@contextlib.contextmanager
def _without_current_directory():
    """Import with the current directory off ``sys.path``.

    ``python -m`` and an interactive interpreter put the current directory first on the path, so
    a file ``evilmod.py`` lying next to the user would be imported by ``"evilmod:X"``. Only
    installed packages and folders the user put on ``PYTHONPATH`` count.
    """
    keep = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    cwd = os.path.abspath(os.getcwd())
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if os.path.abspath(p or ".") != cwd or os.path.abspath(p or ".") in keep]
    try:
        yield
    finally:
        sys.path[:] = saved


def _import_class(name: str) -> type[nn.Module]:
    """The ``nn.Module`` subclass named by ``"module:Class"``; anything else is refused before it is called."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr or not all(part.isidentifier() for part in module_name.split(".") + attr.split(".")):
        raise ArchitectureError(f"architecture {name!r} is not a 'package.module:Class' path.")
    try:
        with _without_current_directory():
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ArchitectureError(f"architecture {name!r}: cannot import module {module_name!r} ({exc}); install it or "
                                "put its folder on PYTHONPATH (the current directory is never searched).") from exc
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if obj is None:
        raise ArchitectureError(f"architecture {name!r}: module {module_name!r} has no attribute {attr!r}.")
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
        raise ArchitectureError(f"architecture {name!r} is a {type(obj).__name__}, not an nn.Module subclass; a "
                                "'module:Class' path must name a model class (register a builder function with "
                                "landscape.models.register instead).")
    return obj


def resolve(name: str, trust_code: bool = False) -> Callable[..., nn.Module]:
    """The builder of architecture ``name``: a registered name, or with ``trust_code`` a ``"module:Class"`` path.

    Parameters
    ----------
    name : str
        A registered architecture (see :func:`names`) or ``"package.module:Class"``.
    trust_code : bool
        Allow a ``"module:Class"`` path. Importing a module runs its code, so a path is followed
        only when the user asks for it (``arch=`` or ``trust_code=True`` in the API,
        ``--arch``/``--trust-code`` on the CLI), never because a file's meta says so; even then
        it must name an ``nn.Module`` subclass.

    Raises
    ------
    ArchitectureError
        Unknown name, an untrusted code path, or a path that is not a model class.
    """
    if not isinstance(name, str) or not name:
        raise ArchitectureError(f"architecture must be a name such as 'mlp', got {name!r}.")
    if name in _ARCHS:
        return _ARCHS[name]
    if ":" in name:
        if not trust_code:
            raise ArchitectureError(
                f"architecture {name!r} is a code path, and importing it would run code; a checkpoint's meta may "
                f"name only registered architectures ({', '.join(names())}). If you trust this file, opt in with "
                "trust_code=True (API) or --trust-code (CLI), or name the class yourself with arch=/--arch.")
        return _import_class(name)
    raise ArchitectureError(f"unknown architecture {name!r}; register it with landscape.models.register or "
                            f"give a 'module:Class' path.{did_you_mean(name, _ARCHS)}")


def build(name: str, input_shape: Sequence[int] | None = None, num_classes: int | None = None, *,
          trust_code: bool = False, **kwargs) -> nn.Module:
    """Build architecture ``name`` (a registered name, or with ``trust_code`` a ``"module:Class"`` path).

    ``input_shape`` and ``num_classes`` are passed only to builders that accept them.
    """
    builder = resolve(name, trust_code=trust_code)
    try:
        params = inspect.signature(builder).parameters
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        params, accepts_any = {}, True
    extra = {}
    if input_shape is not None and ("input_shape" in params or accepts_any):
        extra["input_shape"] = tuple(input_shape)
    if num_classes is not None and ("num_classes" in params or accepts_any):
        extra["num_classes"] = int(num_classes)
    try:
        model = builder(**extra, **kwargs)
    except TypeError as exc:
        raise ArchitectureError(f"architecture {name!r} rejected its arguments {kwargs}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ArchitectureError(f"architecture {name!r} returned a {type(model).__name__}, not an nn.Module.")
    return model


# -- the zoo -------------------------------------------------------------------------------
class ZooModel(nn.Module):
    """Common shape of zoo models: ``body`` -> features -> linear ``head``."""

    head: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        """Penultimate features ``(N, d)`` of ``x`` (implemented by subclasses)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, C)``: the head applied to the features."""
        return self.head(self.features(x))


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


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
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
            conv, bn, act = _conv_bn(a, b)
            self.body.add_module(f"conv{i}", conv)
            self.body.add_module(f"bn{i}", bn)
            self.body.add_module(f"relu{i}", act)
        self.body.add_module("pool", nn.MaxPool2d(2) if min(input_shape[1:]) >= 8 else nn.Identity())
        conv, bn, act = _conv_bn(c2, c3)
        self.body.add_module("conv3", conv)
        self.body.add_module("bn3", bn)
        self.body.add_module("relu3", act)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c3, num_classes, bias=head_bias)

    def features(self, x):
        """Globally average-pooled output of the conv body, flattened."""
        return self.pool(self.body(x)).flatten(1)


class Block(nn.Module):
    """Basic residual block (two 3x3 convs); ``shortcut=False`` gives the plain block."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module | None = None
        if shortcut:
            self.shortcut = nn.Identity()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        """ReLU of the two conv-batchnorm layers' output plus the shortcut (if any)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return torch.relu(out)


class _ResNetLike(ZooModel):
    def __init__(self, input_shape, num_classes, widths, blocks, shortcut, head_bias):
        super().__init__()
        cin = input_shape[0]
        self.stem = nn.Sequential(*_conv_bn(cin, widths[0]))
        stages = []
        prev = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(Block(prev, w, stride, shortcut))
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


def split_head(model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Linear] | None:
    """Return ``(features, head)`` when the model exposes both, else ``None``."""
    head = getattr(model, "head", None)
    feats = getattr(model, "features", None)
    if isinstance(head, nn.Linear) and callable(feats):
        return feats, head
    return None

"""Architecture registry and the model zoo.

Every zoo model maps an input batch ``(N, C, H, W)`` to logits and exposes

* ``features(x)``: the penultimate embedding ``(N, d)``;
* ``head``: the final ``nn.Linear(d, num_classes)``, so margin losses see features and
  classifier weights (``forward(x) == head(features(x))``).

Every zoo builder takes ``input_shape`` (any channel count and image size: 28x28x1 MNIST,
48x48x1 FER-2013, 32x32x3 CIFAR) and ``num_classes`` from the checkpoint meta. The families
live in one module each:

==========================  ============================================================
module                      architectures
==========================  ============================================================
``models.digits``           ``mlp``, ``cnn``, ``resnet``, ``plain`` (the digits toys)
``models.resnet``           ``resnet20`` ... ``resnet110`` (+ ``_noshort``), ``resnet18/34/50``,
                            ``wrn56_2``, ``wrn56_4`` (Li et al.'s layout and parameter names)
``models.vgg``              ``vgg9``, ``vgg11``, ``vgg16``, ``vgg19`` (Li et al.'s layout)
``models.densenet``         ``densenet121`` (Li et al.), ``densenet_bc100`` (Huang et al.)
``models.wrn``              ``wrn28_10``, ``wrn16_4`` (Zagoruyko & Komodakis)
``models.resnet9``          ``resnet9`` (the DAWNBench ResNet-9 of seed 003)
``models.vit``              ``vit_tiny`` (patch 4)
==========================  ============================================================

A zoo class may declare ``foreign_keys``, a documented map from the parameter-name prefixes of
the code its layout comes from to its own (e.g. Li et al.'s ``linear.`` is our ``head.``);
:func:`landscape.load_checkpoint` applies it to files saved by that code.

A user's own architecture plugs in with :func:`register`, or as a ``"module:Class"`` path that
is imported only when the user opts in (see :func:`resolve`): a checkpoint's meta is data and
never decides which code runs.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import ArchitectureError, did_you_mean

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


def split_head(model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Linear] | None:
    """Return ``(features, head)`` when the model exposes both, else ``None``."""
    head = getattr(model, "head", None)
    feats = getattr(model, "features", None)
    if isinstance(head, nn.Linear) and callable(feats):
        return feats, head
    return None


class ZooModel(nn.Module):
    """Common shape of zoo models: ``features(x)`` -> linear ``head``.

    ``foreign_keys`` maps parameter-name prefixes of the code a layout was taken from to this
    class's own names; it is applied on load to files that use the foreign names.
    """

    head: nn.Linear
    foreign_keys: dict[str, str] = {}

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        """Penultimate features ``(N, d)`` of ``x`` (implemented by subclasses)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, C)``: the head applied to the features."""
        return self.head(self.features(x))


def variant(name: str, cls: type[nn.Module], summary: str, **defaults) -> Callable[..., nn.Module]:
    """Register ``name`` as ``cls`` with fixed ``defaults`` (a depth, widths); arch_kwargs override them."""
    def builder(input_shape=(3, 32, 32), num_classes=10, **kwargs):
        return cls(input_shape=tuple(input_shape), num_classes=int(num_classes), **{**defaults, **kwargs})

    builder.__name__ = builder.__qualname__ = name
    fixed = ", ".join(f"{k}={v!r}" for k, v in defaults.items())
    builder.__doc__ = f"{summary}: ``{cls.__name__}``{f' with {fixed}' if fixed else ''}; arch_kwargs override these."
    return register(name, builder)


def foreign_keys(model: nn.Module) -> dict[str, str]:
    """The prefix map from a layout's original parameter names to the model's own (empty when none)."""
    keys = getattr(model, "foreign_keys", None)
    return dict(keys) if isinstance(keys, dict) else {}


def spatial_after(size: int, halvings: int, ceil: bool = False) -> int:
    """Side of a map after ``halvings`` stride-2 steps (floor as a strided conv, or ceil-mode pooling)."""
    for _ in range(halvings):
        size = -(-size // 2) if ceil else size // 2
    return size


def check_input(name: str, input_shape: Sequence[int], min_side: int = 1) -> tuple[int, int, int]:
    """``(C, H, W)`` of an image input shape, refused with a clear message when it cannot work."""
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ArchitectureError(f"{name} takes images: input_shape must be (channels, height, width), got {shape}.")
    if min(shape[1:]) < min_side:
        raise ArchitectureError(f"{name} needs images of at least {min_side}x{min_side} pixels, got "
                                f"{shape[1]}x{shape[2]}; use a larger input or a smaller architecture.")
    return shape  # type: ignore[return-value]


# The families register themselves on import; they use the names defined above.
from . import densenet, digits, resnet, resnet9, vgg, vit, wrn  # noqa: E402,F401
from .digits import CNN, MLP, Plain, ResNet  # noqa: E402,F401
from .resnet import BasicBlock as Block  # noqa: E402,F401

"""Loss library (stub: the full library of seed losses lands with the loss issue).

Protocol shared by every loss: a ``Loss`` is an ``nn.Module`` called as
``loss(logits, target, features=None, weight=None)`` returning the batch-mean loss.
Losses with ``needs_features = True`` (margin losses) also get the penultimate
``features`` (N, d) and the classifier ``weight`` (C, d).
"""
from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from .errors import LossError, did_you_mean


class Loss(nn.Module):
    """Base class of every loss."""

    needs_features: ClassVar[bool] = False

    def forward(self, logits, target, features=None, weight=None):  # pragma: no cover - abstract
        raise NotImplementedError


_LOSSES: dict[str, Callable[..., Loss]] = {}


def register(name: str, factory: Callable[..., Loss] | None = None):
    """Register a loss factory under ``name`` (usable as a decorator)."""
    def deco(fn):
        _LOSSES[name] = fn
        return fn

    return deco(factory) if factory is not None else deco


def names() -> list[str]:
    """Names of the registered losses."""
    return sorted(_LOSSES)


def get(name: str, **params) -> Loss:
    """Build the loss ``name`` with ``params``."""
    if name not in _LOSSES:
        raise LossError(f"unknown loss {name!r}.{did_you_mean(name, _LOSSES)}")
    try:
        return _LOSSES[name](**params)
    except TypeError as exc:
        raise LossError(f"loss {name!r} rejected parameters {params}: {exc}") from exc


@register("ce")
class CrossEntropy(Loss):
    """Cross-entropy ``-log p_y`` via log-softmax."""

    def forward(self, logits, target, features=None, weight=None):
        return F.cross_entropy(logits, target)

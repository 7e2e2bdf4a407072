"""The training objective of a checkpoint, evaluated on a batch.

One place knows how to feed a model's outputs to a :class:`~landscape.losses.Loss`:
margin losses get the penultimate features and the classifier weights, every other loss
only the logits. Accuracy is always measured on the plain logits.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .errors import LossError
from .models import split_head


def outputs(model: nn.Module, x: torch.Tensor, with_features: bool = False):
    """Return ``(logits, features, head_weight)``; the last two are None unless asked for."""
    if not with_features:
        return model(x), None, None
    parts = split_head(model)
    if parts is None:
        raise LossError(f"this loss needs the model's penultimate features, but {type(model).__name__} has no "
                        "`features(x)` method and linear `head`; add them (see landscape.models) or use a "
                        "loss that needs only logits.")
    feats, head = parts
    f = feats(x)
    return head(f), f, head.weight


def loss_and_logits(model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """The criterion's batch loss and the logits, with gradients flowing as usual."""
    needs = bool(getattr(criterion, "needs_features", False))
    logits, f, w = outputs(model, x, needs)
    if needs:
        return criterion(logits, y, features=f, weight=w), logits
    return criterion(logits, y), logits


class Objective(nn.Module):
    """A model and its criterion as one module, so ``torch.func.functional_call`` can swap their weights.

    Every computation that evaluates a checkpoint at other weights (surfaces, Hessians, sharpness)
    calls this one module with a state whose keys are ``model.<name>`` and ``criterion.<name>``.

    Parameters
    ----------
    model, criterion : nn.Module
    metrics : bool
        ``forward`` returns ``(loss, correct)`` (number of correct top-1 predictions) instead of
        the loss alone.
    with_ce : bool
        With ``metrics``, also return plain cross-entropy: ``(loss, correct, ce)``.
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, *, metrics: bool = False, with_ce: bool = False):
        super().__init__()
        self.model, self.criterion = model, criterion
        self.metrics, self.with_ce = bool(metrics), bool(with_ce)

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        """The batch loss, or ``(loss, correct[, ce])`` with ``metrics``."""
        loss, logits = loss_and_logits(self.model, self.criterion, x, y)
        if not self.metrics:
            return loss
        correct = (logits.argmax(1) == y).sum()
        return (loss, correct, F.cross_entropy(logits, y)) if self.with_ce else (loss, correct)


def evaluate(model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int | None = None) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``(x, y)`` without gradients.

    With ``batch_size`` the batch losses are averaged weighted by batch size, which equals
    the full-batch loss for every loss that is a mean over samples (batch-adaptive margins
    such as MAM-SoftMax see each batch on its own, as in training).
    """
    n = len(y)
    bs = n if batch_size is None else int(batch_size)
    total, correct = 0.0, 0
    with torch.inference_mode():
        for i in range(0, n, bs):
            loss, logits = loss_and_logits(model, criterion, x[i:i + bs], y[i:i + bs])
            total += float(loss) * len(y[i:i + bs])
            correct += int((logits.argmax(1) == y[i:i + bs]).sum())
    return total / n, correct / n

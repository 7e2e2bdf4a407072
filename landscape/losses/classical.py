"""Classical losses on logits and probabilities: CE, hinge, focal, SCE (seed 002) and Adma (seed 001).

Formulas: ``shared reference losses.md``. Everything that takes a log uses log-softmax, so
no loss is NaN or infinite at probabilities 0 or 1.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch.nn import functional as F

from ..errors import check_choice, check_scalar
from .base import EPS, ElementwiseLoss, Loss, ProbabilityLoss, register


def _ln(x: torch.Tensor, eps: float) -> torch.Tensor:
    """The protected logarithm ``ln(|x| + eps)`` of the phenotype convention."""
    return torch.log(x.abs() + eps)


@register("ce", aliases=("cross-entropy", "crossentropy", "softmax", "nll"))
class CrossEntropy(ElementwiseLoss):
    """Cross-entropy ``-log p_y`` via log-softmax.

    Elementwise form (seed 003's CE): ``L(y, yh) = -y ln(|yh| + eps)``.

    Parameters
    ----------
    label_smoothing : float
        Mass ``s`` spread uniformly over the classes (target ``(1 - s) onehot + s / C``).
    eps : float
        The ``eps`` of the elementwise form (phenotypes).
    """

    def __init__(self, label_smoothing: float = 0.0, eps: float = EPS):
        super().__init__(label_smoothing)
        self.eps = float(eps)

    def forward(self, logits, target, features=None, weight=None):
        """Batch-mean cross-entropy with the configured label smoothing."""
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    def elementwise(self, y, yh):
        """``-y ln(|yh| + eps)`` elementwise."""
        return -y * _ln(yh, self.eps)


@register("hinge", aliases=("svm", "multiclass-hinge", "multi-margin", "weston-watkins"))
class Hinge(Loss):
    """Multiclass SVM loss ``sum_{j != y} max(0, z_j - z_y + delta)`` (seed 000).

    Parameters
    ----------
    delta : float
        The margin (default 1).
    """

    def __init__(self, delta: float = 1.0):
        super().__init__()
        self.delta = check_scalar(delta, "delta", float, min=0.0)

    def forward(self, logits, target, features=None, weight=None):
        """Batch-mean multiclass hinge loss (the ``j = y`` term excluded)."""
        z_y = logits.gather(1, target[:, None])
        slack = (logits - z_y + self.delta).clamp_min(0.0)
        # the j = y term is max(0, delta) = delta for every sample; remove it exactly
        return (slack.sum(1) - self.delta).mean()


@register("focal", aliases=("focal-loss",))
class Focal(ElementwiseLoss):
    """Focal loss ``-alpha (1 - p_y)^gamma log p_y`` (seed 002, eq. 4.2).

    Elementwise form: ``L(y, yh) = -alpha y (1 - yh)^gamma ln(|yh| + eps)``.

    Parameters
    ----------
    alpha : float
        Scale (default 1).
    gamma : float
        Focusing exponent (default 2; 0 gives ``alpha * CE``).
    label_smoothing, eps : float
        As for :class:`CrossEntropy`.
    """

    def __init__(self, alpha: float = 1.0, gamma: float = 2.0, label_smoothing: float = 0.0, eps: float = EPS):
        super().__init__(label_smoothing)
        if float(alpha) <= 0 or float(gamma) < 0:
            raise ValueError(f"need alpha > 0 and gamma >= 0, got alpha={alpha}, gamma={gamma}")
        self.alpha, self.gamma, self.eps = float(alpha), float(gamma), float(eps)

    def forward(self, logits, target, features=None, weight=None):
        """Batch-mean focal loss, computed from log-softmax."""
        logp = torch.log_softmax(logits, dim=-1)
        y = self.soft_target(target, logits.shape[-1], logits.dtype)
        # (1 - p)^gamma from log p stays finite where p underflows or rounds to 1
        one_minus_p = -torch.expm1(logp)
        return -(self.alpha * y * one_minus_p.clamp_min(0.0) ** self.gamma * logp).sum(-1).mean()

    def elementwise(self, y, yh):
        """``-alpha y (1 - yh)^gamma ln(|yh| + eps)`` elementwise."""
        return -self.alpha * y * (1.0 - yh).clamp_min(0.0) ** self.gamma * _ln(yh, self.eps)


@register("sce", aliases=("symmetric-cross-entropy", "sce-loss"))
class SCE(ProbabilityLoss):
    """SCE loss of seed 002 (eq. 4.3-4.6): ``ce_weight * CE + prop_weight * L_prop``.

    ``L_prop = -alpha * ||(1 - y) - p||_2 * log p_y`` with ``alpha = mean((y - p)^2)``
    (eq. 4.3 ``alpha``, eq. 4.4 ``weight``, eq. 4.6 the sum with 0.5 and 0.5).

    Sign: eq. 4.5 prints ``L_SCE = alpha (weight * log(y_p))``, which is at most 0 and falls as
    ``p_y -> 0``: minimised on its own it would push the target probability down. Fig. 4.1's
    algorithm replaces ``y_p`` by ``-log(y_p)`` ("log normalisation") first, which gives the minus
    sign above; that is the default. ``literal=True`` keeps eq. 4.5's sign: the total is then
    ``ce_weight * CE - prop_weight * alpha * weight * CE``, still CE-like but weaker.

    Scale: eq. 4.3, ``alpha = 1/N sum_i (y_i - y_p)^2``, averages over the N samples the squared
    difference of two distributions. By default that squared difference is also averaged over the
    C classes (``alpha_classes="mean"``, ``alpha`` in ``[0, 2 / C]``); ``"sum"`` takes the squared
    norm ``||y - p||^2`` (``alpha`` in ``[0, 2]``, C times larger). The thesis computes ``alpha``
    "across a batch of N samples": by default it is one number for the batch; ``alpha_over="sample"``
    takes it per sample. For a single sample (a phenotype) both agree.

    Parameters
    ----------
    ce_weight, prop_weight : float
        The balancing factors (0.5 and 0.5 in the thesis).
    alpha_over : {"batch", "sample"}
        What ``alpha``'s mean over samples runs over.
    alpha_classes : {"mean", "sum"}
        How ``alpha`` reduces the squared difference over the classes.
    literal : bool
        Eq. 4.5's sign for ``L_prop`` (``+alpha * weight * log p_y``).
    label_smoothing, eps : float
        As for :class:`CrossEntropy`.
    """

    def __init__(self, ce_weight: float = 0.5, prop_weight: float = 0.5, alpha_over: str = "batch",
                 alpha_classes: str = "mean", literal: bool = False, label_smoothing: float = 0.0, eps: float = EPS):
        super().__init__(label_smoothing)
        self.alpha_over = check_choice(alpha_over, "alpha_over", ("batch", "sample"))
        self.alpha_classes = check_choice(alpha_classes, "alpha_classes", ("mean", "sum"))
        self.ce_weight, self.prop_weight, self.eps = float(ce_weight), float(prop_weight), float(eps)
        self.literal = bool(literal)

    def _combine(self, y, p, logp, alpha):
        ce = -(y * logp).sum(-1)
        weight = torch.linalg.vector_norm((1.0 - y) - p, dim=-1)
        prop = alpha * weight * ce
        return self.ce_weight * ce + self.prop_weight * (-prop if self.literal else prop)

    def _alpha(self, y, p, per_sample: bool):
        sq = (y - p) ** 2
        per_class = sq.mean(-1) if self.alpha_classes == "mean" else sq.sum(-1)
        return per_class if per_sample else per_class.mean()

    def forward(self, logits, target, features=None, weight=None):
        """Batch-mean SCE loss, with ``alpha`` over the batch or per sample as configured."""
        logp = torch.log_softmax(logits, dim=-1)
        p = logp.exp()
        y = self.soft_target(target, logits.shape[-1], logits.dtype)
        return self._combine(y, p, logp, self._alpha(y, p, self.alpha_over == "sample")).mean()

    def of_probabilities(self, target, probs):
        """Per-sample SCE loss, ``alpha`` taken per sample."""
        return self._combine(target, probs, _ln(probs, self.eps), self._alpha(target, probs, True))


@register("adma", aliases=("adma-loss",))
class Adma(ElementwiseLoss):
    """Adma loss of seed 001 (eq. 5): ``sum_j y_j (e - exp(p_j ** a))``.

    Range ``[0, e - 1]``, decreasing in ``p``, convex in ``p`` exactly when ``a <= 0.5``
    (larger ``a`` is allowed for study).

    ``a = 0``: the paper's best range is ``a in [0.0, 0.5]`` (its section 3), so ``a = 0`` is
    accepted, but there ``p ** 0 = 1`` and the loss is the constant ``e - e = 0`` with zero
    gradient (the limit ``a -> 0+`` for every ``p > 0``): a model trained with it does not move.
    It warns, so that a typo does not train silently for nothing.

    Parameters
    ----------
    a : float
        Scaling factor, ``a >= 0`` (default 0.25).
    label_smoothing : float
        As for :class:`CrossEntropy`.
    """

    def __init__(self, a: float = 0.25, label_smoothing: float = 0.0):
        super().__init__(label_smoothing)
        self.a = check_scalar(a, "a", float, min=0.0)
        if self.a == 0.0:
            warnings.warn("Adma with a = 0 is the constant loss 0 (p ** 0 = 1): it has no gradient, so nothing "
                          "trains; the paper's useful range is 0 < a <= 0.5.", UserWarning, stacklevel=3)

    def forward(self, logits, target, features=None, weight=None):
        """Batch-mean Adma loss, ``p^a`` computed from log-softmax."""
        # p^a = exp(a log p): finite gradient even where p underflows to 0
        pa = torch.exp(self.a * torch.log_softmax(logits, dim=-1))
        y = self.soft_target(target, logits.shape[-1], logits.dtype)
        return (y * (math.e - torch.exp(pa))).sum(-1).mean()

    def elementwise(self, y, yh):
        """``y (e - exp(yh^a))`` elementwise."""
        return y * (math.e - torch.exp(yh.clamp_min(0.0) ** self.a))

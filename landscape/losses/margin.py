"""Margin losses: cross-entropy on logits whose target entry is lowered by a margin.

* on the logits: SM-Softmax (fixed margin) and MAM-SoftMax (batch-adaptive margin), seed 002;
* on the penultimate features ``f`` and classifier weights ``W`` (``needs_features``):
  L-Softmax and A-Softmax (seed 000, multiplicative angular margin) and AM-Softmax
  (seed 002, additive cosine margin).

The feature-based losses use the head's weights only, never its bias, so models trained
with them should be built with ``head_bias=False`` (accuracy is always measured on the
model's plain logits, which include the bias when there is one).
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ..errors import LossError
from .base import Loss, register


def _lower_target(logits: torch.Tensor, target: torch.Tensor, new_target_logit: torch.Tensor) -> torch.Tensor:
    """``logits`` with the target entry of each row replaced by ``new_target_logit`` (N,)."""
    onehot = F.one_hot(target, logits.shape[-1]).to(torch.bool)
    return torch.where(onehot, new_target_logit[:, None], logits)


@register("sm-softmax", aliases=("sm", "soft-margin-softmax", "smsoftmax"))
class SMSoftmax(Loss):
    """SM-Softmax (seed 002, eq. 4.13): CE on logits with the target logit ``z_y - m``.

    Parameters
    ----------
    m : float
        The margin, ``m >= 0`` (0 gives CE; default 0.35).
    """

    def __init__(self, m: float = 0.35):
        super().__init__()
        if float(m) < 0:
            raise ValueError(f"the margin m must be >= 0, got {m}")
        self.m = float(m)

    def forward(self, logits, target, features=None, weight=None):
        """Batch-mean CE on the logits with the target logit lowered by ``m``."""
        z_y = logits.gather(1, target[:, None])[:, 0]
        return F.cross_entropy(_lower_target(logits, target, z_y - self.m), target)


def mam_margin(logits: torch.Tensor, offset: float = 0.2, max_margin: float = 4.0) -> torch.Tensor:
    """The batch-adaptive margin of MAM-SoftMax (seed 002, eq. 4.14 and Fig. 4.1).

    ``M_u = max(z) + offset`` over the batch, ``M = clip(log10(M_u), 0, max_margin)``, and
    the returned amount ``mean(z) + M`` (mean over the batch) is subtracted from the target
    logit. Computed without gradient: the margin is a property of the batch, not a term to
    optimise. The thesis is inconsistent about the log base and the order of the steps;
    this is the toolkit's reading, kept in this one function.
    """
    with torch.no_grad():
        upper = logits.max() + offset
        # log10 of a value below 1 is negative and clipped to 0 anyway; clamp first to avoid NaN
        margin = torch.log10(upper.clamp_min(1.0)).clamp(0.0, max_margin)
        return logits.mean() + margin


@register("mam-softmax", aliases=("mam", "maximized-adaptable-margin-softmax", "mamsoftmax"))
class MAMSoftmax(Loss):
    """MAM-SoftMax (seed 002, eq. 4.14-4.16): SM-Softmax with the margin of :func:`mam_margin`.

    Parameters
    ----------
    offset : float
        The initial value added to the batch's largest logit (0.2 in the thesis).
    max_margin : float
        Upper clip of ``log10(M_u)`` (4 in the thesis).
    """

    def __init__(self, offset: float = 0.2, max_margin: float = 4.0):
        super().__init__()
        if float(max_margin) < 0:
            raise ValueError(f"max_margin must be >= 0, got {max_margin}")
        self.offset, self.max_margin = float(offset), float(max_margin)

    def forward(self, logits, target, features=None, weight=None):
        """Batch-mean CE on the logits with the target logit lowered by the batch-adaptive margin."""
        z_y = logits.gather(1, target[:, None])[:, 0]
        shift = mam_margin(logits, self.offset, self.max_margin)
        return F.cross_entropy(_lower_target(logits, target, z_y - shift), target)


# -- feature-based margins ------------------------------------------------------------------
def _cosines(features: torch.Tensor, weight: torch.Tensor, tiny: float = 1e-12):
    """``|f|`` (N,), ``|W_j|`` (C,) and ``cos theta`` (N, C) with zero norms kept finite."""
    f_norm = torch.linalg.vector_norm(features, dim=1)
    w_norm = torch.linalg.vector_norm(weight, dim=1)
    cos = (features @ weight.T) / (f_norm[:, None] * w_norm[None, :]).clamp_min(tiny)
    return f_norm, w_norm, cos.clamp(-1.0, 1.0)


def _check_features(loss: Loss, features, weight) -> None:
    if features is None or weight is None:
        raise LossError(f"{loss.spec} is a margin loss on the penultimate features: call it as "
                        "loss(logits, target, features=f, weight=head.weight), or through "
                        "landscape.objective.loss_and_logits, which does that for zoo models.")


def chebyshev_cos(cos: torch.Tensor, m: int) -> torch.Tensor:
    """``cos(m theta)`` from ``cos theta`` by the Chebyshev recurrence (smooth gradient at theta = 0, pi)."""
    prev, cur = torch.ones_like(cos), cos
    if m == 0:
        return prev
    for _ in range(m - 1):
        prev, cur = cur, 2.0 * cos * cur - prev
    return cur


def psi(cos: torch.Tensor, m: int) -> torch.Tensor:
    """L-Softmax's ``psi(theta) = (-1)^k cos(m theta) - 2k`` for ``theta in [k pi/m, (k+1) pi/m]``.

    Monotonically decreasing in theta on ``[0, pi]``; ``psi = cos`` for ``m = 1``.
    """
    with torch.no_grad():
        theta = torch.acos(cos)
        k = torch.floor(theta * m / math.pi).clamp(0, m - 1)  # theta = pi belongs to the last interval
        sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * chebyshev_cos(cos, m) - 2.0 * k


class _AngularSoftmax(Loss):
    """L-Softmax (``normalize_weight=False``) and A-Softmax (``True``) of seed 000.

    Target logit ``|W_y||f| psi(theta_y)``, others ``|W_j||f| cos theta_j`` (A-Softmax:
    unit-length ``W_j``, no bias). ``beta`` is the annealing of Liu et al.'s implementation,
    target ``(beta |W||f| cos + |W||f| psi) / (1 + beta)``; the seed's formula is ``beta = 0``.

    Training note: with ``beta = 0`` and ReLU features, ``psi(theta_y) < 0`` at the large
    angles of initialisation, so the loss shrinks ``|W_y|`` and whole classes collapse to
    zero weight (an mlp on digits stops at 29 % test accuracy with m = 4, 50 % with m = 2).
    A fixed ``beta = 5`` (Liu et al. anneal towards a small ``beta`` instead) trains to 98 %.
    """

    needs_features = True
    normalize_weight: bool = False

    def __init__(self, m: int = 4, beta: float = 0.0):
        super().__init__()
        if isinstance(m, bool) or int(m) != m or int(m) < 1:
            raise ValueError(f"the margin m must be an integer >= 1, got {m!r}")
        if float(beta) < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.m, self.beta = int(m), float(beta)

    def margin_logits(self, features: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The logits with the angular margin applied to each row's target entry."""
        f_norm, w_norm, cos = _cosines(features, weight)
        w_scale = torch.ones_like(w_norm) if self.normalize_weight else w_norm
        scale = f_norm[:, None] * w_scale[None, :]
        plain = scale * cos
        cos_y = cos.gather(1, target[:, None])[:, 0]
        scale_y = scale.gather(1, target[:, None])[:, 0]
        target_logit = scale_y * (self.beta * cos_y + psi(cos_y, self.m)) / (1.0 + self.beta)
        return _lower_target(plain, target, target_logit)

    def forward(self, logits, target, features=None, weight=None):
        _check_features(self, features, weight)
        return F.cross_entropy(self.margin_logits(features, weight, target), target)


@register("l-softmax", aliases=("large-margin-softmax", "lsoftmax"))
class LSoftmax(_AngularSoftmax):
    """L-Softmax (seed 000): multiplicative angular margin, integer ``m >= 1`` (``m = 1`` is CE on ``W f``).

    Parameters
    ----------
    m : int
        Angular margin (the seed runs 2, 3, 4; default 4).
    beta : float
        Annealing weight of the plain cosine (default 0: the pure margin).
    """


@register("a-softmax", aliases=("sphereface", "angular-softmax", "asoftmax"))
class ASoftmax(_AngularSoftmax):
    """A-Softmax / SphereFace (seed 000): L-Softmax with unit-length class weights and no bias.

    Parameters
    ----------
    m : int
        Angular margin (default 4).
    beta : float
        Annealing weight of the plain cosine (default 0).
    """

    normalize_weight = True


@register("am-softmax", aliases=("additive-margin-softmax", "cosface", "amsoftmax"))
class AMSoftmax(Loss):
    """AM-Softmax (seed 002, eq. 2.16): target ``s (cos theta_y - m)``, others ``s cos theta_j``.

    Parameters
    ----------
    m : float
        Additive cosine margin, ``m >= 0`` (default 0.35).
    s : float
        Scale, ``s > 0`` (default 30).
    """

    needs_features = True

    def __init__(self, m: float = 0.35, s: float = 30.0):
        super().__init__()
        if float(m) < 0 or float(s) <= 0:
            raise ValueError(f"need m >= 0 and s > 0, got m={m}, s={s}")
        self.m, self.s = float(m), float(s)

    def margin_logits(self, features: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``s cos theta`` with ``s m`` subtracted from each row's target entry."""
        _, _, cos = _cosines(features, weight)
        cos_y = cos.gather(1, target[:, None])[:, 0]
        return _lower_target(self.s * cos, target, self.s * (cos_y - self.m))

    def forward(self, logits, target, features=None, weight=None):
        """Batch-mean CE on :meth:`margin_logits` of the features and classifier weight."""
        _check_features(self, features, weight)
        return F.cross_entropy(self.margin_logits(features, weight, target), target)

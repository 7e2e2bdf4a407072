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

from ..errors import LossError, check_choice, check_scalar
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
        self.m = check_scalar(m, "the margin m", float, min=0.0)

    def forward(self, logits, target, features=None, weight=None):
        """Batch-mean CE on the logits with the target logit lowered by ``m``."""
        z_y = logits.gather(1, target[:, None])[:, 0]
        return F.cross_entropy(_lower_target(logits, target, z_y - self.m), target)


MAM_LOG_BASES = ("10", "e")
MAM_ORDERS = ("log-clip", "clip-log")
MAM_SCOPES = ("batch", "sample")


def mam_margin(logits: torch.Tensor, offset: float = 0.2, max_margin: float = 4.0, log_base: str = "10",
               order: str = "log-clip", scope: str = "batch") -> torch.Tensor:
    """The adaptive amount MAM-SoftMax subtracts from the target logit (seed 002, eq. 4.14, Fig. 4.1).

    Eq. 4.14 reads ``M_u = max(x) + eps`` (``eps = offset = 0.2``), ``M_l = log M_u``,
    ``M_c = clip(M_l, 0, 4)``, ``M_U = mean(x) + M_c``; Fig. 4.1's algorithm clips ``m = max(x) + 0.2``
    to ``[0, 4]`` first and then takes ``log10``. The thesis does not say which base eq. 4.14's
    ``log`` has, nor whether max and mean run over the batch or over each sample's logits. The
    toolkit's default is eq. 4.14's order with Fig. 4.1's base over the batch:
    ``clip(log10(max over the batch + 0.2), 0, 4) + mean over the batch``.

    Parameters
    ----------
    logits : Tensor (N, C)
    offset : float
        The initial value ``eps`` added to the largest logit (0.2).
    max_margin : float
        The upper bound of the clip (4).
    log_base : {"10", "e"}
        Base of the logarithm: Fig. 4.1's ``log10`` or the natural log.
    order : {"log-clip", "clip-log"}
        Eq. 4.14 (log, then clip to ``[0, max_margin]``) or Fig. 4.1 (clip ``M_u`` to
        ``[0, max_margin]``, then log). A logarithm of a value below 1 is negative; the margin is
        floored at 0 in both orders (``clip-log`` would otherwise reach ``-inf`` at ``M_u = 0``).
    scope : {"batch", "sample"}
        Max and mean over the whole batch's logits (one shift for the batch) or over each sample's
        logits (one shift per sample).

    Returns
    -------
    Tensor
        The shift ``mean + M``: a scalar (``scope="batch"``) or ``(N,)``; computed without gradient,
        as the margin is a property of the batch, not a term to optimise.
    """
    log = torch.log10 if check_choice(log_base, "log_base", MAM_LOG_BASES) == "10" else torch.log
    order = check_choice(order, "order", MAM_ORDERS)
    per_sample = check_choice(scope, "scope", MAM_SCOPES) == "sample"
    with torch.no_grad():
        upper = (logits.amax(dim=1) if per_sample else logits.max()) + offset
        centre = logits.mean(dim=1) if per_sample else logits.mean()
        if order == "log-clip":
            # a log of a value below 1 is negative and clipped to 0 anyway; clamp first to avoid NaN
            margin = log(upper.clamp_min(1.0)).clamp(0.0, max_margin)
        else:
            margin = log(upper.clamp(1.0, max(max_margin, 1.0)))
        return centre + margin


@register("mam-softmax", aliases=("mam", "maximized-adaptable-margin-softmax", "mamsoftmax"))
class MAMSoftmax(Loss):
    """MAM-SoftMax (seed 002, eq. 4.14-4.16): SM-Softmax with the margin of :func:`mam_margin`.

    Parameters
    ----------
    offset : float
        The initial value added to the largest logit (0.2 in the thesis).
    max_margin : float
        Upper clip of the margin (4 in the thesis).
    log_base, order, scope : str
        The readings of eq. 4.14 against Fig. 4.1 (see :func:`mam_margin`); defaults ``"10"``,
        ``"log-clip"``, ``"batch"``.
    """

    def __init__(self, offset: float = 0.2, max_margin: float = 4.0, log_base: str = "10", order: str = "log-clip",
                 scope: str = "batch"):
        super().__init__()
        self.offset = float(offset)
        self.max_margin = check_scalar(max_margin, "max_margin", float, min=0.0)
        self.log_base = check_choice(str(log_base), "log_base", MAM_LOG_BASES)
        self.order = check_choice(order, "order", MAM_ORDERS)
        self.scope = check_choice(scope, "scope", MAM_SCOPES)

    def forward(self, logits, target, features=None, weight=None):
        """Batch-mean CE on the logits with the target logit lowered by the batch-adaptive margin."""
        z_y = logits.gather(1, target[:, None])[:, 0]
        shift = mam_margin(logits, self.offset, self.max_margin, self.log_base, self.order, self.scope)
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

    ``literal`` (A-Softmax only) replaces ``psi(theta)`` by ``cos(m theta)`` itself.
    """

    needs_features = True
    normalize_weight: bool = False

    def __init__(self, m: int = 4, beta: float = 0.0):
        super().__init__()
        if not isinstance(m, bool) and isinstance(m, float) and m.is_integer():
            m = int(m)  # 4.0 is the integer margin 4
        self.m = check_scalar(m, "the margin m", int, min=1)
        self.beta, self.literal = check_scalar(beta, "beta", float, min=0.0), False

    def margin_logits(self, features: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The logits with the angular margin applied to each row's target entry."""
        f_norm, w_norm, cos = _cosines(features, weight)
        w_scale = torch.ones_like(w_norm) if self.normalize_weight else w_norm
        scale = f_norm[:, None] * w_scale[None, :]
        plain = scale * cos
        cos_y = cos.gather(1, target[:, None])[:, 0]
        scale_y = scale.gather(1, target[:, None])[:, 0]
        margin = chebyshev_cos(cos_y, self.m) if self.literal else psi(cos_y, self.m)
        target_logit = scale_y * (self.beta * cos_y + margin) / (1.0 + self.beta)
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

    Seed 000 prints A-Softmax (its Fig. 5 equation) with the target logit ``|x| cos(m theta_y)``;
    the toolkit's default uses L-Softmax's monotone ``psi(theta_y)`` instead (seed 000's own
    L-Softmax equation, and SphereFace's published form), because ``cos(m theta)`` rises again
    for ``theta > pi / m``, so a sample far from its class would score a larger target logit than
    one nearer to it. The two agree for ``theta_y <= pi / m`` and differ beyond (``literal=True``
    gives the printed form).

    Parameters
    ----------
    m : int
        Angular margin (default 4).
    beta : float
        Annealing weight of the plain cosine (default 0).
    literal : bool
        Target logit ``|x| cos(m theta_y)`` as seed 000 prints it, instead of ``|x| psi(theta_y)``.
    """

    normalize_weight = True

    def __init__(self, m: int = 4, beta: float = 0.0, literal: bool = False):
        super().__init__(m, beta)
        self.literal = bool(literal)


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

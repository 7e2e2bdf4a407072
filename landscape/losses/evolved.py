"""The evolved losses of seed 003 (Table 4): elementwise functions ``L(y, yh)``.

Each is summed over the classes and averaged over the batch, fed the (optionally
label-smoothed) one-hot target ``y`` and the softmax probability ``yh``. The operators are
the protected ones of the search space the paper reuses, so every loss is finite on
``[0, 1]^2``: ``ln(x) = ln(|x| + eps)``, ``log(x) = log10(|x| + eps)``,
``a / b = a / (b + eps)``. Seed 003's own CE, ``-y ln(|yh| + eps)``, is the elementwise
form of the registered ``"ce"``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from .base import EPS, ElementwiseLoss, register

Tensor = torch.Tensor
special = torch.special


class _Ops:
    """The protected operators of the search space, bound to one ``eps``."""

    def __init__(self, eps: float):
        self.eps = eps

    def ln(self, x: Tensor) -> Tensor:
        return torch.log(x.abs() + self.eps)

    def log(self, x: Tensor) -> Tensor:
        return torch.log10(x.abs() + self.eps)

    def div(self, a: Tensor, b: Tensor) -> Tensor:
        return a / (b + self.eps)


def _dsigmoid(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 - s)


def _dtanh(x: Tensor) -> Tensor:
    return 1.0 - torch.tanh(x) ** 2


def _dsoftsign(x: Tensor) -> Tensor:
    return 1.0 / (1.0 + x.abs())


# F.softplus returns x itself above its threshold, so yh / eps ~ 1e7 never overflows to inf.
_FORMULAS: dict[str, Callable[[_Ops, Tensor, Tensor], Tensor]] = {
    "b0": lambda o, y, yh: -torch.sigmoid(F.softplus(o.div(yh, y))),
    "b1": lambda o, y, yh: -_dsigmoid(special.i0e(o.div(yh, y))),
    "b2": lambda o, y, yh: -special.i1e(torch.erf(o.div(yh, y))),
    "c0": lambda o, y, yh: -o.ln(torch.arctan(o.div(yh, y))),
    "c1": lambda o, y, yh: -o.ln(F.softplus(o.div(yh, y))),
    "c2": lambda o, y, yh: -torch.sigmoid(o.log(o.div(yh, y))),
    "m0": lambda o, y, yh: -special.i1(torch.arctan(o.log(yh))) * y,
    "m1": lambda o, y, yh: F.softplus(yh - y),
    "m2": lambda o, y, yh: torch.asinh(special.i0(y - yh)),
    "r0": lambda o, y, yh: _dtanh(special.i0e(o.div(yh, y))) + special.i0e(o.div(yh, y)),
    "r1": lambda o, y, yh: o.log(o.div(yh, y)) / torch.sqrt(1.0 + (o.log(o.div(yh, y)) + y) ** 2),
    "r2": lambda o, y, yh: o.log(o.div(yh, y)).abs() ** special.i0(y).abs(),
    "a0": lambda o, y, yh: -o.ln(_dsoftsign(o.log(yh))) * y,
    "a1": lambda o, y, yh: -o.ln(special.i0e(o.log(yh))) * y,
    "a2": lambda o, y, yh: o.div(y, special.i0e(o.ln(yh))),
}

#: The paper's readable form of each formula (for captions and docs).
FORMULAS_TEXT = {
    "b0": "-sigmoid(softplus(yh / y))", "b1": "-dsigmoid(i0e(yh / y))", "b2": "-i1e(erf(yh / y))",
    "c0": "-ln(arctan(yh / y))", "c1": "-ln(softplus(yh / y))", "c2": "-sigmoid(log(yh / y))",
    "m0": "-i1(arctan(log(yh))) * y", "m1": "ln(1 + exp(yh - y))", "m2": "arcsinh(i0(y - yh))",
    "r0": "dtanh(i0e(yh / y)) + i0e(yh / y)", "r1": "log(yh / y) / sqrt(1 + (log(yh / y) + y)^2)",
    "r2": "|log(yh / y)| ** |i0(y)|", "a0": "-ln(dsoftsign(log(yh))) * y", "a1": "-ln(i0e(log(yh))) * y",
    "a2": "y / i0e(ln(yh))",
}


class Evolved(ElementwiseLoss):
    """One evolved loss of seed 003, Table 4 (``Evolved("a2")``; registered as ``"a2"``, ``"A2"``).

    Parameters
    ----------
    formula : str
        One of ``b0 b1 b2 c0 c1 c2 m0 m1 m2 r0 r1 r2 a0 a1 a2``.
    label_smoothing : float
        Mass spread uniformly over the classes (seed 003 runs A2 with 0.1).
    eps : float
        The protected operators' ``eps`` (default 1e-7).
    """

    def __init__(self, formula: str, label_smoothing: float = 0.0, eps: float = EPS):
        super().__init__(label_smoothing)
        if formula not in _FORMULAS:
            raise ValueError(f"unknown evolved formula {formula!r}; available: {', '.join(_FORMULAS)}")
        self.formula, self._ops, self._spec = formula, _Ops(float(eps)), formula

    def elementwise(self, y, yh):
        """The evolved formula ``L(y, yh)`` elementwise."""
        return _FORMULAS[self.formula](self._ops, y, yh)

    def extra_repr(self) -> str:
        """The formula's name and readable form, for ``repr``."""
        return f"{self.formula.upper()} = {FORMULAS_TEXT[self.formula]}"


def _factory(formula: str):
    def make(label_smoothing: float = 0.0, eps: float = EPS) -> Evolved:
        return Evolved(formula, label_smoothing=label_smoothing, eps=eps)

    make.__name__ = make.__qualname__ = f"evolved_{formula}"
    make.__doc__ = f"Seed 003's {formula.upper()} = {FORMULAS_TEXT[formula]} (see :class:`Evolved`)."
    return make


for _name in _FORMULAS:
    register(_name, _factory(_name))

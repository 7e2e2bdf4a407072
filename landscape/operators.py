"""Linear operators and their algebra: the one protocol every curvature algorithm works through.

An operator is anything with ``shape`` ``(m, n)``, ``dtype``, ``device`` and ``matmat(V)``
returning ``A @ V`` for an ``(n, k)`` tensor ``V`` (plus ``matvec``). The curvature operators of
:mod:`landscape.hvp` (:class:`~landscape.hvp.HessianOperator`,
:class:`~landscape.hvp.GGNOperator`) are such operators, and so is everything built from them
here, lazily, in the style of scipy's and curvlinops' linear operators:

>>> import torch
>>> from landscape.operators import as_operator
>>> A = as_operator(torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)))
>>> B = 2 * A - 1          # 2 A - I: a scalar added or subtracted is a multiple of the identity
>>> (B @ A).matvec(torch.ones(3, dtype=torch.float64)).tolist()
[1.0, 6.0, 15.0]

``A + B``, ``A - B``, ``c * A``, ``A / c``, ``-A``, ``A + c`` (``A + c I``) and ``A @ B``
(composition) build new operators without forming any matrix; ``A @ v`` applies one. A shift
``H - c`` turns the most negative eigenvalue of ``H`` into the largest-magnitude one of the
shifted operator, which is how Li et al. find ``lambda_min`` without shift-and-invert.
:func:`as_operator` wraps dense tensors, numpy arrays, scipy ``LinearOperator`` s and any object
with the protocol. :meth:`LinearOperator.to_scipy` bridges back to scipy (``eigsh``), and
:meth:`LinearOperator.dense` forms the matrix of a small operator for tests.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np
import torch

from .errors import ArgumentError

__all__ = ["LinearOperator", "DenseOperator", "IdentityOperator", "ScaledOperator", "SumOperator",
           "ProductOperator", "ScipyOperator", "as_operator", "identity"]


def _is_scalar(x) -> bool:
    return (isinstance(x, numbers.Real) and not isinstance(x, bool)) or (isinstance(x, torch.Tensor) and x.dim() == 0)


class LinearOperator:
    """Base class of the toolkit's linear operators: ``matvec``, algebra, scipy bridge, dense form.

    Subclasses set ``shape``, ``dtype``, ``device`` (and ``symmetric`` when ``A == A^T``) and
    implement ``_matmat(V)`` for an ``(n, k)`` tensor already on the operator's device and dtype.

    Attributes
    ----------
    shape : tuple of int
    dtype : torch.dtype
        The dtype of the vectors going in and out.
    device : torch.device
    symmetric : bool
        Whether the operator is symmetric (Lanczos needs it).
    """

    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device
    symmetric: bool = False

    # -- application -------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of columns ``n`` (the dimension of a square operator)."""
        return int(self.shape[1])

    def _prepare(self, V: torch.Tensor) -> torch.Tensor:
        if not isinstance(V, torch.Tensor):
            V = torch.as_tensor(np.asarray(V))
        if V.dim() != 2 or V.shape[0] != self.shape[1]:
            raise ArgumentError(f"expected a ({self.shape[1]}, k) tensor for an operator of shape {self.shape}, "
                                f"got {tuple(V.shape)}.")
        return V.to(device=self.device, dtype=self.dtype)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """``A @ V`` for an ``(n, k)`` tensor ``V`` (any device and float dtype; returned in the operator's)."""
        return self._matmat(self._prepare(V))

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``A @ v`` for a flat ``(n,)`` tensor."""
        if not isinstance(v, torch.Tensor):
            v = torch.as_tensor(np.asarray(v))
        if v.shape != (self.shape[1],):
            raise ArgumentError(f"expected a vector of shape ({self.shape[1]},), got {tuple(v.shape)}.")
        return self.matmat(v[:, None])[:, 0]

    @property
    def hvps(self) -> int:
        """Curvature products applied so far by the operators this one is built from (0 for plain matrices)."""
        return sum(int(getattr(op, "hvps", 0)) for op in _unique(self._children()))

    def _children(self) -> Sequence:
        return ()

    # -- algebra -----------------------------------------------------------------------------
    def __matmul__(self, other):
        """``A @ v`` / ``A @ V`` for a tensor or array (a tensor comes back); ``A @ B`` composes operators."""
        if isinstance(other, (torch.Tensor, np.ndarray)):
            other = torch.as_tensor(other)
            return self.matvec(other) if other.dim() == 1 else self.matmat(other)
        return ProductOperator([self, as_operator(other)])

    def __add__(self, other):
        if _is_scalar(other):
            return SumOperator([self, ScaledOperator(identity(self.shape[0], self.dtype, self.device), other)])
        return SumOperator([self, as_operator(other)])

    __radd__ = __add__

    def __sub__(self, other):
        return self + (-other if _is_scalar(other) else -as_operator(other))

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, c):
        if not _is_scalar(c):
            raise ArgumentError(f"an operator is multiplied by scalars only (use @ to compose operators), got "
                                f"{type(c).__name__}.")
        return ScaledOperator(self, c)

    __rmul__ = __mul__

    def __truediv__(self, c):
        if not _is_scalar(c) or float(c) == 0:
            raise ArgumentError(f"an operator is divided by a non-zero scalar only, got {c!r}.")
        return ScaledOperator(self, 1.0 / float(c))

    def __neg__(self):
        return ScaledOperator(self, -1.0)

    @property
    def T(self) -> "LinearOperator":
        """The transpose (itself for a symmetric operator)."""
        return self if self.symmetric else self._transpose()

    def _transpose(self) -> "LinearOperator":
        raise ArgumentError(f"{type(self).__name__} is not symmetric and has no transpose.")

    # -- bridges -----------------------------------------------------------------------------
    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` on float64 numpy vectors (for ``eigsh`` and friends)."""
        from scipy.sparse.linalg import LinearOperator as ScipyLinearOperator

        def apply(op, v: np.ndarray) -> np.ndarray:
            v = np.asarray(v, dtype=np.float64)
            V = torch.as_tensor(v.reshape(v.shape[0], -1), dtype=op.dtype, device=op.device)
            out = op.matmat(V).detach().cpu().double().numpy()
            return out.reshape(-1) if v.ndim == 1 else out

        return ScipyLinearOperator(self.shape, matvec=lambda v: apply(self, v), rmatvec=lambda v: apply(self.T, v),
                                   matmat=lambda V: apply(self, V), dtype=np.float64)

    def dense(self, max_size: int = 20_000, chunk: int = 256) -> torch.Tensor:
        """The matrix of the operator, ``chunk`` columns of the identity at a time (small operators only)."""
        if max(self.shape) > max_size:
            raise ArgumentError(f"the operator has {max(self.shape)} rows; forming it densely is limited to "
                                f"{max_size} (pass max_size= to override, or use a smaller model or "
                                "params='matrices').")
        n = self.shape[1]
        cols = []
        for j in range(0, n, chunk):
            E = torch.zeros(n, min(chunk, n - j), device=self.device, dtype=self.dtype)
            E[torch.arange(j, j + E.shape[1]), torch.arange(E.shape[1])] = 1
            cols.append(self.matmat(E))
        A = torch.cat(cols, dim=1)
        return (A + A.T) / 2 if self.symmetric else A  # exactly symmetric for eigvalsh

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, device={self.device})"


def _unique(ops) -> list:
    seen, out = set(), []
    for op in ops:
        leaves = op._leaves() if isinstance(op, LinearOperator) and hasattr(op, "_leaves") else [op]
        for leaf in leaves:
            if id(leaf) not in seen:
                seen.add(id(leaf))
                out.append(leaf)
    return out


def _promote(ops) -> tuple[torch.dtype, torch.device]:
    dtype = ops[0].dtype
    for op in ops[1:]:
        dtype = torch.promote_types(dtype, op.dtype)
    return dtype, torch.device(ops[0].device)


class _Composite(LinearOperator):
    """An operator built from others: applies each on its own device and dtype, returns the common one."""

    ops: list

    def _children(self):
        return self.ops

    def _leaves(self) -> list:
        out = []
        for op in self.ops:
            out.extend(op._leaves() if isinstance(op, _Composite) else [op])
        return out

    def _apply(self, op, V: torch.Tensor) -> torch.Tensor:
        return op.matmat(V.to(device=op.device, dtype=op.dtype)).to(device=self.device, dtype=self.dtype)


class DenseOperator(LinearOperator):
    """A matrix held as a tensor.

    Parameters
    ----------
    A : torch.Tensor
        ``(m, n)`` matrix; kept on its device, in its float dtype.
    symmetric : bool, optional
        Default: checked (``A`` square and equal to ``A.T`` within 1e-12 relative).
    """

    def __init__(self, A: torch.Tensor, symmetric: bool | None = None):
        A = torch.as_tensor(A)
        if A.dim() != 2:
            raise ArgumentError(f"a dense operator needs a 2-D matrix, got shape {tuple(A.shape)}.")
        if not A.is_floating_point():
            A = A.double()
        self.A, self.shape, self.dtype, self.device = A, (int(A.shape[0]), int(A.shape[1])), A.dtype, A.device
        if symmetric is None:
            scale = float(A.abs().max()) if A.numel() else 0.0
            symmetric = A.shape[0] == A.shape[1] and bool(torch.allclose(A, A.T, rtol=0, atol=1e-12 * scale))
        self.symmetric = bool(symmetric)

    def _matmat(self, V):
        return self.A @ V

    def _transpose(self):
        return DenseOperator(self.A.T, symmetric=False)


class IdentityOperator(LinearOperator):
    """The ``n x n`` identity."""

    symmetric = True

    def __init__(self, n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.shape, self.dtype, self.device = (int(n), int(n)), dtype, torch.device(device)

    def _matmat(self, V):
        return V.clone()


def identity(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> IdentityOperator:
    """The ``n x n`` identity operator (``A + c`` adds ``c`` times it)."""
    return IdentityOperator(n, dtype, device)


class ScaledOperator(_Composite):
    """``c A`` for a scalar ``c``."""

    def __init__(self, op, c):
        op = as_operator(op)
        c = float(c)
        if isinstance(op, ScaledOperator):  # c (d A) = (c d) A
            op, c = op.ops[0], c * op.c
        self.ops, self.c = [op], c
        self.shape, self.dtype, self.device = op.shape, op.dtype, torch.device(op.device)
        self.symmetric = bool(getattr(op, "symmetric", False))

    def _matmat(self, V):
        return self.c * self._apply(self.ops[0], V)

    def _transpose(self):
        return ScaledOperator(self.ops[0].T, self.c)

    def block(self, names):
        """``c`` times the block of the operator (see :meth:`landscape.hvp.HessianOperator.block`)."""
        return ScaledOperator(self.ops[0].block(names), self.c)

    def __repr__(self):
        return f"{self.c:g} * {self.ops[0]!r}"


class SumOperator(_Composite):
    """``A_1 + A_2 + ...`` of operators of one shape."""

    def __init__(self, ops):
        flat = []
        for op in map(as_operator, ops):
            flat.extend(op.ops if isinstance(op, SumOperator) else [op])
        shapes = {tuple(op.shape) for op in flat}
        if len(shapes) != 1:
            raise ArgumentError(f"cannot add operators of shapes {sorted(shapes)}; they need one shape.")
        self.ops, self.shape = flat, flat[0].shape
        self.dtype, self.device = _promote(flat)
        self.symmetric = all(getattr(op, "symmetric", False) for op in flat)

    def _matmat(self, V):
        out = self._apply(self.ops[0], V)
        for op in self.ops[1:]:
            out = out + self._apply(op, V)
        return out

    def _transpose(self):
        return SumOperator([op.T for op in self.ops])

    def block(self, names):
        """The sum of the blocks of the terms (each must support ``block``)."""
        return SumOperator([op.block(names) for op in self.ops])

    def __repr__(self):
        return " + ".join(repr(op) for op in self.ops)


class ProductOperator(_Composite):
    """``A_1 @ A_2 @ ...``: the composition, applied right to left."""

    def __init__(self, ops):
        flat = []
        for op in map(as_operator, ops):
            flat.extend(op.ops if isinstance(op, ProductOperator) else [op])
        for a, b in zip(flat, flat[1:]):
            if a.shape[1] != b.shape[0]:
                raise ArgumentError(f"cannot compose operators of shapes {a.shape} and {b.shape}.")
        self.ops, self.shape = flat, (flat[0].shape[0], flat[-1].shape[1])
        self.dtype, self.device = _promote(flat)
        # symmetric when the factors read the same forwards and backwards (H @ H, A @ B @ A with symmetric factors)
        self.symmetric = (all(getattr(op, "symmetric", False) for op in flat)
                          and all(a is b for a, b in zip(flat, reversed(flat))))

    def _matmat(self, V):
        for op in reversed(self.ops):
            V = self._apply(op, V)
        return V

    def _transpose(self):
        return ProductOperator([op.T for op in reversed(self.ops)])

    def __repr__(self):
        return " @ ".join(f"({op!r})" for op in self.ops)


class ScipyOperator(LinearOperator):
    """A ``scipy.sparse.linalg.LinearOperator`` (or anything scipy's ``aslinearoperator`` takes) as an operator.

    Products run on float64 numpy arrays on the CPU.
    """

    def __init__(self, A, symmetric: bool = False):
        from scipy.sparse.linalg import aslinearoperator

        self.A = aslinearoperator(A)
        self.shape = tuple(int(s) for s in self.A.shape)
        self.dtype, self.device, self.symmetric = torch.float64, torch.device("cpu"), bool(symmetric)

    def _matmat(self, V):
        return torch.as_tensor(np.asarray(self.A.matmat(V.numpy())), dtype=torch.float64).reshape(self.shape[0], -1)

    def _transpose(self):
        return ScipyOperator(self.A.T)


class _Protocol(LinearOperator):
    """Any object with ``shape``, ``dtype``, ``device`` and ``matmat``, given the algebra."""

    def __init__(self, obj):
        self.obj = obj
        self.shape = tuple(int(s) for s in obj.shape)
        self.dtype, self.device = obj.dtype, torch.device(obj.device)
        self.symmetric = bool(getattr(obj, "symmetric", False))

    def _matmat(self, V):
        return self.obj.matmat(V).to(device=self.device, dtype=self.dtype)

    @property
    def hvps(self):
        return int(getattr(self.obj, "hvps", 0))


def as_operator(A, symmetric: bool | None = None) -> LinearOperator:
    """Any matrix-like object as a :class:`LinearOperator`.

    Parameters
    ----------
    A : LinearOperator, torch.Tensor, np.ndarray, scipy LinearOperator or protocol object
        An operator is returned as it is; a tensor or array becomes a :class:`DenseOperator`; a
        scipy operator or sparse matrix a :class:`ScipyOperator`; any object with ``shape``,
        ``dtype``, ``device`` and ``matmat`` is wrapped as it is.
    symmetric : bool, optional
        Declare symmetry of a wrapped object (dense matrices are checked when not given).

    Returns
    -------
    LinearOperator
    """
    if isinstance(A, LinearOperator):
        return A
    if isinstance(A, (torch.Tensor, np.ndarray)):
        return DenseOperator(torch.as_tensor(A), symmetric=symmetric)
    if all(hasattr(A, a) for a in ("shape", "dtype", "device", "matmat")) and not hasattr(A, "rmatvec"):
        op = _Protocol(A)
        if symmetric is not None:
            op.symmetric = bool(symmetric)
        return op
    try:
        return ScipyOperator(A, symmetric=bool(symmetric))
    except (TypeError, ValueError) as exc:
        raise ArgumentError(f"cannot use a {type(A).__name__} as a linear operator: give a tensor, an array, a "
                            "scipy LinearOperator or an object with shape, dtype, device and matmat.") from exc

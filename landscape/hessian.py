"""Hessian curvature: algorithms on any symmetric operator, and the Hessian of a checkpoint.

The algorithms take any symmetric linear operator (:func:`as_operator`): an object with
``shape`` ``(P, P)``, ``dtype``, ``device`` and ``matmat(V)`` for ``(P, k)`` tensors (the
:class:`~landscape.hvp.HessianOperator` of a checkpoint, a generalised Gauss-Newton, a block or
a sum of them), a dense tensor or array, or a scipy ``LinearOperator``; or a checkpoint with data,
whose training objective's Hessian is then built here. So every algorithm is tested on matrices
with known spectra as well as on networks.

* :func:`lanczos_extremes` (:func:`hessian_extremes`) -- the most negative and the largest
  eigenvalue with the convergence reached (seed 002 Fig. 4.5 uses ``|lambda_min / lambda_max|``);
* :func:`hessian_eigenvalues` -- the ``k`` largest (or smallest, or both ends) eigenpairs by
  block Lanczos, as PyHessian's ``eigenvalues(top_n=k)``;
* :func:`hessian_directions` -- those eigenvectors as :class:`~landscape.directions.Directions`,
  for surfaces and lines along the curvature's own axes;
* :func:`trace` (:func:`hessian_trace`) -- Hutchinson's and Hutch++'s estimators, with a
  standard error and a bootstrap interval;
* :func:`spectral_density` -- stochastic Lanczos quadrature (Ghorbani et al. 2019), whose
  moments (:meth:`Density.moment`) estimate ``tr(H^p)``;
* :func:`layer_spectra` -- extremes, trace and density of every layer's Hessian block;
* :func:`eigen_ratio_map` -- both extremes and their ratio over a plane of directions, on the
  grid engine of surfaces (chunked, resumable, sharded), each point warm-started from its
  neighbour's Ritz vectors.

Stopping rule of the extremes
-----------------------------
A Ritz pair ``(theta, u)`` of the Lanczos tridiagonal has residual ``r = ||H u - theta u|| =
|beta_k s_k|`` for free, and some eigenvalue lies within ``r`` of ``theta``. The smallest
eigenvalues of a trained network cluster near zero, so a tolerance relative to ``|lambda_min|``
itself asks for digits that do not matter and never converges cheaply. Instead both extreme
Ritz pairs must reach ``r <= tol * max(|theta_min|, |theta_max|)``, a tolerance relative to the
spectrum's scale, after at least ``min_iter`` steps (default 12). Once a Ritz value has found its
extreme eigenvalue, that eigenvalue is off by at most ``tol`` times the spectral radius, so the
ratio ``|lambda_min / lambda_max|`` is off by about ``2 tol`` at most. The caveat of every Krylov
method remains: early on, the smallest Ritz value can sit on an interior eigenvalue of the
cluster with a small residual before the true minimum has entered the Krylov space. With
``tol = 1e-2`` that happened often enough on the shipped models to cost ratio errors up to 0.02;
and once ``min_iter = 4`` let the digits cnn stop at 0 instead of -2.1. The defaults
(``tol = 1e-3``, ``min_iter = 12``) kept ratio errors below 0.003 on the shipped digits models and
against dense Hessians (``landscape bench hessian``). The same rule, applied to the ``k`` wanted
Ritz pairs, stops :func:`hessian_eigenvalues`.

Non-finite values
-----------------
A Hessian at weights where the loss overflows (a plane over a huge range) or with NaN weights
has non-finite products. Lanczos stops at the first one and the point's eigenvalues are NaN,
never an exception; maps count such points in ``meta["non_finite"]``.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import math
import warnings
from typing import Callable, Mapping

import numpy as np
import torch

from . import grid
from .checkpoint import as_checkpoint
from .data import as_dataset
from .errors import ArgumentError, check_choice, check_scalar, did_you_mean
from .hvp import HessianError, HessianOperator, select_parameters
from .plane import plane_fingerprint, plane_meta, plane_setup
from .progress import bar as progress_bar
from .progress import choice as progress_choice
from .results import Result

__all__ = ["HessianOperator", "HessianError", "as_operator", "Extremes", "Eigenvalues", "TraceEstimate", "EigenMap",
           "Density", "LayerSpectra", "lanczos", "block_lanczos", "lanczos_extremes", "hessian_extremes",
           "hessian_eigenvalues", "hessian_directions", "trace", "hessian_trace", "spectral_density",
           "layer_spectra", "parameter_groups", "eigen_ratio_map", "select_parameters"]

WHICH = ("LA", "SA", "BE", "LM")
TRACE_METHODS = ("hutchinson", "hutch++")


# -- operators -----------------------------------------------------------------------------------
class Operator:
    """A symmetric linear operator as the algorithms of this module use it; made by :func:`as_operator`.

    It applies the wrapped operator to column blocks of at most ``block`` columns, returns
    tensors of its own ``dtype`` on its own ``device`` and counts the products applied
    (``hvps``: Hessian-vector products for a Hessian).

    Attributes
    ----------
    size : int
        ``P``; ``shape == (P, P)``.
    dtype : torch.dtype
    device : torch.device
    kind : str
        ``"hessian"``, ``"dense"``, ``"scipy"`` or the wrapped object's class name.
    source : object
        The wrapped operator (a :class:`~landscape.hvp.HessianOperator` for a checkpoint).
    checkpoint, data : optional
        The checkpoint and dataset a Hessian was built from (for provenance).
    hvps : int
        Products applied so far.
    """

    def __init__(self, matmat: Callable[[torch.Tensor], torch.Tensor], size: int, dtype: torch.dtype,
                 device: torch.device, *, kind: str, source=None, checkpoint=None, data=None, block: int = 64):
        self._matmat, self.size, self.dtype, self.device = matmat, int(size), dtype, torch.device(device)
        self.kind, self.source, self.checkpoint, self.data = kind, source, checkpoint, data
        self.block = int(block)
        self.hvps = 0

    @property
    def shape(self) -> tuple[int, int]:
        """``(P, P)``."""
        return (self.size, self.size)

    def matmat(self, V: torch.Tensor, block: int | None = None) -> torch.Tensor:
        """``A V`` for a ``(P, k)`` tensor, in column blocks of ``block`` (default ``self.block``); counts ``k``."""
        V = V.to(device=self.device, dtype=self.dtype)
        step = int(block or self.block)
        cols = []
        for j in range(0, V.shape[1], step):
            out = torch.as_tensor(self._matmat(V[:, j:j + step]))
            if tuple(out.shape) != (self.size, min(step, V.shape[1] - j)):
                raise ArgumentError(f"the operator's matmat returned shape {tuple(out.shape)} for input "
                                    f"{tuple(V[:, j:j + step].shape)}; it must return (P, k) for (P, k).")
            cols.append(out.to(device=self.device, dtype=self.dtype))
            self.hvps += cols[-1].shape[1]
        return torch.cat(cols, dim=1) if cols else V.clone()

    def meta(self) -> dict:
        """Provenance of the operator: its kind and size, and for a Hessian its checkpoint, data and options."""
        meta = {"operator": self.kind, "size": self.size, "dtype": str(self.dtype).replace("torch.", "")}
        op = self.source
        if isinstance(op, HessianOperator):
            meta.update(params=op.params_choice if isinstance(op.params_choice, str) else list(op.params_choice),
                        n_samples=getattr(op, "_n", None), batch_size=op.batch_size)
        return {**meta, **_provenance(self.checkpoint, self.data)}

    def __repr__(self) -> str:
        return f"Operator(kind={self.kind!r}, size={self.size}, dtype={self.dtype}, device={self.device})"


def _provenance(ck, data) -> dict:
    """The provenance keys of a checkpoint and a dataset (either may be None)."""
    meta = {}
    if ck is not None:
        meta.update(checkpoint=ck.name, digest=ck.digest, path=str(ck.path) if ck.path else None,
                    arch=ck.meta.get("arch"), loss=ck.meta.get("loss"), criterion=str(ck.meta.get("loss") or "ce"))
    if data is not None:
        meta.update(data=data.name, n_samples=len(data))
    return meta


def _is_scipy_operator(A) -> bool:
    if type(A).__module__.split(".")[0] != "scipy":
        return False
    import scipy.sparse
    from scipy.sparse.linalg import LinearOperator

    return isinstance(A, LinearOperator) or scipy.sparse.issparse(A)


def _dense(A) -> Operator:
    M = torch.as_tensor(np.asarray(A)) if isinstance(A, np.ndarray) else A.detach()
    if M.dim() != 2 or M.shape[0] != M.shape[1] or M.shape[0] == 0:
        raise ArgumentError(f"a dense operator must be a square (P, P) matrix, got shape {tuple(M.shape)}.")
    if M.dtype not in (torch.float32, torch.float64):
        M = M.to(torch.float64)
    scale = float(M.abs().max()) if M.numel() else 0.0
    if math.isfinite(scale) and not torch.allclose(M, M.T, rtol=1e-5, atol=1e-7 * max(scale, 1e-30)):
        raise ArgumentError("the matrix is not symmetric; these algorithms need a symmetric operator "
                            "(pass (A + A.T) / 2 to use its symmetric part).")
    return Operator(lambda V: M @ V, M.shape[0], M.dtype, M.device, kind="dense", source=M)


def _scipy(A) -> Operator:
    from scipy.sparse.linalg import aslinearoperator

    L = aslinearoperator(A)
    if len(L.shape) != 2 or L.shape[0] != L.shape[1]:
        raise ArgumentError(f"a scipy operator must be square, got shape {L.shape}.")

    def matmat(V: torch.Tensor) -> torch.Tensor:
        out = L.matmat(V.detach().cpu().double().numpy())
        return torch.as_tensor(np.asarray(out, dtype=np.float64).reshape(V.shape))

    return Operator(matmat, L.shape[0], torch.float64, "cpu", kind="scipy", source=L)


def _protocol(A, kind: str | None = None) -> Operator:
    """An object with the operator protocol (``shape``, ``dtype``, ``device``, ``matmat``), checked and wrapped."""
    missing = [a for a in ("shape", "dtype", "device", "matmat") if not hasattr(A, a)]
    if missing:
        raise ArgumentError(f"{type(A).__name__} is not an operator: it lacks {', '.join(missing)} (an operator has "
                            "shape (P, P), dtype, device and matmat(V) for (P, k) tensors).")
    shape = tuple(int(s) for s in A.shape)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ArgumentError(f"{type(A).__name__} has shape {shape}; an operator must be square (P, P).")
    dtype = A.dtype if isinstance(A.dtype, torch.dtype) else torch.float64
    return Operator(A.matmat, shape[0], dtype, A.device, kind=kind or type(A).__name__, source=A)


def _is_model_input(A) -> bool:
    import os

    from torch import nn

    from .checkpoint import Checkpoint

    return isinstance(A, (Checkpoint, nn.Module, str, os.PathLike))


def as_operator(A, data=None, *, criterion=None, subset: int | None = None, seed: int = 0, params="all",
                dtype: torch.dtype = torch.float32, batch_size: int | None = None) -> Operator:
    """Any symmetric operator a user holds, or the Hessian of a checkpoint's objective, as an :class:`Operator`.

    Parameters
    ----------
    A : operator, tensor, array, scipy operator, Checkpoint, path or nn.Module
        An object with ``shape`` ``(P, P)``, ``dtype``, ``device`` and ``matmat(V)`` (for
        example a :class:`~landscape.hvp.HessianOperator`); a dense symmetric ``(P, P)`` tensor
        or array; a ``scipy.sparse.linalg.LinearOperator`` or sparse matrix (applied in float64
        on the CPU); or a model (see :func:`landscape.checkpoint.as_checkpoint`), whose training
        objective's Hessian on ``data`` is built. For an operator, ``data`` and the options
        below are not used.
    data : Dataset, str, (x, y) pair, torch Dataset or DataLoader
        Data of the objective (see :func:`landscape.data.as_dataset`); required with a model.
    criterion : str or nn.Module, optional
        The loss, replacing the checkpoint's own training objective ("train" or None keeps it).
    subset : int, optional
        A seeded random subset of this many samples.
    seed : int
        Seed of the subset.
    params : {"all", "matrices"} or list of str
        Parameters the Hessian is taken over (see :func:`landscape.hvp.select_parameters`).
    dtype : torch.dtype
        float32 (default) or float64.
    batch_size : int, optional
        Average the Hessian over batches of this size (default: one batch).

    Returns
    -------
    Operator
    """
    if isinstance(A, Operator):
        return A
    if isinstance(A, HessianOperator):
        return _protocol(A, kind="hessian")
    if isinstance(A, (np.ndarray, torch.Tensor)):
        return _dense(A)
    if _is_scipy_operator(A):
        return _scipy(A)
    if not _is_model_input(A):
        return _protocol(A)
    if data is None:
        raise ArgumentError("the Hessian of a model needs data: pass data= (a Dataset, a spec such as 'digits', an "
                            "(x, y) pair or a DataLoader).")
    ck = as_checkpoint(A, criterion=None if criterion in (None, "train") else criterion)
    dataset = as_dataset(data, check_scalar(subset, "subset", int, min=1, allow_none=True), seed)
    op = _protocol(HessianOperator.from_checkpoint(ck, dataset, params=params, dtype=dtype, batch_size=batch_size),
                   kind="hessian")
    op.checkpoint, op.data = ck, dataset
    return op


def _start(size: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """``(size, k)`` Gaussian start vectors drawn on the CPU in float64 (the same on every device)."""
    return torch.randn(size, k, generator=gen, dtype=torch.float64)


# -- Lanczos -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Lanczos:
    """The outcome of :func:`lanczos` for ``k`` start vectors run side by side.

    Attributes
    ----------
    alpha, beta : np.ndarray
        ``(k, m)`` float64 diagonals of the tridiagonal ``T`` (``beta[:, i]`` couples steps
        ``i`` and ``i + 1``; the last column is the residual coupling).
    Q : torch.Tensor
        ``(k, m, P)`` orthonormal Lanczos vectors.
    finite : bool
        False when a product was not finite (the run stopped there; ``alpha``/``beta`` hold NaN).
    """

    alpha: np.ndarray
    beta: np.ndarray
    Q: torch.Tensor
    finite: bool = True

    @property
    def steps(self) -> int:
        """Number of Lanczos steps taken."""
        return self.alpha.shape[1]

    def ritz(self, i: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (ascending) and eigenvectors of run ``i``'s tridiagonal ``T``."""
        from scipy.linalg import eigh_tridiagonal

        if not self.finite:
            m = self.steps
            return np.full(m, np.nan), np.full((m, m), np.nan)
        return eigh_tridiagonal(self.alpha[i], self.beta[i, :-1])


def _orthogonalise(w: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """Remove from each row of ``w`` (k, P) its components along ``Q`` (k, m, P), twice.

    Twice is enough ("twice is enough", Parlett): one classical Gram-Schmidt pass loses
    orthogonality in float32 after a few dozen steps, and the extreme Ritz values then repeat.
    """
    for _ in range(2):
        w = w - torch.einsum("km,kmp->kp", torch.einsum("kmp,kp->km", Q, w), Q)
    return w


def lanczos(op, V0: torch.Tensor, steps: int, *, generator: torch.Generator | None = None,
            stop: Callable[[Lanczos], bool] | None = None) -> Lanczos:
    """Lanczos with full reorthogonalisation for ``k`` independent start vectors at once.

    Parameters
    ----------
    op : operator
        Symmetric (anything :func:`as_operator` accepts); ``k`` products per step, in one ``matmat``.
    V0 : torch.Tensor
        ``(P,)`` or ``(P, k)`` start vectors (normalised here).
    steps : int
        Maximum number of steps (at most ``P``).
    generator : torch.Generator, optional
        Source of the fresh random vector used when a Krylov space is exhausted (breakdown).
    stop : callable, optional
        ``stop(partial_result) -> bool`` checked after every step; True ends the iteration.

    Returns
    -------
    Lanczos
        Stops early, with ``finite=False``, at the first non-finite product.
    """
    op = as_operator(op)
    V0 = V0.reshape(op.size, -1).to(device=op.device, dtype=op.dtype)
    k = V0.shape[1]
    steps = int(min(steps, op.size))
    Q = torch.zeros(k, steps, op.size, device=op.device, dtype=op.dtype)
    alpha = np.zeros((k, steps))
    beta = np.zeros((k, steps))
    q = V0.T / torch.linalg.vector_norm(V0.T, dim=1, keepdim=True)
    eps = torch.finfo(op.dtype).eps
    for i in range(steps):
        Q[:, i] = q
        w = op.matmat(q.T).T
        a = (w * q).sum(1)
        w = _orthogonalise(w, Q[:, :i + 1])
        b = torch.linalg.vector_norm(w, dim=1)
        alpha[:, i] = a.double().cpu().numpy()
        beta[:, i] = b.double().cpu().numpy()
        if not (np.isfinite(alpha[:, i]).all() and np.isfinite(beta[:, i]).all()):
            return Lanczos(alpha[:, :i + 1], beta[:, :i + 1], Q[:, :i + 1], finite=False)
        result = Lanczos(alpha[:, :i + 1], beta[:, :i + 1], Q[:, :i + 1])
        if i + 1 == steps or (stop is not None and stop(result)):
            return result
        scale = np.maximum(np.abs(alpha[:, :i + 1]).max(1), 1e-30)
        dead = beta[:, i] <= 100 * eps * scale
        if dead.any():
            # Breakdown: the Krylov space is invariant. Continue with a fresh direction
            # orthogonal to it (coupling 0), so T stays block diagonal and exact.
            fresh = torch.randn(k, op.size, generator=generator, dtype=torch.float64).to(w)
            fresh = _orthogonalise(fresh, Q[:, :i + 1])
            dead_t = torch.as_tensor(dead, device=w.device)
            w = torch.where(dead_t[:, None], fresh, w)
            b = torch.where(dead_t, torch.linalg.vector_norm(w, dim=1), b)
            beta[dead, i] = 0.0
        q = w / b[:, None]
    raise AssertionError("unreachable")  # pragma: no cover


@dataclasses.dataclass
class BlockLanczos:
    """The outcome of :func:`block_lanczos`: an orthonormal Krylov basis and the projected operator.

    Attributes
    ----------
    T : np.ndarray
        ``(m, m)`` float64 symmetric ``Q^T A Q`` (block tridiagonal up to rounding).
    B : np.ndarray
        ``(b, b)`` coupling of the basis to the next block: ``A Q = Q T + Q_next B E_last^T``.
    Q : torch.Tensor
        ``(P, m)`` orthonormal basis.
    finite : bool
        False when a product was not finite.
    """

    T: np.ndarray
    B: np.ndarray
    Q: torch.Tensor
    finite: bool = True

    @property
    def dim(self) -> int:
        """Dimension ``m`` of the Krylov basis (= products used)."""
        return self.T.shape[0]

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values (ascending), their vectors in the basis, and their residuals ``||A u - theta u||``."""
        if not self.finite:
            m = self.dim
            return np.full(m, np.nan), np.full((m, m), np.nan), np.full(m, np.nan)
        theta, S = np.linalg.eigh(self.T)
        b = self.B.shape[0]
        return theta, S, np.linalg.norm(self.B @ S[-b:], axis=0)


def _orthonormal_columns(W: torch.Tensor, basis: torch.Tensor, gen: torch.Generator,
                         scale: float) -> tuple[torch.Tensor, np.ndarray]:
    """``W = Q B`` with ``Q`` orthonormal and orthogonal to ``basis``; a dependent column gets a fresh vector.

    Gram-Schmidt column by column, each projection done twice. A column that is (numerically)
    a combination of the earlier ones or of ``basis`` keeps its coefficients on the earlier
    columns and gets a random new vector orthogonal to everything, with coupling 0, so a block
    Krylov space that is exhausted keeps growing exactly.
    """
    eps = torch.finfo(W.dtype).eps
    cols, B = [], np.zeros((W.shape[1], W.shape[1]))
    for c in range(W.shape[1]):
        w = W[:, c]
        for _ in range(2):
            for i, q in enumerate(cols):
                coef = q @ w
                B[i, c] += float(coef)
                w = w - coef * q
        norm = float(torch.linalg.vector_norm(w))
        if norm <= 100 * eps * max(scale, 1e-30):
            w = _start(W.shape[0], 1, gen)[:, 0].to(W)
            for _ in range(2):
                w = w - basis @ (basis.T @ w)
                for q in cols:
                    w = w - (q @ w) * q
            cols.append(w / torch.linalg.vector_norm(w))  # B[c, c] stays 0; B[:c, c] holds the column's parts
        else:
            B[c, c] = norm
            cols.append(w / norm)
    return torch.stack(cols, dim=1), B


def block_lanczos(op, V0: torch.Tensor, max_dim: int, *, generator: torch.Generator | None = None,
                  stop: Callable[[BlockLanczos], bool] | None = None) -> BlockLanczos:
    """Block Lanczos with full reorthogonalisation: one Krylov space grown ``b`` vectors at a time.

    A block of ``b`` start vectors finds eigenvalues of multiplicity up to ``b``, which one
    start vector cannot (its Krylov space holds one vector per distinct eigenvalue), and its
    ``b`` products per step go through one batched ``matmat``. Written here because scipy's
    ``eigsh`` (ARPACK) is single-vector and CPU-only; tested against ``numpy.linalg.eigvalsh``.

    Parameters
    ----------
    op : operator
        Symmetric (anything :func:`as_operator` accepts).
    V0 : torch.Tensor
        ``(P, b)`` start block (orthonormalised here).
    max_dim : int
        Largest basis (products); rounded down to a multiple of ``b``, at most ``P``.
    generator : torch.Generator, optional
        Source of fresh vectors when the Krylov space is exhausted.
    stop : callable, optional
        ``stop(partial_result) -> bool`` checked after every block step.

    Returns
    -------
    BlockLanczos
    """
    op = as_operator(op)
    gen = generator or torch.Generator().manual_seed(0)
    V0 = V0.reshape(op.size, -1)
    b = V0.shape[1]
    steps = max(1, min(int(max_dim), op.size) // b)
    m_max = steps * b
    Q = torch.zeros(op.size, m_max, device=op.device, dtype=op.dtype)
    T = np.zeros((m_max, m_max))
    block, _ = _orthonormal_columns(V0.to(device=op.device, dtype=op.dtype), Q[:, :0], gen, 1.0)
    for j in range(steps):
        lo, hi = j * b, (j + 1) * b
        Q[:, lo:hi] = block
        W = op.matmat(block)
        basis = Q[:, :hi]
        C = torch.zeros(hi, b, device=op.device, dtype=op.dtype)
        for _ in range(2):
            c = basis.T @ W
            W = W - basis @ c
            C = C + c
        T[:hi, lo:hi] = C.double().cpu().numpy()
        if not (np.isfinite(T[:hi, lo:hi]).all() and bool(torch.isfinite(W).all())):
            return BlockLanczos(np.full((hi, hi), np.nan), np.full((b, b), np.nan), Q[:, :hi], finite=False)
        scale = float(np.abs(T[:hi, :hi]).max())
        block, B = _orthonormal_columns(W, basis, gen, scale)
        Tj = T[:hi, :hi]
        result = BlockLanczos((Tj + Tj.T) / 2, B, Q[:, :hi])
        if j + 1 == steps or (stop is not None and stop(result)):
            return result
        T[hi:hi + b, lo:hi] = B
    raise AssertionError("unreachable")  # pragma: no cover


# Fewest Lanczos steps before the stopping rule is trusted. With 4, the digits cnn's centre once
# stopped after 9 HVPs on an eigenvalue of the cluster at 0 (lambda_min -0.0003 instead of -2.1);
# with 12, eight seeds all found it, at no extra cost (they needed 18-21 steps anyway).
MIN_ITER = 12

# Weight of the fresh random vector mixed into a warm start (relative to the unit warm vector).
# 0.1 let Lanczos settle on the neighbour's minimum direction before it had seen the new one.
WARM_NOISE = 0.3


def _converged(theta: np.ndarray, res: np.ndarray, tol: float) -> bool:
    """The stopping rule: every wanted residual ``res`` within ``tol`` times the spectrum's scale."""
    return bool(np.all(res <= tol * max(abs(theta[0]), abs(theta[-1]))))


def _check_lanczos_options(tol, max_iter, min_iter) -> tuple[float, int, int]:
    return (check_scalar(tol, "tol", float, min=0, max=1, include_min=False, include_max=False),
            check_scalar(max_iter, "max_iter", int, min=1), check_scalar(min_iter, "min_iter", int, min=1))


# -- extremes ------------------------------------------------------------------------------------
@dataclasses.dataclass(repr=False, eq=False)
class Extremes(Result):
    """The most negative and the largest eigenvalue, with the convergence reached.

    Unpacks as a pair: ``lo, hi = ls.hessian_extremes(ck, data)``.

    Attributes
    ----------
    lam_min, lam_max : float
        NaN where the operator's products were not finite.
    converged : bool
        Both extreme Ritz pairs met the stopping rule (see the module docstring).
    residuals : np.ndarray
        ``(2,)`` ``||H u - theta u||`` of the two Ritz pairs.
    tol : float
        The relative tolerance asked for.
    hvps : int
        Products (Hessian-vector products) used.
    vectors : np.ndarray
        ``(P, 2)`` unit Ritz vectors of ``lam_min`` and ``lam_max`` (for warm starts).
    meta : dict
        The operator's provenance (checkpoint, data, parameters, dtype) and the seed.
    """

    lam_min: float
    lam_max: float
    converged: bool
    residuals: np.ndarray
    tol: float
    hvps: int
    vectors: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2), np.float32))
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.lam_min, self.lam_max = _float(self.lam_min), _float(self.lam_max)
        self.converged, self.tol, self.hvps = bool(self.converged), float(self.tol), int(self.hvps)
        self.residuals = np.asarray(self.residuals, dtype=np.float64).reshape(2)

    @property
    def ratio(self) -> float:
        """``|lam_min / lam_max|`` (inf when ``lam_max`` is 0)."""
        return _ratio(self.lam_min, self.lam_max)

    def __iter__(self):
        return iter((self.lam_min, self.lam_max))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i):
        return (self.lam_min, self.lam_max)[i]

    def __eq__(self, other) -> bool:  # compares as the pair, as the tuple it used to be
        return tuple(self) == tuple(other) if isinstance(other, (tuple, list, Extremes)) else NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return (f"Extremes(lam_min={self.lam_min:.6g}, lam_max={self.lam_max:.6g}, ratio={self.ratio:.4g}, "
                f"converged={self.converged}, hvps={self.hvps})")


def _float(value) -> float:
    """A float field of a result; NaN, which a saved result's JSON holds as null, comes back as NaN."""
    return math.nan if value is None else float(value)


def _ratio(lo: float, hi: float) -> float:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return math.nan
    return abs(lo / hi) if hi != 0 else math.inf


def _extreme_residuals(run: Lanczos) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ritz values, Ritz vectors (of T) and the two extreme residuals of a single run."""
    theta, S = run.ritz(0)
    res = np.abs(run.beta[0, -1] * S[-1, [0, -1]])
    return theta, S, res


def extremes(op, *, tol: float = 1e-3, max_iter: int = 100, min_iter: int = MIN_ITER, v0=None,
             seed: int = 0) -> Extremes:
    """Smallest and largest eigenvalue of an operator by Lanczos (see :func:`lanczos_extremes`)."""
    tol, max_iter, min_iter = _check_lanczos_options(tol, max_iter, min_iter)
    op = as_operator(op)
    gen = torch.Generator().manual_seed(int(seed))
    start = _start(op.size, 1, gen)[:, 0]
    if v0 is not None:
        # A neighbour's Ritz vectors, plus a little of the random vector so that no eigen-direction
        # is missing from the Krylov space (a start inside an invariant subspace would stall there).
        warm = torch.as_tensor(np.asarray(v0.cpu() if torch.is_tensor(v0) else v0)).reshape(op.size, -1).double()
        warm = warm.sum(1)
        if bool(torch.isfinite(warm).all()) and float(warm.norm()) > 0:
            start = warm / warm.norm() + WARM_NOISE * start / start.norm()
    hvps0 = op.hvps
    min_iter = min(min_iter, op.size)

    def converged(run: Lanczos) -> bool:
        if run.steps < min_iter:
            return False
        theta, _, res = _extreme_residuals(run)
        return _converged(theta, res, tol)

    run = lanczos(op, start, max_iter, generator=gen, stop=converged)
    meta = {**op.meta(), "seed": int(seed), "max_iter": max_iter, "min_iter": min_iter}
    if not run.finite:
        return Extremes(math.nan, math.nan, False, [math.nan, math.nan], tol, op.hvps - hvps0,
                        np.full((op.size, 2), np.nan, np.float32), meta={**meta, "non_finite": True})
    theta, S, res = _extreme_residuals(run)
    vectors = run.Q[0].T @ torch.as_tensor(S[:, [0, -1]], device=op.device, dtype=op.dtype)
    return Extremes(theta[0], theta[-1], converged(run) or run.steps == op.size, res, tol, op.hvps - hvps0,
                    vectors.cpu().numpy(), meta=meta)


def lanczos_extremes(A, data=None, *, criterion=None, subset: int | None = None, seed: int = 0, params="all",
                     dtype: torch.dtype = torch.float32, batch_size: int | None = None, tol: float = 1e-3,
                     max_iter: int = 100, min_iter: int = MIN_ITER, v0=None) -> Extremes:
    """The most negative and the largest eigenvalue of a symmetric operator, or of a checkpoint's Hessian.

    Parameters
    ----------
    A : operator, tensor, scipy operator, Checkpoint, path or nn.Module
        See :func:`as_operator`: an operator is used as it is; a model's training objective
        (margins included) on ``data`` gives its Hessian.
    data : Dataset, str, (x, y) pair or DataLoader
        Data the objective is averaged over (with a model only).
    criterion : str or nn.Module, optional
        A loss replacing the checkpoint's own (for a plain ``nn.Module``: default cross-entropy).
    subset : int, optional
        Use a seeded random subset of this many samples.
    seed : int
        Seed of the subset and of Lanczos's random start vector.
    params : {"all", "matrices"} or list of str
        Parameters the Hessian is taken over (``"matrices"``: Li et al.'s weights-only choice).
    dtype : torch.dtype
        float32 (default) or float64.
    batch_size : int, optional
        Average the Hessian over batches of this size (default: one batch).
    tol : float
        Stop when both extreme Ritz residuals are below ``tol`` times the spectral radius
        estimate (see the module docstring). The default 1e-3 kept ratio errors below 0.002 on
        the shipped models; 1e-2 stops too early when ``lambda_min`` sits in a cluster.
    max_iter : int
        Maximum Lanczos steps (= products).
    min_iter : int
        Fewest steps before the stopping rule is trusted (guards against stopping on an
        interior eigenvalue of the cluster near 0 before ``lambda_min`` has been seen).
    v0 : array or tensor, optional
        ``(P,)`` or ``(P, k)`` warm start (e.g. Ritz vectors from a nearby point).

    Returns
    -------
    Extremes
        ``(lam_min, lam_max)`` with ``converged``, ``residuals``, ``hvps``, ``vectors``.

    Examples
    --------
    The extremes of a symmetric matrix (any operator works the same way; a checkpoint and its data
    give its Hessian):

    >>> import torch
    >>> from landscape.hessian import lanczos_extremes
    >>> ex = lanczos_extremes(torch.diag(torch.tensor([-1.0, 0.5, 2.0, 4.0], dtype=torch.float64)), tol=1e-8)
    >>> round(ex.lam_min, 6), round(ex.lam_max, 6), ex.converged
    (-1.0, 4.0, True)
    """
    op = as_operator(A, data, criterion=criterion, subset=subset, seed=seed, params=params, dtype=dtype,
                     batch_size=batch_size)
    return extremes(op, tol=tol, max_iter=max_iter, min_iter=min_iter, v0=v0, seed=seed)


def hessian_extremes(ck, data="digits", **kwargs) -> Extremes:
    """:func:`lanczos_extremes` of a checkpoint's Hessian (``data`` defaults to the digits test split).

    Every keyword of :func:`lanczos_extremes` applies (``criterion``, ``subset``, ``seed``,
    ``params``, ``dtype``, ``batch_size``, ``tol``, ``max_iter``, ``min_iter``, ``v0``); ``ck`` may
    also be any operator (then ``data`` is not used).
    """
    return lanczos_extremes(ck, data, **kwargs)


# -- top-k eigenpairs ----------------------------------------------------------------------------
@dataclasses.dataclass(repr=False)
class Eigenvalues(Result):
    """The ``k`` wanted eigenpairs of a symmetric operator (largest, smallest or both ends).

    Iterates, indexes and has a length like its ``values``.

    Attributes
    ----------
    values : np.ndarray
        ``(k,)`` eigenvalues: descending for ``which="LA"``, ascending for ``"SA"``, by
        decreasing magnitude for ``"LM"``; for ``"BE"`` the ``ceil(k/2)`` largest (descending)
        then the ``floor(k/2)`` smallest (ascending), so ``k = 2`` gives ``(lambda_max, lambda_min)``.
    vectors : np.ndarray
        ``(P, k)`` unit eigenvectors, each signed so that its largest-magnitude entry is positive.
    residuals : np.ndarray
        ``(k,)`` ``||A u - theta u||``.
    converged : bool
        All ``k`` residuals met the stopping rule (see the module docstring).
    which : str
    tol : float
    hvps : int
        Products used.
    meta : dict
    """

    values: np.ndarray
    vectors: np.ndarray
    residuals: np.ndarray
    converged: bool
    which: str
    tol: float
    hvps: int
    meta: dict = dataclasses.field(default_factory=dict)

    def __iter__(self):
        return iter(float(v) for v in self.values)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i):
        return self.values[i]

    def __repr__(self) -> str:
        vals = ", ".join(f"{v:.6g}" for v in self.values)
        return f"Eigenvalues(which={self.which!r}, values=[{vals}], converged={self.converged}, hvps={self.hvps})"


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    """Indices of the ``k`` wanted Ritz values in the order :class:`Eigenvalues` documents."""
    asc = np.argsort(theta, kind="stable")
    if which == "LA":
        return asc[::-1][:k]
    if which == "SA":
        return asc[:k]
    if which == "LM":
        return np.argsort(-np.abs(theta), kind="stable")[:k]
    top = (k + 1) // 2
    return np.concatenate([asc[::-1][:top], asc[:k - top]])


def _sign(vectors: torch.Tensor) -> torch.Tensor:
    """Flip each column so that its largest-magnitude entry is positive (a reproducible sign)."""
    idx = vectors.abs().argmax(0)
    signs = torch.sign(vectors[idx, torch.arange(vectors.shape[1], device=vectors.device)])
    return vectors * torch.where(signs == 0, torch.ones_like(signs), signs)


def eigenpairs(op, k: int = 5, which: str = "LA", *, tol: float = 1e-3, max_iter: int = 300,
               min_iter: int = MIN_ITER, block: int | None = None, seed: int = 0) -> Eigenvalues:
    """The ``k`` wanted eigenpairs of an operator by block Lanczos (see :func:`hessian_eigenvalues`)."""
    op = as_operator(op)
    k = check_scalar(k, "k", int, min=1, max=op.size)
    which = check_choice(which, "which", WHICH)
    tol, max_iter, min_iter = _check_lanczos_options(tol, max_iter, min_iter)
    b = check_scalar(k if block is None else block, "block", int, min=1, max=op.size)
    gen = torch.Generator().manual_seed(int(seed))
    hvps0 = op.hvps
    least = min(max(min_iter, k), op.size)

    def converged(run: BlockLanczos) -> bool:
        if run.dim < least:
            return False
        theta, _, res = run.ritz()
        return len(theta) >= k and _converged(theta, res[_select(theta, k, which)], tol)

    run = block_lanczos(op, _start(op.size, b, gen), max(max_iter, k), generator=gen, stop=converged)
    meta = {**op.meta(), "seed": int(seed), "k": k, "block": b, "max_iter": max_iter}
    if not run.finite or run.dim < k:
        return Eigenvalues(np.full(k, np.nan), np.full((op.size, k), np.nan, np.float32), np.full(k, np.nan), False,
                           which, tol, op.hvps - hvps0, meta={**meta, "non_finite": not run.finite})
    theta, S, res = run.ritz()
    chosen = _select(theta, k, which)
    vectors = _sign(run.Q @ torch.as_tensor(S[:, chosen], device=op.device, dtype=op.dtype))
    done = converged(run) or run.dim == op.size
    return Eigenvalues(theta[chosen], vectors.cpu().numpy(), res[chosen], done, which, tol, op.hvps - hvps0, meta=meta)


def hessian_eigenvalues(A, data=None, *, k: int = 5, which: str = "LA", criterion=None, subset: int | None = None,
                        seed: int = 0, params="all", dtype: torch.dtype = torch.float32,
                        batch_size: int | None = None, tol: float = 1e-3, max_iter: int = 300,
                        min_iter: int = MIN_ITER, block: int | None = None) -> Eigenvalues:
    """The top-``k`` (or bottom-``k``, or both ends) eigenpairs of a Hessian or of any symmetric operator.

    Block Lanczos (:func:`block_lanczos`, block size ``k``) with the stopping rule of the
    extremes applied to the ``k`` wanted Ritz pairs. PyHessian's ``eigenvalues(top_n=k)`` computes
    the top ones by power iteration with deflation (the tests compare the two).

    Parameters
    ----------
    A : operator, tensor, scipy operator, Checkpoint, path or nn.Module
        As in :func:`lanczos_extremes`.
    data : Dataset, str, (x, y) pair or DataLoader
        Data of the objective (with a model only).
    k : int
        Number of eigenpairs.
    which : {"LA", "SA", "BE", "LM"}
        Largest algebraic, smallest algebraic, both ends (half from each), largest magnitude.
    criterion, subset, seed, params, dtype, batch_size
        As in :func:`lanczos_extremes`.
    tol : float
        Relative tolerance of the residuals (to the spectrum's scale).
    max_iter : int
        Largest Krylov basis (= products).
    min_iter : int
        Fewest products before the stopping rule is trusted.
    block : int, optional
        Block size (default ``k``): the largest multiplicity of an eigenvalue that is found.

    Returns
    -------
    Eigenvalues
        ``values``, ``vectors`` ``(P, k)``, ``residuals``, ``converged``, ``hvps``.
    """
    op = as_operator(A, data, criterion=criterion, subset=subset, seed=seed, params=params, dtype=dtype,
                     batch_size=batch_size)
    return eigenpairs(op, k, which, tol=tol, max_iter=max_iter, min_iter=min_iter, block=block, seed=seed)


DIRECTION_SCALES = ("unit", "weights")


def hessian_directions(ck, data, k: int = 2, which: str = "LA", *, scale: str = "unit", criterion=None,
                       subset: int | None = None, seed: int = 0, params="all", dtype: torch.dtype = torch.float32,
                       batch_size: int | None = None, tol: float = 1e-3, max_iter: int = 300):
    """Directions along Hessian eigenvectors, for :func:`landscape.surface` and :func:`landscape.interpolate`.

    ``which="LA"`` gives the top-``k`` eigenvectors, ``"SA"`` the most negative ones and ``"BE"``
    both ends (with ``k = 2``: ``(v_max, v_min)``, the plane where a saddle shows). Along an
    eigenvector ``v`` with eigenvalue ``lambda`` the loss is ``L(theta* + t v) ~ L(theta*) + lambda
    t^2 / 2`` near the centre, so these planes show the curvature the ratio maps summarise.

    Parameters
    ----------
    ck : Checkpoint, path or nn.Module
        The centre.
    data : Dataset, str, (x, y) pair or DataLoader
        Data of the objective.
    k : int
        Number of directions.
    which : {"LA", "SA", "BE", "LM"}
        Which eigenvectors (see :class:`Eigenvalues` for their order).
    scale : {"unit", "weights"}
        ``"unit"``: unit-norm eigenvectors (``t`` is the Euclidean step); ``"weights"``: each scaled
        to the norm of the selected parameters, so that ``t = 1`` moves as far as a
        filter-normalised random direction does. Per-filter normalisation is not applied: it
        would make the vectors no longer eigenvectors.
    criterion, subset, seed, params, dtype, batch_size, tol, max_iter
        As in :func:`hessian_eigenvalues`. With ``params="matrices"`` (or a list) the entries of
        the other parameters are 0. An eigenvector is off by about its residual over the gap to
        the next eigenvalue: where the end of the spectrum is a cluster (a trained net's most
        negative eigenvalues often are), pass a tighter ``tol`` (1e-6) to pin the vector down.

    Returns
    -------
    landscape.directions.Directions
        ``meta``: ``kind="hessian"``, ``which``, ``eigenvalues``, ``residuals``, ``converged``,
        ``scale`` and the provenance of the Hessian.
    """
    from .directions import Directions

    scale = check_choice(scale, "scale", DIRECTION_SCALES)
    ck = as_checkpoint(ck, criterion=None if criterion in (None, "train") else criterion)
    op = as_operator(ck, data, subset=subset, seed=seed, params=params, dtype=dtype, batch_size=batch_size)
    ev = eigenpairs(op, k, which, tol=tol, max_iter=max_iter, seed=seed)
    hess = op.source
    named = list(ck.model.named_parameters())
    rows = []
    for v in torch.as_tensor(ev.vectors, dtype=torch.float64).T:  # each eigenvector, zeros outside the selection
        parts = hess.unflatten(v)
        rows.append(torch.cat([parts[n].reshape(-1).cpu() if n in parts else torch.zeros(p.numel(), dtype=v.dtype)
                               for n, p in named]).numpy())
    vectors = np.stack(rows)
    if scale == "weights":
        vectors *= float(torch.linalg.vector_norm(hess.parameters().double()))
    meta = {"kind": "hessian", "which": ev.which, "n": int(ev.values.size), "eigenvalues": ev.values.tolist(),
            "residuals": ev.residuals.tolist(), "converged": ev.converged, "hvps": ev.hvps, "scale": scale,
            "tol": ev.tol, "seed": int(seed), "norm": "none", "ignore": "none",
            **{key: v for key, v in op.meta().items() if key not in ("operator", "size")}}
    return Directions(vectors, [n for n, _ in named], [list(p.shape) for _, p in named], meta=meta)


# -- trace ---------------------------------------------------------------------------------------
@dataclasses.dataclass(repr=False)
class TraceEstimate(Result):
    """A stochastic estimate of ``tr(A)`` with its uncertainty.

    Attributes
    ----------
    trace : float
        The estimate: Hutchinson's mean of ``z^T A z``; Hutch++'s ``tr(Q^T A Q)`` plus the
        mean of ``g^T (I - QQ^T) A (I - QQ^T) g``.
    stderr : float
        Standard error (sample standard deviation of ``samples`` / sqrt of their number; for
        Hutch++ conditional on the low-rank part, which carries no sampling noise given ``Q``).
    n_probes : int
        Products spent on the estimate.
    samples : np.ndarray
        The individual quadratic forms whose mean is taken.
    interval : np.ndarray
        ``(2,)`` percentile-bootstrap interval of the estimate at ``confidence`` (NaN with one sample).
    confidence : float
    method : str
        ``"hutchinson"`` or ``"hutch++"``.
    low_rank : float
        Hutch++'s exact part ``tr(Q^T A Q)`` (0 for Hutchinson).
    meta : dict
    """

    trace: float
    stderr: float
    n_probes: int
    samples: np.ndarray
    interval: np.ndarray = dataclasses.field(default_factory=lambda: np.full(2, np.nan))
    confidence: float = 0.95
    method: str = "hutchinson"
    low_rank: float = 0.0
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.trace, self.stderr, self.low_rank = _float(self.trace), _float(self.stderr), _float(self.low_rank)

    def __repr__(self) -> str:
        lo, hi = (float(v) for v in self.interval)
        return (f"TraceEstimate(trace={self.trace:.6g} +- {self.stderr:.3g}, {100 * self.confidence:g}% interval "
                f"[{lo:.6g}, {hi:.6g}], {self.method}, {self.n_probes} probes)")


def _rademacher(size: int, k: int, seed: int) -> torch.Tensor:
    """``(size, k)`` float64 +-1 probes drawn on the CPU, so every device gets the same ones.

    Drawn probe by probe, so the first probes of a longer run are the probes of a shorter one.
    """
    gen = torch.Generator().manual_seed(int(seed))
    return (torch.randint(0, 2, (k, size), generator=gen, dtype=torch.int8).double() * 2 - 1).T


def bootstrap_interval(samples: np.ndarray, confidence: float = 0.95, n_boot: int = 2000,
                       seed: int = 0) -> np.ndarray:
    """Percentile-bootstrap interval of the mean of ``samples`` (resampled with a seeded generator).

    ``samples`` may be ``(n,)`` or ``(n, d)`` (an interval per column, ``(2, d)``). NaN for fewer
    than two samples.
    """
    x = np.asarray(samples, dtype=np.float64)
    if len(x) < 2 or not np.all(np.isfinite(x)):
        return np.full((2,) + x.shape[1:], np.nan)
    rng = np.random.default_rng(seed)
    means = np.concatenate([x[rng.integers(0, len(x), (n, len(x)))].mean(1)
                            for n in np.diff(np.r_[0:n_boot:256, n_boot])])
    return np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2], axis=0)


def trace(A, data=None, *, method: str = "hutchinson", n_probes: int = 100, seed: int = 0,
          confidence: float = 0.95, criterion=None, subset: int | None = None, params="all",
          dtype: torch.dtype = torch.float32, batch_size: int | None = None, block: int = 25) -> TraceEstimate:
    """Stochastic trace of a symmetric operator or of a checkpoint's Hessian: Hutchinson or Hutch++.

    Hutchinson: ``tr(A) = E[z^T A z]`` for Rademacher probes ``z``, variance ``2 (||A||_F^2 -
    sum A_ii^2) / n``. Hutch++ (Meyer, Musco, Musco & Woodruff 2021): a third of the products
    find the dominant subspace ``Q = orth(A S)``, whose trace ``tr(Q^T A Q)`` is exact, and the
    rest estimate the remainder by Hutchinson on ``(I - QQ^T) A (I - QQ^T)``; with a few large
    outlier eigenvalues (a trained classifier's Hessian) its error is far smaller for the same
    products. Written here (no maintained library takes torch operators); tested against the
    dense trace.

    Parameters
    ----------
    A : operator, tensor, scipy operator, Checkpoint, path or nn.Module
        As in :func:`lanczos_extremes`.
    data : Dataset, str, (x, y) pair or DataLoader
        Data of the objective (with a model only).
    method : {"hutchinson", "hutch++"}
    n_probes : int
        Products in all (Hutch++ needs at least 3).
    seed : int
        Seed of the probes, the subset and the bootstrap.
    confidence : float
        Level of the bootstrap interval.
    criterion, subset, params, dtype, batch_size
        As in :func:`lanczos_extremes`.
    block : int
        Probes pushed through the operator together.

    Returns
    -------
    TraceEstimate
    """
    method = check_choice(method, "method", TRACE_METHODS)
    n_probes = check_scalar(n_probes, "n_probes", int, min=3 if method == "hutch++" else 1)
    confidence = check_scalar(confidence, "confidence", float, min=0, max=1, include_min=False, include_max=False)
    block = check_scalar(block, "block", int, min=1)
    op = as_operator(A, data, criterion=criterion, subset=subset, seed=seed, params=params, dtype=dtype,
                     batch_size=batch_size)
    hvps0 = op.hvps
    low_rank = 0.0
    if method == "hutchinson":
        Z = _rademacher(op.size, n_probes, seed).to(device=op.device, dtype=op.dtype)
    else:
        k = n_probes // 3
        probes = _rademacher(op.size, n_probes - k, seed).to(device=op.device, dtype=op.dtype)
        S, G = probes[:, :k], probes[:, k:]
        AS = op.matmat(S, block)
        if not bool(torch.isfinite(AS).all()):
            return _non_finite_trace(op, method, n_probes, confidence, seed)
        Q = torch.linalg.qr(AS.double())[0].to(op.dtype)
        low_rank = float((Q * op.matmat(Q, block)).sum())
        Z = G - Q @ (Q.T @ G)
    samples = (Z * op.matmat(Z, block)).sum(0).double().cpu().numpy()
    n = len(samples)
    stderr = float(samples.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    meta = {**op.meta(), "seed": int(seed), "hvps": op.hvps - hvps0}
    return TraceEstimate(low_rank + float(samples.mean()), stderr, n_probes, samples,
                         low_rank + bootstrap_interval(samples, confidence, seed=seed), confidence, method, low_rank,
                         meta)


def _non_finite_trace(op: Operator, method: str, n_probes: int, confidence: float, seed: int) -> TraceEstimate:
    return TraceEstimate(math.nan, math.nan, n_probes, np.full(0, np.nan), np.full(2, np.nan), confidence, method,
                         math.nan, {**op.meta(), "seed": int(seed), "non_finite": True})


def hessian_trace(ck, data="digits", **kwargs) -> TraceEstimate:
    """:func:`trace` of a checkpoint's Hessian (``data`` defaults to the digits test split).

    Every keyword of :func:`trace` applies (``method``, ``n_probes``, ``seed``, ``confidence``,
    ``criterion``, ``subset``, ``params``, ``dtype``, ``batch_size``, ``block``).
    """
    return trace(ck, data, **kwargs)


# -- spectral density ----------------------------------------------------------------------------
@dataclasses.dataclass(repr=False)
class Density(Result):
    """Spectral density of a symmetric operator (a Hessian) by stochastic Lanczos quadrature.

    Attributes
    ----------
    nodes : np.ndarray
        ``(n_probes, steps)`` Ritz values of each probe's Lanczos run (quadrature nodes).
    weights : np.ndarray
        ``(n_probes, steps)`` quadrature weights (squared first components of the Ritz vectors;
        each row sums to 1).
    grid : np.ndarray
        ``(G,)`` eigenvalue axis of the smoothed density.
    density : np.ndarray
        ``(G,)`` ``mean_probes sum_j weights_j N(grid; nodes_j, sigma^2)``; integrates to ~1.
    sigma : float
        Width of the Gaussian smoothing.
    meta : dict
        Checkpoint, data, probes, steps, seed, parameter selection, ``size`` (``P``).
    """

    nodes: np.ndarray
    weights: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    sigma: float = 0.0
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.sigma = _float(self.sigma)

    def _per_probe(self, p: int, size: int | None) -> np.ndarray:
        size = size or int(self.meta["size"])
        absent = (self.weights == 0) & ~np.isfinite(self.nodes)  # padding (see smooth_density)
        return size * np.where(absent, 0.0, self.weights * self.nodes ** int(p)).sum(1)

    def moment(self, p: int = 1, size: int | None = None) -> float:
        """``tr(A^p)`` implied by the quadrature: ``P * mean_probes sum_j w_j theta_j^p``.

        Unbiased for every ``p`` (Gaussian probes are uniform on the sphere after normalising),
        and exact per probe for ``p < 2 * steps`` (Gauss quadrature).
        """
        return float(self._per_probe(p, size).mean())

    def moment_interval(self, p: int = 1, confidence: float = 0.95, seed: int = 0,
                        size: int | None = None) -> np.ndarray:
        """Percentile-bootstrap interval of :meth:`moment` over the probes (NaN with one probe)."""
        return bootstrap_interval(self._per_probe(p, size), confidence, seed=seed)

    def trace(self, size: int | None = None) -> float:
        """``tr(A)`` implied by the quadrature (:meth:`moment` with ``p = 1``)."""
        return self.moment(1, size)


def smooth_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smoothed quadrature measure, averaged over probes (rows).

    Entries with weight 0 and a non-finite node are padding (absent); any other non-finite
    entry makes the density NaN.
    """
    nodes, weights = np.asarray(nodes, np.float64), np.asarray(weights, np.float64)
    absent = (weights == 0) & ~np.isfinite(nodes)
    z = (grid[None, None, :] - np.where(absent, 0.0, nodes)[:, :, None]) / sigma
    kernel = np.exp(-0.5 * z ** 2) / (sigma * math.sqrt(2 * math.pi))
    return (np.where(absent, 0.0, weights)[:, :, None] * kernel).sum(1).mean(0)


def _slq(op: Operator, n_probes: int, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes and weights ``(n_probes, steps')`` of ``n_probes`` Gaussian probes (NaN if not finite)."""
    gen = torch.Generator().manual_seed(int(seed))
    run = lanczos(op, _start(op.size, n_probes, gen), steps, generator=gen)
    nodes, weights = np.empty((n_probes, run.steps)), np.empty((n_probes, run.steps))
    for i in range(n_probes):
        nodes[i], S = run.ritz(i)
        weights[i] = S[0] ** 2
    return nodes, weights


def _density_axis(nodes: np.ndarray, weights: np.ndarray, sigma: float | None,
                  grid_size: int) -> tuple[np.ndarray, float]:
    """Eigenvalue axis (the nodes plus 5 sigma each side) and sigma (default 1% of the nodes' width), or NaN."""
    finite = nodes[np.isfinite(nodes)]
    if finite.size == 0 or not np.all(np.isfinite(weights)):
        return np.full(grid_size, np.nan), math.nan if sigma is None else float(sigma)
    width = float(finite.max() - finite.min())
    sigma = float(sigma) if sigma is not None else max(0.01 * width, 1e-12 * max(1.0, float(np.abs(finite).max())))
    return np.linspace(finite.min() - 5 * sigma, finite.max() + 5 * sigma, int(grid_size)), sigma


def _smoothed(nodes: np.ndarray, weights: np.ndarray, axis_: np.ndarray, sigma: float) -> np.ndarray:
    """:func:`smooth_density`, or NaN on a NaN axis (products that were not finite)."""
    if not (np.all(np.isfinite(axis_)) and math.isfinite(sigma)):
        return np.full(len(axis_), np.nan)
    return smooth_density(nodes, weights, axis_, sigma)


def spectral_density(ck, data="digits", *, n_probes: int = 4, steps: int = 80, seed: int = 0, criterion=None,
                     subset: int | None = None, params="all", dtype: torch.dtype = torch.float32,
                     batch_size: int | None = None, sigma: float | None = None, grid_size: int = 1000) -> Density:
    """Spectral density of a symmetric operator or of a checkpoint's Hessian by stochastic Lanczos quadrature.

    Each Gaussian probe ``v`` runs ``steps`` Lanczos steps (full reorthogonalisation); the
    eigenpairs ``(theta_j, s_j)`` of the tridiagonal give the Gauss quadrature of
    ``v^T f(H) v / |v|^2`` with nodes ``theta_j`` and weights ``s_j[0]^2``. Averaging over probes
    and smoothing each node with a Gaussian gives the density (Ghorbani, Krishnan & Xiao 2019).
    Written here rather than taken from pyhessian, whose ``density()`` calls a function removed
    from torch. The density integrates to 1 and its moments (:meth:`Density.moment`) are unbiased
    estimates of ``tr(H^p)``, within their bootstrap intervals of Hutchinson's estimates.

    Parameters
    ----------
    ck : operator, tensor, scipy operator, Checkpoint, path or nn.Module
        As in :func:`lanczos_extremes` (``data`` is not used with an operator).
    data : Dataset, str, (x, y) pair or DataLoader
    n_probes : int
        Independent probes (run side by side, ``n_probes * steps`` products in all).
    steps : int
        Lanczos steps per probe (at most ``P``).
    seed : int
        Seed of the probes (and of the subset).
    criterion, subset, params, dtype, batch_size
        As in :func:`lanczos_extremes`.
    sigma : float, optional
        Gaussian width; default 1% of the spectrum's width ``max(theta) - min(theta)``.
    grid_size : int
        Points of the eigenvalue axis, which spans the nodes plus 5 sigma each side.

    Returns
    -------
    Density
        NaN (with ``meta["non_finite"]``) where the products were not finite.
    """
    n_probes = check_scalar(n_probes, "n_probes", int, min=1)
    steps = check_scalar(steps, "steps", int, min=1)
    grid_size = check_scalar(grid_size, "grid_size", int, min=2)
    sigma = check_scalar(sigma, "sigma", float, min=0, include_min=False, allow_none=True)
    op = as_operator(ck, data, criterion=criterion, subset=subset, seed=seed, params=params, dtype=dtype,
                     batch_size=batch_size)
    nodes, weights = _slq(op, n_probes, steps, seed)
    axis_, sigma = _density_axis(nodes, weights, sigma, grid_size)
    density = _smoothed(nodes, weights, axis_, sigma)
    meta = {**op.meta(), "n_probes": n_probes, "steps": nodes.shape[1], "seed": int(seed)}
    if not np.all(np.isfinite(density)):
        meta["non_finite"] = True
        warnings.warn("the operator's products are not finite (NaN/inf weights or a diverged loss); the spectral "
                      "density is NaN.", RuntimeWarning, stacklevel=2)
    return Density(nodes, weights, axis_, density, sigma, meta)


# -- per-layer spectra ---------------------------------------------------------------------------
def parameter_groups(model, groups="layer") -> dict[str, list[str]]:
    """Named groups of trainable parameters, in the order of ``model.named_parameters()`` (depth order).

    Parameters
    ----------
    model : nn.Module
    groups : "layer", "parameter", sequence of patterns, or mapping of name to pattern(s)
        ``"layer"``: the parameters of each module together (``fc1.weight`` and ``fc1.bias`` are
        group ``fc1``); ``"parameter"``: each parameter tensor alone; a list of ``fnmatch``
        patterns (``["body.1.*", "head.*"]``): one group per pattern, named by it; a mapping
        ``{"encoder": ["conv*", "bn*"], ...}``: one group per entry. Groups may overlap.

    Returns
    -------
    dict of str to list of str
    """
    named = [n for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ArgumentError(f"{type(model).__name__} has no trainable parameters.")
    if isinstance(groups, str):
        check_choice(groups, "groups", ("layer", "parameter"))
        out: dict[str, list[str]] = {}
        for n in named:
            key = n if groups == "parameter" else (n.rsplit(".", 1)[0] if "." in n else n)
            out.setdefault(key, []).append(n)
        return out
    items = groups.items() if isinstance(groups, Mapping) else ((str(g), g) for g in groups)
    out = {}
    for name, patterns in items:
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        chosen = [n for n in named if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
        if not chosen:
            raise ArgumentError(f"group {name!r} ({', '.join(map(repr, patterns))}) matches no trainable parameter."
                                f"{did_you_mean(patterns[0], named)}")
        out[str(name)] = chosen
    if not out:
        raise ArgumentError("groups is empty; give 'layer', 'parameter', a list of name patterns or a mapping.")
    return out


@dataclasses.dataclass(repr=False)
class LayerSpectra(Result):
    """Per parameter group (layer), the extremes, trace and spectral density of its Hessian block.

    The block of group ``g`` is ``H_gg``, the Hessian of the objective with respect to that
    group's parameters with all others held at the checkpoint's values.

    Attributes
    ----------
    names : list of str
        Group names, in depth order.
    params : list of list of str
        Parameter names of each group.
    sizes : np.ndarray
        ``(G,)`` block dimensions.
    lam_min, lam_max : np.ndarray
        ``(G,)`` extreme eigenvalues of each block (Lanczos).
    converged : np.ndarray
        ``(G,)`` bool, both extremes met the stopping rule.
    trace, trace_stderr : np.ndarray
        ``(G,)`` Hutchinson's trace of each block and its standard error.
    nodes, weights : np.ndarray
        ``(G, n_probes, steps)`` SLQ quadrature of each block (a block smaller than ``steps`` is
        padded with NaN nodes of weight 0).
    grid : np.ndarray
        ``(grid_size,)`` one eigenvalue axis for every block (all nodes plus 5 sigma each side).
    density : np.ndarray
        ``(G, grid_size)`` each block's smoothed density on that axis (each integrates to ~1).
    sigma : float
        One smoothing width for every block (default 1% of the width of all blocks' nodes), so
        the blocks' densities compare on one axis at one resolution.
    hvps : np.ndarray
        ``(G,)`` products spent per block.
    meta : dict
    """

    names: list
    params: list
    sizes: np.ndarray
    lam_min: np.ndarray
    lam_max: np.ndarray
    converged: np.ndarray
    trace: np.ndarray
    trace_stderr: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    sigma: float
    hvps: np.ndarray
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.sigma = _float(self.sigma)

    def group(self, g: int | str) -> Density:
        """Group ``g`` (index or name) as a :class:`Density` (for :func:`viz.spectral_density`)."""
        i = self.names.index(g) if isinstance(g, str) else int(g)
        keep = ~((self.weights[i] == 0) & ~np.isfinite(self.nodes[i]))
        cols = keep.any(0)
        meta = {**self.meta, "size": int(self.sizes[i]), "group": self.names[i], "params": list(self.params[i]),
                "steps": int(cols.sum())}
        return Density(self.nodes[i][:, cols], self.weights[i][:, cols], self.grid, self.density[i], float(self.sigma),
                       meta)

    def table(self) -> list[dict]:
        """One row per group: name, size, lam_min, lam_max, trace, trace_stderr."""
        return [{"group": n, "size": int(s), "lam_min": float(lo), "lam_max": float(hi), "trace": float(t),
                 "trace_stderr": float(e)}
                for n, s, lo, hi, t, e in zip(self.names, self.sizes, self.lam_min, self.lam_max, self.trace,
                                              self.trace_stderr)]


def layer_spectra(ck, data, *, groups="layer", criterion=None, subset: int | None = None, seed: int = 0,
                  dtype: torch.dtype = torch.float32, batch_size: int | None = None, tol: float = 1e-3,
                  max_iter: int = 100, trace_probes: int = 100, trace_method: str = "hutchinson",
                  n_probes: int = 4, steps: int = 60, sigma: float | None = None, grid_size: int = 500,
                  verbose: bool | None = None) -> LayerSpectra:
    """Per-layer Hessian spectra: ``lambda_min``, ``lambda_max``, trace and SLQ density of each block ``H_gg``.

    Parameters
    ----------
    ck : Checkpoint, path or nn.Module
    data : Dataset, str, (x, y) pair or DataLoader
    groups : "layer", "parameter", list of patterns or mapping
        See :func:`parameter_groups`.
    criterion, subset, seed, dtype, batch_size
        As in :func:`lanczos_extremes`.
    tol, max_iter
        Of the extremes (:func:`lanczos_extremes`).
    trace_probes, trace_method
        Of the trace (:func:`trace`).
    n_probes, steps, sigma, grid_size
        Of the densities (:func:`spectral_density`); ``steps`` is capped at each block's size,
        where the quadrature becomes exact. One axis and one ``sigma`` serve every block.
    verbose : bool or None
        Progress over the groups; False is silent.

    Returns
    -------
    LayerSpectra
    """
    ck = as_checkpoint(ck, criterion=None if criterion in (None, "train") else criterion)
    dataset = as_dataset(data, check_scalar(subset, "subset", int, min=1, allow_none=True), seed)
    named = parameter_groups(ck.model, groups)
    steps = check_scalar(steps, "steps", int, min=1)
    n_probes = check_scalar(n_probes, "n_probes", int, min=1)
    rows = []
    with progress_bar(len(named), "layer spectra", verbose, unit="group") as bar:
        for name, params in named.items():
            op = as_operator(ck, dataset, params=params, dtype=dtype, batch_size=batch_size)
            ext = extremes(op, tol=tol, max_iter=max_iter, seed=seed)
            tr = trace(op, method=trace_method, n_probes=trace_probes, seed=seed)
            nodes, weights = _slq(op, n_probes, steps, seed)
            rows.append((name, params, op.size, ext, tr, nodes, weights, op.hvps))
            bar.update(1)
    width = max(r[5].shape[1] for r in rows)

    def pad(a: np.ndarray, fill: float) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill)

    nodes = np.stack([pad(r[5], np.nan) for r in rows])
    weights = np.stack([pad(r[6], 0.0) for r in rows])
    axis_, sigma = _density_axis(nodes, weights, sigma, grid_size)  # one axis and width for all blocks
    density = np.stack([_smoothed(n, w, axis_, sigma) for n, w in zip(nodes, weights)])

    meta = {**_provenance(ck, dataset), "dtype": str(dtype).replace("torch.", ""), "batch_size": batch_size,
            "groups": groups if isinstance(groups, str) else "patterns", "seed": int(seed), "tol": tol,
            "max_iter": max_iter, "trace_probes": trace_probes, "trace_method": trace_method, "n_probes": n_probes,
            "steps": steps}
    return LayerSpectra(
        [r[0] for r in rows], [list(r[1]) for r in rows], np.array([r[2] for r in rows], np.int64),
        np.array([r[3].lam_min for r in rows]), np.array([r[3].lam_max for r in rows]),
        np.array([r[3].converged for r in rows]), np.array([r[4].trace for r in rows]),
        np.array([r[4].stderr for r in rows]), nodes, weights, axis_, density, float(sigma),
        np.array([r[7] for r in rows], np.int64), meta)


# -- eigenvalue-ratio maps -----------------------------------------------------------------------
@dataclasses.dataclass(repr=False)
class EigenMap(Result):
    """Extreme Hessian eigenvalues over a 2D grid of a plane through the weights (seed 002 Fig. 4.5).

    Attributes
    ----------
    x, y : np.ndarray
        ``(nx,)`` and ``(ny,)`` coordinates along the two directions.
    lam_min, lam_max : np.ndarray
        ``(ny, nx)`` smallest and largest eigenvalue; ``[j, i]`` is at ``(x[i], y[j])``; NaN where
        the Hessian is not finite (counted in ``meta["non_finite"]``).
    ratio : np.ndarray
        ``(ny, nx)`` ``|lam_min / lam_max|``: near 0 where the surface is locally convex, large
        where there is strong negative curvature.
    loss : np.ndarray
        ``(ny, nx)`` training-objective loss on the same data (free with the HVPs).
    hvps : np.ndarray
        ``(ny, nx)`` Hessian-vector products spent per point.
    residuals : np.ndarray
        ``(2, ny, nx)`` Ritz residuals of ``lam_min`` and ``lam_max``.
    converged : np.ndarray
        ``(ny, nx)`` bool, the stopping rule was met within ``max_iter``.
    directions : np.ndarray
        ``(2, P)`` the direction vectors (layout in ``meta["directions"]``).
    meta : dict
        Checkpoint, data, seed, grid, tolerance, parameter selection, directions' meta;
        ``centre``: the extremes at the plane's centre ``(0, 0)`` (computed there when the grid
        does not contain it); ``non_finite``: points whose Hessian was not finite.
    """

    x: np.ndarray
    y: np.ndarray
    lam_min: np.ndarray
    lam_max: np.ndarray
    ratio: np.ndarray
    loss: np.ndarray
    hvps: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    directions: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.float32))
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def centre(self) -> dict | None:
        """``meta["centre"]`` with NaN where a value is missing (JSON stores NaN as null); None if not recorded."""
        c = self.meta.get("centre")
        if not c:
            return None
        return {**c, **{k: math.nan if c.get(k) is None else float(c[k]) for k in ("lam_min", "lam_max", "ratio",
                                                                                  "loss")}}


def snake_order(nx: int, ny: int) -> np.ndarray:
    """``(nx * ny, 2)`` grid indices ``(i, j)`` row by row, every other row reversed.

    Consecutive points are always grid neighbours, so a warm start from the previous point
    starts from nearby curvature.
    """
    rows = [[(i, j) for i in (range(nx) if j % 2 == 0 else reversed(range(nx)))] for j in range(ny)]
    return np.array([p for row in rows for p in row], dtype=np.int64).reshape(-1, 2)


_MAP_FIELDS = ("lam_min", "lam_max", "loss", "hvps", "res_min", "res_max", "converged")


def _point(op: HessianOperator, ext: Extremes) -> tuple:
    """One map point's values, in the order of ``_MAP_FIELDS``."""
    return (ext.lam_min, ext.lam_max, op.loss(), ext.hvps, *ext.residuals, ext.converged)


def _map_chunk(op: HessianOperator, model, dirs, *, tol: float, max_iter: int, seed: int, warm_start: bool):
    """``evaluate`` for :func:`landscape.grid.run_grid`: one chunk of points, warm-started in order.

    The first point of a chunk starts cold, so a chunk's values never depend on earlier chunks
    and a resumed or sharded run equals an uninterrupted one. A point whose Hessian is not finite
    is NaN and the next point starts cold.
    """
    from .directions import offset_parameters

    def evaluate(indices: np.ndarray, coords: np.ndarray) -> dict[str, np.ndarray]:
        rows, prev = [], None
        for index, c in zip(indices, coords):
            here = op.at(offset_parameters(model, dirs, c))
            ext = extremes(here, tol=tol, max_iter=max_iter, seed=seed + int(index),
                           v0=prev.vectors if (warm_start and prev is not None) else None)
            rows.append(_point(here, ext))
            prev = ext if math.isfinite(ext.lam_min) else None
        return dict(zip(_MAP_FIELDS, np.array(rows, dtype=np.float64).T))

    return evaluate


def _centre(op: HessianOperator, xs: np.ndarray, ys: np.ndarray, values: dict, *, tol: float, max_iter: int,
            seed: int) -> dict:
    """The extremes at the plane's centre ``(0, 0)``: the grid's own point there, else computed at the centre."""
    i, j = np.flatnonzero(xs == 0.0), np.flatnonzero(ys == 0.0)
    if i.size and j.size:
        row = {f: values[f][j[0], i[0]] for f in ("lam_min", "lam_max", "loss", "hvps", "converged")}
        on_grid = True
    else:
        ext = extremes(op, tol=tol, max_iter=max_iter, seed=seed)
        row = dict(zip(_MAP_FIELDS, _point(op, ext)))
        on_grid = False
    out = {f: float(row[f]) for f in ("lam_min", "lam_max", "loss")}
    out.update(ratio=_ratio(out["lam_min"], out["lam_max"]), hvps=int(row["hvps"]), converged=bool(row["converged"]),
               on_grid=on_grid)
    return out


def eigen_ratio_map(ck, data="digits", dirs=None, x=(-1.0, 1.0, 11), y=(-1.0, 1.0, 11), *,
                    criterion=None, subset: int | None = None, seed: int = 0, params="all",
                    dtype: torch.dtype = torch.float32, batch_size: int | None = None, tol: float = 1e-3,
                    max_iter: int = 100, warm_start: bool = True, out=None, resume: bool = False,
                    overwrite: bool = False, chunk_size: int = 16, verbose: bool | None = None,
                    progress: bool | None = None) -> EigenMap:
    """``lam_min``, ``lam_max`` and ``|lam_min / lam_max|`` of the Hessian over a plane of directions.

    Parameters
    ----------
    ck : Checkpoint, path or nn.Module
        The centre ``theta*``; its model is left unchanged.
    data : Dataset, str, (x, y) pair or DataLoader
        Data of the objective (a spec string loads its test split).
    dirs : Directions, optional
        Two directions; default ``random_directions(ck.model, 2, seed)`` (filter-normalised,
        biases and batchnorm zeroed), the same as :func:`landscape.surface` draws.
    x, y : (lo, hi, n) or array
        Grid coordinates along ``d1`` and ``d2`` (a one-point axis is the centre).
    criterion : str or nn.Module, optional
        A loss replacing the checkpoint's own.
    subset : int, optional
        Use a seeded random subset of this many samples.
    seed : int
        Seed of the directions (when drawn here), the subset and the cold Lanczos starts.
    params, dtype, batch_size, tol, max_iter
        As in :func:`lanczos_extremes`.
    warm_start : bool
        Start each point's Lanczos from the previous point's two Ritz vectors (within a chunk;
        points are visited in snake order so the previous point is a grid neighbour).
    out : path, optional
        Save the map there (``.npz``); progress is flushed beside it chunk by chunk.
    resume : bool
        Continue an interrupted run with the same ``out``; a finished map there from the same
        run is loaded, not recomputed. Progress made under another CPU thread count is refused
        (the values differ in the last digits).
    overwrite : bool
        Compute again and replace a finished map (and any progress) at ``out``; without it, and
        without ``resume``, a finished map there is an error.
    chunk_size : int
        Points per flushed chunk (and per rank under torch.distributed).
    verbose : bool or None
        Progress (see :mod:`landscape.progress`); False is silent. ``progress`` is its older name.

    Returns
    -------
    EigenMap
        ``ratio[j, i]`` at ``(x[i], y[j])``, identical on every rank.
    """
    tol, max_iter, _ = _check_lanczos_options(tol, max_iter, MIN_ITER)
    chunk_size = check_scalar(chunk_size, "chunk_size", int, min=1)
    subset = check_scalar(subset, "subset", int, min=1, allow_none=True)
    ck = as_checkpoint(ck, criterion=None if criterion in (None, "train") else criterion)
    ck, data, dirs, xs, ys = plane_setup(ck, data, dirs, x, y, subset, seed, "an eigenvalue map")
    order = snake_order(len(xs), len(ys))
    points = np.stack([xs[order[:, 0]], ys[order[:, 1]]], axis=1)
    op = HessianOperator.from_checkpoint(ck, data, params=params, dtype=dtype, batch_size=batch_size)
    out = grid.result_path(out)
    threads = torch.get_num_threads() if op.device.type == "cpu" else None
    fingerprint = plane_fingerprint(ck, data, dirs, points, "eigen_ratio_map", params=op.names, dtype=str(dtype),
                                    batch_size=batch_size, tol=tol, max_iter=max_iter, min_iter=MIN_ITER, seed=seed,
                                    warm_start=warm_start, chunk_size=chunk_size,
                                    criterion=str(ck.meta.get("loss") or "ce"),
                                    loss_kwargs=ck.meta.get("loss_kwargs") or {}, device=op.device.type,
                                    threads=threads)
    done = grid.reuse_finished(out, fingerprint, EigenMap.load, resume=resume, overwrite=overwrite,
                               what="eigenvalue map")
    if done is not None:
        return done
    evaluate = _map_chunk(op, ck.model, dirs, tol=tol, max_iter=max_iter, seed=seed, warm_start=warm_start)
    values = grid.run_grid(points, evaluate, {f: () for f in _MAP_FIELDS}, out=out, fingerprint=fingerprint,
                           resume=resume, overwrite=overwrite, chunk_size=chunk_size,
                           progress=progress_choice(verbose, progress), desc="hessian")
    shape = (len(ys), len(xs))

    def unsnake(v: np.ndarray) -> np.ndarray:
        a = np.empty(shape)
        a[order[:, 1], order[:, 0]] = v
        return a

    values = {f: unsnake(v) for f, v in values.items()}
    lo, hi = values["lam_min"], values["lam_max"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(lo / hi)
    non_finite = int((~np.isfinite(lo) | ~np.isfinite(hi)).sum())
    centre = _centre(op, xs, ys, values, tol=tol, max_iter=max_iter, seed=seed)
    emap = EigenMap(xs, ys, lo, hi, ratio, values["loss"], values["hvps"].astype(np.int64),
                    np.stack([values["res_min"], values["res_max"]]), values["converged"].astype(bool), dirs.vectors,
                    plane_meta(ck, data, dirs, seed, grid=[len(xs), len(ys)],
                               x_range=[float(xs[0]), float(xs[-1])], y_range=[float(ys[0]), float(ys[-1])],
                               tol=tol, max_iter=max_iter, params=params if isinstance(params, str) else list(params),
                               dtype=str(dtype).replace("torch.", ""), criterion=str(ck.meta.get("loss") or "ce"),
                               warm_start=warm_start, centre=centre, non_finite=non_finite, threads=threads,
                               fingerprint=grid.fingerprint_digest(fingerprint)))
    if non_finite:
        warnings.warn(f"{non_finite} of {lo.size} points of the eigenvalue map have a non-finite Hessian (the loss "
                      "diverges there or the weights are not finite); they are NaN.", RuntimeWarning, stacklevel=2)
    grid.save_result(emap, out)
    return emap

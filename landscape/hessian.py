"""Hessian curvature: extreme eigenvalues, eigenvalue-ratio maps, trace and spectral density.

Everything here works through :class:`~landscape.hvp.HessianOperator` (Hessian-vector products)
and one Lanczos iteration with full reorthogonalisation (:func:`lanczos`):

* :func:`hessian_extremes` -- the most negative and the largest eigenvalue, with the
  convergence reached (seed 002 Fig. 4.5 uses ``|lambda_min / lambda_max|``);
* :func:`eigen_ratio_map` -- both extremes and their ratio over a plane of directions, on the
  grid engine of surfaces (chunked, resumable, sharded), each point warm-started from its
  neighbour's Ritz vectors;
* :func:`hessian_trace` -- Hutchinson's estimator with Rademacher probes;
* :func:`spectral_density` -- stochastic Lanczos quadrature (Ghorbani et al. 2019).

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
against dense Hessians (``landscape bench hessian``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import numpy as np
import torch

from . import grid
from .checkpoint import as_checkpoint
from .data import as_dataset
from .errors import ArgumentError
from .hvp import HessianError, HessianOperator, select_parameters
from .progress import choice as progress_choice
from .plane import plane_fingerprint, plane_meta, plane_setup
from .results import Result

__all__ = ["HessianOperator", "HessianError", "Extremes", "TraceEstimate", "EigenMap", "Density", "lanczos",
           "hessian_extremes", "eigen_ratio_map", "hessian_trace", "spectral_density", "select_parameters"]


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
    """

    alpha: np.ndarray
    beta: np.ndarray
    Q: torch.Tensor

    @property
    def steps(self) -> int:
        return self.alpha.shape[1]

    def ritz(self, i: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (ascending) and eigenvectors of run ``i``'s tridiagonal ``T``."""
        from scipy.linalg import eigh_tridiagonal

        return eigh_tridiagonal(self.alpha[i], self.beta[i, :-1])


def _orthogonalise(w: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """Remove from each row of ``w`` (k, P) its components along ``Q`` (k, m, P), twice.

    Twice is enough ("twice is enough", Parlett): one classical Gram-Schmidt pass loses
    orthogonality in float32 after a few dozen steps, and the extreme Ritz values then repeat.
    """
    for _ in range(2):
        w = w - torch.einsum("km,kmp->kp", torch.einsum("kmp,kp->km", Q, w), Q)
    return w


def lanczos(op: HessianOperator, V0: torch.Tensor, steps: int, *, generator: torch.Generator | None = None,
            stop: Callable[[Lanczos], bool] | None = None) -> Lanczos:
    """Lanczos with full reorthogonalisation for ``k`` start vectors at once.

    Parameters
    ----------
    op : HessianOperator
        The symmetric operator (``k`` HVPs per step, batched through :meth:`HessianOperator.matmat`).
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
    """
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


# Fewest Lanczos steps before the stopping rule is trusted. With 4, the digits cnn's centre once
# stopped after 9 HVPs on an eigenvalue of the cluster at 0 (lambda_min -0.0003 instead of -2.1);
# with 12, eight seeds all found it, at no extra cost (they needed 18-21 steps anyway).
MIN_ITER = 12

# Weight of the fresh random vector mixed into a warm start (relative to the unit warm vector).
# 0.1 let Lanczos settle on the neighbour's minimum direction before it had seen the new one.
WARM_NOISE = 0.3


# -- extremes ------------------------------------------------------------------------------------
class Extremes(tuple):
    """``(lam_min, lam_max)`` with the convergence information as attributes.

    Unpacks as a pair: ``lo, hi = ls.hessian_extremes(ck, data)``.

    Attributes
    ----------
    lam_min, lam_max : float
    ratio : float
        ``|lam_min / lam_max|``.
    converged : bool
        Both extreme Ritz pairs met the stopping rule (see the module docstring).
    residuals : tuple of float
        ``||H u - theta u||`` of the two Ritz pairs.
    tol : float
        The relative tolerance asked for.
    hvps : int
        Hessian-vector products used.
    vectors : torch.Tensor
        ``(P, 2)`` unit Ritz vectors of ``lam_min`` and ``lam_max`` (for warm starts).
    """

    def __new__(cls, lam_min: float, lam_max: float, *, converged: bool, residuals: tuple[float, float], tol: float,
                hvps: int, vectors: torch.Tensor | None = None):
        """Build the ``(lam_min, lam_max)`` pair with its convergence record."""
        self = super().__new__(cls, (float(lam_min), float(lam_max)))
        self.converged, self.residuals, self.tol, self.hvps, self.vectors = (
            bool(converged), tuple(float(r) for r in residuals), float(tol), int(hvps), vectors)
        return self

    lam_min = property(lambda self: self[0])
    lam_max = property(lambda self: self[1])
    ratio = property(lambda self: _ratio(self[0], self[1]))

    def __repr__(self) -> str:
        return (f"Extremes(lam_min={self[0]:.6g}, lam_max={self[1]:.6g}, ratio={self.ratio:.4g}, "
                f"converged={self.converged}, hvps={self.hvps})")


def _ratio(lo: float, hi: float) -> float:
    return abs(lo / hi) if hi != 0 else math.inf


def _extreme_residuals(run: Lanczos) -> tuple[np.ndarray, np.ndarray, float]:
    """Ritz values, Ritz vectors (of T) and the two extreme residuals of a single run."""
    theta, S = run.ritz(0)
    last = run.beta[0, -1]
    res = np.abs(last * S[-1, [0, -1]])
    return theta, S, res


def extremes(op: HessianOperator, *, tol: float = 1e-3, max_iter: int = 100, min_iter: int = MIN_ITER,
             v0: torch.Tensor | None = None, seed: int = 0) -> Extremes:
    """Smallest and largest eigenvalue of an operator by Lanczos (see :func:`hessian_extremes`)."""
    if not 0 < tol < 1:
        raise ArgumentError(f"tol must be in (0, 1), got {tol}.")
    gen = torch.Generator().manual_seed(int(seed))
    start = torch.randn(op.size, generator=gen, dtype=torch.float64)
    if v0 is not None:
        # A neighbour's Ritz vectors, plus a little of the random vector so that no eigen-direction
        # is missing from the Krylov space (a start inside an invariant subspace would stall there).
        warm = v0.reshape(op.size, -1).double().cpu().sum(1)
        start = warm / warm.norm() + WARM_NOISE * start / start.norm()
    hvps0 = op.hvps
    min_iter = min(min_iter, op.size)

    def converged(run: Lanczos) -> bool:
        if run.steps < min_iter:
            return False
        theta, _, res = _extreme_residuals(run)
        return bool(np.all(res <= tol * max(abs(theta[0]), abs(theta[-1]))))

    run = lanczos(op, start, max_iter, generator=gen, stop=converged)
    theta, S, res = _extreme_residuals(run)
    vectors = run.Q[0].T @ torch.as_tensor(S[:, [0, -1]], device=op.device, dtype=op.dtype)
    return Extremes(theta[0], theta[-1], converged=converged(run) or run.steps == op.size, residuals=tuple(res),
                    tol=tol, hvps=op.hvps - hvps0, vectors=vectors)


def _operator(ck, data, *, subset, seed, params, dtype, batch_size) -> HessianOperator:
    if isinstance(ck, HessianOperator):
        return ck

    return HessianOperator.from_checkpoint(as_checkpoint(ck), as_dataset(data, subset, seed), params=params,
                                           dtype=dtype, batch_size=batch_size)


def hessian_extremes(ck, data="digits", *, subset: int | None = None, seed: int = 0, params="all",
                     dtype: torch.dtype = torch.float32, batch_size: int | None = None, tol: float = 1e-3,
                     max_iter: int = 100, min_iter: int = MIN_ITER, v0: torch.Tensor | None = None) -> Extremes:
    """The most negative and the largest eigenvalue of the Hessian of ``ck``'s training objective.

    Parameters
    ----------
    ck : Checkpoint, path or HessianOperator
        The model (its training objective, margins included), or a ready operator (then
        ``data``, ``subset``, ``params``, ``dtype`` and ``batch_size`` are ignored).
    data : Dataset or str
        Data the objective is averaged over (a spec string loads its test split).
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
        Maximum Lanczos steps (= HVPs).
    min_iter : int
        Fewest steps before the stopping rule is trusted (guards against stopping on an
        interior eigenvalue of the cluster near 0 before ``lambda_min`` has been seen).
    v0 : torch.Tensor, optional
        ``(P,)`` or ``(P, k)`` warm start (e.g. Ritz vectors from a nearby point).

    Returns
    -------
    Extremes
        ``(lam_min, lam_max)`` with ``converged``, ``residuals``, ``hvps``, ``vectors``.
    """
    op = _operator(ck, data, subset=subset, seed=seed, params=params, dtype=dtype, batch_size=batch_size)
    return extremes(op, tol=tol, max_iter=max_iter, min_iter=min_iter, v0=v0, seed=seed)


# -- trace ---------------------------------------------------------------------------------------
class TraceEstimate(NamedTuple):
    """Hutchinson's estimate of ``tr(H)``.

    Attributes
    ----------
    trace : float
        Mean of ``z^T H z`` over the probes.
    stderr : float
        Standard error of that mean (sample standard deviation / sqrt(n_probes)).
    n_probes : int
    samples : np.ndarray
        ``(n_probes,)`` the individual ``z^T H z``.
    """

    trace: float
    stderr: float
    n_probes: int
    samples: np.ndarray


def _rademacher(size: int, k: int, seed: int) -> torch.Tensor:
    """``(size, k)`` float64 +-1 probes drawn on the CPU, so every device gets the same ones.

    Drawn probe by probe, so the first probes of a longer run are the probes of a shorter one.
    """
    gen = torch.Generator().manual_seed(int(seed))
    return (torch.randint(0, 2, (k, size), generator=gen, dtype=torch.int8).double() * 2 - 1).T


def hessian_trace(ck, data="digits", *, n_probes: int = 100, seed: int = 0, subset: int | None = None,
                  params="all", dtype: torch.dtype = torch.float32, batch_size: int | None = None,
                  block: int = 25) -> TraceEstimate:
    """Hutchinson's estimator ``tr(H) = E[z^T H z]`` with Rademacher probes ``z``.

    Parameters
    ----------
    ck : Checkpoint, path or HessianOperator
        As in :func:`hessian_extremes`.
    data : Dataset or str
    n_probes : int
        Number of probes (HVPs); the standard error falls as ``1 / sqrt(n_probes)``.
    seed : int
        Seed of the probes (and of the subset).
    subset, params, dtype, batch_size
        As in :func:`hessian_extremes`.
    block : int
        Probes pushed through autograd together.

    Returns
    -------
    TraceEstimate
    """
    if n_probes < 1:
        raise ArgumentError(f"n_probes must be at least 1, got {n_probes}.")
    op = _operator(ck, data, subset=subset, seed=seed, params=params, dtype=dtype, batch_size=batch_size)
    Z = _rademacher(op.size, n_probes, seed).to(device=op.device, dtype=op.dtype)
    samples = (Z * op.matmat(Z, block=block)).sum(0).double().cpu().numpy()
    stderr = float(samples.std(ddof=1) / math.sqrt(n_probes)) if n_probes > 1 else math.nan
    return TraceEstimate(float(samples.mean()), stderr, int(n_probes), samples)


# -- spectral density ----------------------------------------------------------------------------
@dataclasses.dataclass(repr=False)
class Density(Result):
    """Spectral density of the Hessian by stochastic Lanczos quadrature.

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
        Checkpoint, data, probes, steps, seed, parameter selection.
    """

    nodes: np.ndarray
    weights: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    sigma: float = 0.0
    meta: dict = dataclasses.field(default_factory=dict)

    def trace(self, size: int | None = None) -> float:
        """``tr(H)`` implied by the quadrature: ``P * mean_probes sum_j w_j theta_j``."""
        size = size or int(self.meta["size"])
        return float(size * (self.weights * self.nodes).sum(1).mean())


def smooth_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smoothed quadrature measure, averaged over probes (rows)."""
    z = (grid[None, None, :] - nodes[:, :, None]) / sigma
    kernel = np.exp(-0.5 * z ** 2) / (sigma * math.sqrt(2 * math.pi))
    return (weights[:, :, None] * kernel).sum(1).mean(0)


def spectral_density(ck, data="digits", *, n_probes: int = 4, steps: int = 80, seed: int = 0,
                     subset: int | None = None, params="all", dtype: torch.dtype = torch.float32,
                     batch_size: int | None = None, sigma: float | None = None, grid_size: int = 1000) -> Density:
    """Spectral density of the Hessian by stochastic Lanczos quadrature (SLQ).

    Each Gaussian probe ``v`` runs ``steps`` Lanczos steps (full reorthogonalisation); the
    eigenpairs ``(theta_j, s_j)`` of the tridiagonal give the Gauss quadrature of
    ``v^T f(H) v / |v|^2`` with nodes ``theta_j`` and weights ``s_j[0]^2``. Averaging over probes
    and smoothing each node with a Gaussian gives the density (Ghorbani, Krishnan & Xiao 2019).
    Written here rather than taken from pyhessian, whose ``density()`` calls a function removed
    from torch.

    Parameters
    ----------
    ck : Checkpoint, path or HessianOperator
        As in :func:`hessian_extremes`.
    data : Dataset or str
    n_probes : int
        Independent probes (run side by side, ``n_probes * steps`` HVPs in all).
    steps : int
        Lanczos steps per probe.
    seed : int
        Seed of the probes (and of the subset).
    subset, params, dtype, batch_size
        As in :func:`hessian_extremes`.
    sigma : float, optional
        Gaussian width; default 1% of the spectrum's width ``max(theta) - min(theta)``.
    grid_size : int
        Points of the eigenvalue axis, which spans the nodes plus 5 sigma each side.

    Returns
    -------
    Density
    """
    if n_probes < 1 or steps < 1:
        raise ArgumentError(f"n_probes and steps must be at least 1, got {n_probes} and {steps}.")
    op = _operator(ck, data, subset=subset, seed=seed, params=params, dtype=dtype, batch_size=batch_size)
    gen = torch.Generator().manual_seed(int(seed))
    V0 = torch.randn(op.size, n_probes, generator=gen, dtype=torch.float64)
    run = lanczos(op, V0, steps, generator=gen)
    nodes, weights = np.empty((n_probes, run.steps)), np.empty((n_probes, run.steps))
    for i in range(n_probes):
        nodes[i], S = run.ritz(i)
        weights[i] = S[0] ** 2
    width = float(nodes.max() - nodes.min())
    sigma = float(sigma) if sigma is not None else max(0.01 * width, 1e-12)
    grid = np.linspace(nodes.min() - 5 * sigma, nodes.max() + 5 * sigma, int(grid_size))
    meta = {**_op_meta(op, ck, data), "n_probes": n_probes, "steps": run.steps, "seed": seed, "size": op.size}
    return Density(nodes, weights, grid, smooth_density(nodes, weights, grid, sigma), sigma, meta)


def _op_meta(op: HessianOperator, ck, data) -> dict:
    from .checkpoint import Checkpoint

    meta = {"params": op.params_choice if isinstance(op.params_choice, str) else list(op.params_choice),
            "dtype": str(op.dtype).replace("torch.", ""), "samples": op._n, "batch_size": op.batch_size}
    if isinstance(ck, Checkpoint):
        meta.update(checkpoint=ck.name, digest=ck.digest, arch=ck.meta.get("arch"), loss=ck.meta.get("loss"))
    if hasattr(data, "name"):
        meta["data"] = data.name
    return meta


# -- eigenvalue-ratio maps -----------------------------------------------------------------------
@dataclasses.dataclass(repr=False)
class EigenMap(Result):
    """Extreme Hessian eigenvalues over a 2D grid of a plane through the weights (seed 002 Fig. 4.5).

    Attributes
    ----------
    x, y : np.ndarray
        ``(nx,)`` and ``(ny,)`` coordinates along the two directions.
    lam_min, lam_max : np.ndarray
        ``(ny, nx)`` smallest and largest eigenvalue; ``[j, i]`` is at ``(x[i], y[j])``.
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
        Checkpoint, data, seed, grid, tolerance, parameter selection, directions' meta.
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


def snake_order(nx: int, ny: int) -> np.ndarray:
    """``(nx * ny, 2)`` grid indices ``(i, j)`` row by row, every other row reversed.

    Consecutive points are always grid neighbours, so a warm start from the previous point
    starts from nearby curvature.
    """
    rows = [[(i, j) for i in (range(nx) if j % 2 == 0 else reversed(range(nx)))] for j in range(ny)]
    return np.array([p for row in rows for p in row], dtype=np.int64).reshape(-1, 2)


_MAP_FIELDS = ("lam_min", "lam_max", "loss", "hvps", "res_min", "res_max", "converged")


def _map_chunk(op: HessianOperator, model, dirs, *, tol: float, max_iter: int, seed: int, warm_start: bool):
    """``evaluate`` for :func:`landscape.grid.run_grid`: one chunk of points, warm-started in order.

    The first point of a chunk starts cold, so a chunk's values never depend on earlier chunks
    and a resumed or sharded run equals an uninterrupted one.
    """
    from .directions import offset_parameters

    def evaluate(indices: np.ndarray, coords: np.ndarray) -> dict[str, np.ndarray]:
        rows, prev = [], None
        for index, c in zip(indices, coords):
            here = op.at(offset_parameters(model, dirs, c))
            ext = extremes(here, tol=tol, max_iter=max_iter, seed=seed + int(index),
                           v0=prev.vectors if (warm_start and prev is not None) else None)
            rows.append((ext.lam_min, ext.lam_max, here.loss(), ext.hvps, *ext.residuals, ext.converged))
            prev = ext
        return dict(zip(_MAP_FIELDS, np.array(rows, dtype=np.float64).T))

    return evaluate


def eigen_ratio_map(ck, data="digits", dirs=None, x=(-1.0, 1.0, 11), y=(-1.0, 1.0, 11), *,
                    subset: int | None = None, seed: int = 0, params="all", dtype: torch.dtype = torch.float32,
                    batch_size: int | None = None, tol: float = 1e-3, max_iter: int = 100,
                    warm_start: bool = True, out=None, resume: bool = False, chunk_size: int = 16,
                    verbose: bool | None = None, progress: bool | None = None) -> EigenMap:
    """``lam_min``, ``lam_max`` and ``|lam_min / lam_max|`` of the Hessian over a plane of directions.

    Parameters
    ----------
    ck : Checkpoint or path
        The centre ``theta*``; its model is left unchanged.
    data : Dataset or str
        Data of the objective (a spec string loads its test split).
    dirs : Directions, optional
        Two directions; default ``random_directions(ck.model, 2, seed)`` (filter-normalised,
        biases and batchnorm zeroed), the same as :func:`landscape.surface` draws.
    x, y : (lo, hi, n) or array
        Grid coordinates along ``d1`` and ``d2``.
    subset : int, optional
        Use a seeded random subset of this many samples.
    seed : int
        Seed of the directions (when drawn here), the subset and the cold Lanczos starts.
    params, dtype, batch_size, tol, max_iter
        As in :func:`hessian_extremes`.
    warm_start : bool
        Start each point's Lanczos from the previous point's two Ritz vectors (within a chunk;
        points are visited in snake order so the previous point is a grid neighbour).
    out : path, optional
        Save the map there (``.npz``); progress is flushed beside it chunk by chunk.
    resume : bool
        Continue an interrupted run with the same ``out``.
    chunk_size : int
        Points per flushed chunk (and per rank under torch.distributed).
    verbose : bool or None
        Progress (see :mod:`landscape.progress`); False is silent. ``progress`` is its older name.

    Returns
    -------
    EigenMap
        ``ratio[j, i]`` at ``(x[i], y[j])``, identical on every rank.
    """
    ck, data, dirs, xs, ys = plane_setup(ck, data, dirs, x, y, subset, seed, "an eigenvalue map")
    order = snake_order(len(xs), len(ys))
    points = np.stack([xs[order[:, 0]], ys[order[:, 1]]], axis=1)
    op = HessianOperator.from_checkpoint(ck, data, params=params, dtype=dtype, batch_size=batch_size)
    out = grid.result_path(out)
    fingerprint = plane_fingerprint(ck, data, dirs, points, "eigen_ratio_map", params=op.names, dtype=str(dtype),
                                    batch_size=batch_size, tol=tol, max_iter=max_iter, min_iter=MIN_ITER, seed=seed,
                                    warm_start=warm_start, chunk_size=chunk_size)
    evaluate = _map_chunk(op, ck.model, dirs, tol=tol, max_iter=max_iter, seed=seed, warm_start=warm_start)
    values = grid.run_grid(points, evaluate, {f: () for f in _MAP_FIELDS}, out=out, fingerprint=fingerprint,
                           resume=resume, chunk_size=chunk_size, progress=progress_choice(verbose, progress),
                           desc="hessian")
    shape = (len(ys), len(xs))

    def unsnake(v: np.ndarray) -> np.ndarray:
        a = np.empty(shape)
        a[order[:, 1], order[:, 0]] = v
        return a

    lo, hi = unsnake(values["lam_min"]), unsnake(values["lam_max"])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(lo / hi)
    emap = EigenMap(xs, ys, lo, hi, ratio, unsnake(values["loss"]), unsnake(values["hvps"]).astype(np.int64),
                    np.stack([unsnake(values["res_min"]), unsnake(values["res_max"])]),
                    unsnake(values["converged"]).astype(bool), dirs.vectors,
                    plane_meta(ck, data, dirs, seed, grid=[len(xs), len(ys)],
                          x_range=[float(xs[0]), float(xs[-1])], y_range=[float(ys[0]), float(ys[-1])],
                          tol=tol, max_iter=max_iter, params=params if isinstance(params, str) else list(params),
                          dtype=str(dtype).replace("torch.", ""), criterion=str(ck.meta.get("loss") or "ce"),
                          warm_start=warm_start))
    grid.save_result(emap, out)
    return emap

"""Hessian extremes per grid point: this engine against Li et al.'s eigsh recipe and pyhessian.

All methods work on the same model, data and grid points of one plane (float32, as a user runs
them), and are scored against the truth at every point:

* ``engine``: :func:`landscape.eigen_ratio_map` (Lanczos, full reorthogonalisation, residual
  <= tol x spectral radius, warm starts from the neighbour in snake order); also ``engine-cold``
  without warm starts;
* ``li-eigsh``: Li et al.'s recipe: ``scipy.sparse.linalg.eigsh`` for the largest-magnitude
  eigenvalue at tol 1e-2, then ``eigsh`` on ``H - 0.51 lambda_max I`` for the minimum;
* ``pyhessian``: pyhessian's power iteration (``hessian.eigenvalues``, its default tol 1e-3) for
  ``lambda_max`` only (it has no ``lambda_min``).

The truth is ``torch.linalg.eigvalsh`` of the dense float64 Hessian when it has at most
``--dense-max`` rows (the default model is a small digits mlp trained here in seconds), else
Lanczos in float64 at tol 1e-7. Printed per method: Hessian-vector products and seconds per
point, the largest error of ``|lambda_min / lambda_max|`` and of ``lambda_max`` (relative).
Benchmarks never assert; run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import copy
import time
import warnings

import numpy as np
import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``landscape bench hessian``."""
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint (default: a digits mlp with hidden (16, 8), trained here for 20 epochs)")
    parser.add_argument("--data", default="digits", help="dataset spec (default: digits, test split)")
    parser.add_argument("--samples", type=int, default=None, help="seeded subset size (default: the whole split)")
    parser.add_argument("--grid", type=int, default=5, help="points per axis of the plane (default: 5)")
    parser.add_argument("--range", type=float, default=1.0, help="the plane spans [-R, R]^2 (default: 1)")
    parser.add_argument("--tol", type=float, default=1e-3, help="the engine's tolerance (default: 1e-3)")
    parser.add_argument("--dense-max", type=int, default=5000,
                        help="largest Hessian formed densely for the truth (default: 5000 rows)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--no-peer", action="store_true", help="skip pyhessian")


def _model(args):
    import landscape as ls

    if args.checkpoint:
        return ls.load_checkpoint(args.checkpoint, device=args.device, trust_code=getattr(args, "trust_code", False))
    from landscape.train import Recipe, fit

    model, meta = fit(Recipe("bench-hessian", "mlp", arch_kwargs={"hidden": [16, 8]}, epochs=20))
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        return ls.load_checkpoint(ls.save_checkpoint(Path(tmp) / "bench-hessian.safetensors", model, meta),
                                  device=args.device)


def _truth(op64, dense_max: int) -> tuple[float, float]:
    from landscape.hessian import extremes

    if op64.size <= dense_max:
        ev = torch.linalg.eigvalsh(op64.dense(max_size=dense_max))
        return float(ev[0]), float(ev[-1])
    lo, hi = extremes(op64, tol=1e-7, max_iter=min(op64.size, 1000))
    return lo, hi


def li_eigsh(op) -> tuple[float, float]:
    """Li et al.'s recipe (``plot_hessian_eigen.py``): eigsh LM at tol 1e-2, then the shifted operator."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    A = op.to_scipy()
    lam_max = float(eigsh(A, k=1, which="LM", tol=1e-2, return_eigenvectors=False)[0])
    shift = 0.51 * lam_max
    shifted = LinearOperator(A.shape, matvec=lambda v: A.matvec(v) - shift * np.ravel(v), dtype=np.float64)
    mu = float(eigsh(shifted, k=1, which="LM", tol=1e-2, return_eigenvectors=False)[0])
    return mu + shift, lam_max


def pyhessian_top(ck, point, x, y) -> tuple[float, int]:
    """Pyhessian's power iteration for the top eigenvalue at ``point``; returns (value, HVPs)."""
    import importlib

    ph = importlib.import_module("pyhessian.hessian")  # the module; `pyhessian.hessian` is also its class

    model = copy.deepcopy(ck.model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(point[n])
    calls = [0]
    original = ph.hessian_vector_product

    def counted(*a, **k):
        calls[0] += 1
        return original(*a, **k)

    ph.hessian_vector_product = counted
    try:
        with warnings.catch_warnings():
            # pyhessian calls backward(create_graph=True) on the parameters, which torch warns about
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
            top = ph.hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=x.is_cuda).eigenvalues()[0][0]
    finally:
        ph.hessian_vector_product = original
    return float(top), calls[0]


def run(args) -> int:
    """Score the engine, Li et al.'s eigsh recipe and pyhessian against the truth on one plane; print the table."""
    import landscape as ls
    from landscape.directions import offset_parameters
    from landscape.hessian import snake_order
    from landscape.hvp import HessianOperator

    if args.threads:
        torch.set_num_threads(args.threads)
    ck = _model(args)
    data = ls.load_dataset(args.data, split="test").subset(args.samples, seed=args.seed)
    dirs = ls.random_directions(ck.model, n=2, seed=args.seed)
    r, n = float(args.range), int(args.grid)
    xs = np.linspace(-r, r, n)
    order = snake_order(n, n)
    points = [(xs[i], xs[j]) for i, j in order]
    base32 = HessianOperator.from_checkpoint(ck, data)
    base64 = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64)
    print(f"{ck.name}: {base32.size} parameters, {len(data)} samples, {n} x {n} points over [-{r:g}, {r:g}]^2, "
          f"device {ck.device}")

    rows: dict[str, list] = {m: [] for m in ("engine", "engine-cold", "li-eigsh", "pyhessian")}
    truth = []
    for c in points:
        params = offset_parameters(ck.model, dirs, c)
        truth.append(_truth(base64.at(params), args.dense_max))
    truth = np.array(truth)

    for name, warm in (("engine", True), ("engine-cold", False)):
        t0 = time.perf_counter()
        emap = ls.eigen_ratio_map(ck, data, dirs, x=xs, y=xs, seed=args.seed, tol=args.tol, warm_start=warm,
                                  chunk_size=len(points), progress=False)
        seconds = (time.perf_counter() - t0) / len(points)
        for (i, j) in order:
            rows[name].append((emap.lam_min[j, i], emap.lam_max[j, i], emap.hvps[j, i], seconds))

    for c in points:
        op = base32.at(offset_parameters(ck.model, dirs, c))
        t0 = time.perf_counter()
        lo, hi = li_eigsh(op)
        rows["li-eigsh"].append((lo, hi, op.hvps, time.perf_counter() - t0))
    if not args.no_peer and ck.meta.get("loss", "ce") == "ce":
        x, y = ck.prepare(data)
        for c in points:
            t0 = time.perf_counter()
            top, calls = pyhessian_top(ck, offset_parameters(ck.model, dirs, c), x, y)
            rows["pyhessian"].append((np.nan, top, calls, time.perf_counter() - t0))
    _report(rows, truth)
    return 0


def _report(rows: dict, truth: np.ndarray) -> None:
    true_ratio = np.abs(truth[:, 0] / truth[:, 1])
    print(f"truth: ratio in [{true_ratio.min():.4f}, {true_ratio.max():.4f}], "
          f"lambda_max in [{truth[:, 1].min():.4g}, {truth[:, 1].max():.4g}]")
    print(f"{'method':<12} {'HVPs/point':>10} {'s/point':>9} {'max ratio err':>14} {'max lam_max rel err':>20}")
    for name, vals in rows.items():
        if not vals:
            continue
        v = np.array(vals, dtype=np.float64)
        ratio_err = np.nanmax(np.abs(np.abs(v[:, 0] / v[:, 1]) - true_ratio)) if np.isfinite(v[:, 0]).any() else np.nan
        hi_err = np.max(np.abs(v[:, 1] - truth[:, 1]) / np.abs(truth[:, 1]))
        ratio_txt = "n/a" if np.isnan(ratio_err) else f"{ratio_err:.2e}"
        print(f"{name:<12} {v[:, 2].mean():>10.1f} {v[:, 3].mean():>9.3f} {ratio_txt:>14} {hi_err:>20.2e}")

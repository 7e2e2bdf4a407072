"""What every run over a plane (or line) of weights shares: its axes, its inputs, its records.

A surface, a line and an eigenvalue map all evaluate a checkpoint at ``theta* + sum_i c_i d_i``
for grid coordinates ``c``. This module turns the user's arguments into those inputs
(:func:`axis`, :func:`plane_setup`) and writes what such a run records: the provenance in a
result's ``meta`` (:func:`plane_meta`) and the fingerprint that ties a progress file to its run
(:func:`plane_fingerprint`), so the two never drift apart between surfaces and Hessians.
"""
from __future__ import annotations

import numpy as np

from .checkpoint import Checkpoint, as_checkpoint
from .data import Dataset, as_dataset
from .directions import Directions, random_directions
from .errors import ArgumentError, check_scalar
from .grid import array_digest


def axis(spec, name: str = "x") -> np.ndarray:
    """Grid coordinates from a tuple ``(lo, hi, n)`` or a list/array of them.

    ``(lo, hi, n)`` is inclusive like ``np.linspace``, except that a one-point axis is the
    centre ``(lo + hi) / 2``: a grid of one point evaluates the checkpoint's neighbourhood
    centre, never a corner. Only a tuple is read as ``(lo, hi, n)``, so ``[-1, 0, 1]`` stays
    three coordinates.
    """
    if not isinstance(spec, tuple):
        try:
            arr = np.asarray(spec, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise ArgumentError(f"{name}={spec!r}: give (lo, hi, n) or a list of coordinates.") from exc
    else:
        if len(spec) != 3:
            raise ArgumentError(f"{name}={spec!r}: give (lo, hi, n) or an array of coordinates.")
        lo = check_scalar(spec[0], f"{name} lower end", float)
        hi = check_scalar(spec[1], f"{name} upper end", float)
        n = check_scalar(spec[2], f"{name} number of points", int, min=1)
        arr = np.array([(lo + hi) / 2]) if n == 1 else np.linspace(lo, hi, n)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ArgumentError(f"{name}: coordinates must be finite and not empty.")
    return arr


def subset_argument(subset: int | None, n_samples: int | None = None) -> int | None:
    """The ``subset`` option (a seeded subset of this many samples), accepting its deprecated name ``n_samples``."""
    if n_samples is not None:
        import warnings

        if subset is not None and subset != n_samples:
            raise ArgumentError(f"subset={subset} and n_samples={n_samples} disagree; give only subset.")
        warnings.warn("n_samples= is deprecated; use subset=", DeprecationWarning, stacklevel=3)
        subset = n_samples
    return check_scalar(subset, "subset", int, min=1, allow_none=True)


def plane_setup(ck, data, dirs: Directions | None, x, y, subset: int | None, seed: int, what: str,
                hint: str = "") -> tuple[Checkpoint, Dataset, Directions, np.ndarray, np.ndarray]:
    """The inputs every run over a plane shares: checkpoint, data (subset), two directions, axes.

    ``dirs`` defaults to two filter-normalised random directions drawn with ``seed``.
    """
    ck = as_checkpoint(ck)
    data = as_dataset(data, subset, seed)
    if dirs is None:
        dirs = random_directions(ck.model, n=2, seed=seed)
    if dirs.n != 2:
        raise ArgumentError(f"{what} needs 2 directions, got {dirs.n}{hint}.")
    dirs.check_model(ck.model)
    return ck, data, dirs, axis(x, "x"), axis(y, "y")


def plane_meta(ck, data, dirs, seed: int, **extra) -> dict:
    """Provenance of a run over a plane: checkpoint, data, seed and the directions' layout."""
    return {"checkpoint": ck.name, "digest": ck.digest, "path": str(ck.path) if ck.path else None,
            "arch": ck.meta.get("arch"), "loss": ck.meta.get("loss"), "data": data.name, "n_samples": len(data),
            "seed": seed, "directions": {"names": dirs.names, "shapes": dirs.shapes, "meta": dirs.meta}, **extra}


def plane_fingerprint(ck, data, dirs, points: np.ndarray, kind: str, **extra) -> dict:
    """What identifies a run over a plane, for :func:`landscape.grid.run_grid`'s progress files.

    Two runs share a fingerprint only if they evaluate the same weights, data, directions and
    points in the same way (``extra``: the run's own options), so a resume never mixes runs.
    """
    return {"kind": kind, "checkpoint": ck.digest, "data": data.name, "n": len(data),
            "labels": array_digest(data.y), "directions": array_digest(dirs.vectors),
            "points": array_digest(points), **extra}

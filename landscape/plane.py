"""What every run over a plane (or line) of weights shares: its axes, its inputs, its records.

A surface, a line and an eigenvalue map all evaluate a checkpoint at ``theta* + sum_i c_i d_i``
for grid coordinates ``c``. This module turns the user's arguments into those inputs
(:func:`axis`, :func:`plane_setup`) and writes what such a run records: the provenance in a
result's ``meta`` (:func:`plane_meta`) and the fingerprint that ties a progress file to its run
(:func:`plane_fingerprint`), so the two never drift apart between surfaces and Hessians.
Both record the CPU thread count, because values computed with another count differ in their
last bits (:mod:`landscape.threads`); :func:`check_grid_size` refuses a grid that cannot fit in
memory before any work starts.
"""
from __future__ import annotations

import numpy as np

from .checkpoint import Checkpoint, as_checkpoint
from .data import Dataset, as_dataset
from .directions import Directions, random_directions
from .errors import ArgumentError, check_scalar
from .grid import array_digest
from .threads import current_threads

FIELDS = 8  # the most values a run over a plane keeps per point (an eigenvalue map's fields)


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
        check_grid_size(n, f"the {name} axis")
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
    xs, ys = axis(x, "x"), axis(y, "y")
    check_grid_size(len(xs) * len(ys), f"the grid of {what} ({len(xs)} x {len(ys)})")
    return ck, data, dirs, xs, ys


def grid_memory(n_points: int, fields: int = FIELDS, world: int = 1) -> tuple[int, int]:
    """Estimated bytes of a run's result and of its whole working set, for ``n_points`` grid points.

    The result keeps ``fields`` float64 values per point. While it runs, a grid also holds the
    point coordinates and their mesh (about 6 float64 per point), the engine's values, done-mask
    and chunk indices, the reshaped copies the result is built from, and under torch.distributed
    the values gathered from every rank; the model, the data and the activations come on top.
    """
    per_value = 8 * fields
    result = n_points * per_value
    gathered = 2 * world * (per_value + 1) if world > 1 else 0
    work = n_points * (3 * per_value + 6 * 8 + 8 + 1 + gathered)
    return result, work


def check_grid_size(n_points: int, what: str = "the grid", *, fields: int = FIELDS, world: int = 1,
                    available: int | None = None) -> int:
    """Refuse a grid whose arrays alone would not fit in memory, with the estimate; return ``n_points``.

    Parameters
    ----------
    n_points : int
        Points of the grid (``nx * ny``, or a line's length).
    what : str
        How the error names the grid (``"--grid 1000000"``).
    fields : int
        Values kept per point (default: the most any run over a plane keeps).
    world : int
        Ranks of a torch.distributed run (their gathered values count too).
    available : int, optional
        Bytes available; default :func:`landscape.device.available_memory` (no check when unknown).

    Raises
    ------
    ArgumentError
        The estimated working set (:func:`grid_memory`) exceeds the memory available.
    """
    from .device import available_memory, format_bytes

    available = available_memory() if available is None else available
    result, work = grid_memory(n_points, fields, world)
    if available is not None and work > available:
        raise ArgumentError(f"{what} has {n_points:,} points: its result needs about {format_bytes(result)} and the "
                            f"run about {format_bytes(work)} of memory, more than the {format_bytes(available)} "
                            "available; use fewer points.")
    return n_points


def plane_meta(ck, data, dirs, seed: int, **extra) -> dict:
    """Provenance of a run over a plane: checkpoint, data, seed and the directions' layout."""
    return {"checkpoint": ck.name, "digest": ck.digest, "path": str(ck.path) if ck.path else None,
            "arch": ck.meta.get("arch"), "loss": ck.meta.get("loss"), "data": data.name, "n_samples": len(data),
            "seed": seed, "directions": {"names": dirs.names, "shapes": dirs.shapes, "meta": dirs.meta},
            "threads": current_threads(), **extra}


def plane_fingerprint(ck, data, dirs, points: np.ndarray, kind: str, **extra) -> dict:
    """What identifies a run over a plane, for :func:`landscape.grid.run_grid`'s progress files.

    Two runs share a fingerprint only if they evaluate the same weights, data, directions and
    points in the same way (``extra``: the run's own options), so a resume never mixes runs.
    On the CPU that includes the thread count: reductions split over another number of threads
    add in another order, and a run resumed under it would mix values that agree with neither.
    """
    threads = current_threads() if ck.device.type == "cpu" else None
    return {"kind": kind, "checkpoint": ck.digest, "data": data.name, "n": len(data),
            "labels": array_digest(data.y), "directions": array_digest(dirs.vectors),
            "points": array_digest(points), "threads": threads, **extra}

"""Chunked, resumable, shardable evaluation of many independent points.

Surfaces and eigenvalue maps are thousands of independent evaluations. :func:`run_grid`
is the one engine both use:

* points are cut into chunks; after each chunk the finished values are flushed atomically
  to a progress file, so a killed run resumes where it stopped (``resume=True``) and ends
  identical to an uninterrupted one, provided ``evaluate`` gives each chunk the same values
  whatever ran before it;
* under ``torch.distributed`` (launched by ``torchrun``; NCCL on GPUs, gloo on CPU) chunk
  ``c`` goes to rank ``c % world_size``; every rank writes its own progress file and the
  values are gathered on every rank at the end;
* a progress file remembers a fingerprint of the run's inputs, and a file from a different
  run is never mixed in.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .distributed import dist_info
from .errors import ResumeError
from .io import atomic_path
from .progress import bar as progress_bar

Evaluate = Callable[[np.ndarray, np.ndarray], Mapping[str, np.ndarray]]


def progress_files(out: Path) -> list[Path]:
    """Every progress file belonging to the output ``out`` (any rank layout)."""
    return [Path(p) for p in sorted(glob.glob(glob.escape(str(out)) + ".progress*.npz"))]


def _progress_path(out: Path, rank: int, world: int) -> Path:
    return Path(f"{out}.progress.rank{rank}of{world}.npz")


def _read_progress(files: list[Path], fingerprint: str, n: int, fields: Mapping[str, tuple]):
    done = np.zeros(n, bool)
    values = {k: np.full((n, *shape), np.nan) for k, shape in fields.items()}
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as npz:
                fp = str(npz["__fingerprint__"])
                if fp != fingerprint:
                    raise ResumeError(f"{f} belongs to a different run (other checkpoint, data, directions or grid); "
                                      "delete it or choose another output path.")
                d = npz["done"]
                done |= d
                for k in values:
                    values[k][d] = npz[k][d]
        except (OSError, ValueError, KeyError) as exc:
            raise ResumeError(f"progress file {f} is unreadable ({exc}); delete it to start over.") from exc
    return done, values


def _write_progress(path: Path, fingerprint: str, done: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, __fingerprint__=np.array(fingerprint), done=done, **values)


def run_grid(points: np.ndarray, evaluate: Evaluate, fields: Mapping[str, tuple], *, out: str | Path | None = None,
             fingerprint: Mapping | None = None, resume: bool = False, chunk_size: int = 64,
             progress: bool | None = None, desc: str = "grid") -> dict[str, np.ndarray]:
    """Evaluate ``evaluate`` over ``points`` in chunks and return the stacked values.

    Parameters
    ----------
    points : np.ndarray
        ``(P, k)`` coordinates, in the order they should be visited.
    evaluate : callable
        ``evaluate(indices, coords) -> {name: array (len(indices), *shape)}`` for one chunk.
    fields : mapping
        ``{name: per-point shape}`` of what ``evaluate`` returns (``()`` for scalars).
    out : path, optional
        Final output path; progress files are written beside it as ``<out>.progress.*.npz``
        and removed once every point is done. Without it nothing is written.
    fingerprint : mapping, optional
        JSON-able description of the inputs; a progress file with another one is refused.
    resume : bool
        Continue from existing progress files. Without it an existing progress file is an
        error, so earlier work is never silently overwritten.
    chunk_size : int
        Points per chunk (the unit of flushing and of sharding).
    progress : bool or None
        Show progress (see :mod:`landscape.progress`): False is silent, True/None show it.

    Returns
    -------
    dict of np.ndarray
        ``{name: (P, *shape)}`` float64 values, identical on every rank.
    """
    points = np.asarray(points)
    n = len(points)
    rank, world = dist_info()
    fp = json.dumps(fingerprint or {}, sort_keys=True, default=str)
    out = Path(out) if out is not None else None
    existing = progress_files(out) if out is not None else []
    if existing and not resume:
        raise ResumeError(f"{existing[0]} holds progress of an earlier run; "
                          "pass resume=True (--resume) to continue it, or delete it to start over.")
    done, values = _read_progress(existing, fp, n, fields)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank has looked for earlier progress before any rank writes its own
    mine = _progress_path(out, rank, world) if out is not None else None

    chunks = [np.arange(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]
    todo = [c for k, c in enumerate(chunks) if k % world == rank and not done[c].all()]
    mine_total = sum(len(c) for c in chunks[rank::world])
    with progress_bar(mine_total, desc, progress, initial=mine_total - sum(len(c) for c in todo)) as bar:
        for idx in todo:
            result = evaluate(idx, points[idx])
            for k in fields:
                values[k][idx] = np.asarray(result[k], dtype=np.float64).reshape(len(idx), *fields[k])
            done[idx] = True
            if mine is not None:
                _write_progress(mine, fp, done, values)
            bar.update(len(idx))

    if world > 1:
        import torch.distributed as dist

        gathered: list = [None] * world
        dist.all_gather_object(gathered, (done, values))
        for d, v in gathered:
            for k in values:
                values[k][d] = v[k][d]
            done |= d
        dist.barrier()
    if not done.all():  # pragma: no cover - guards against a broken evaluate
        raise RuntimeError(f"{int((~done).sum())} grid points were not evaluated")
    return values


def finish(out: str | Path) -> None:
    """Remove the progress files of ``out`` (call after the final result is saved, on rank 0)."""
    for f in progress_files(Path(out)):
        f.unlink(missing_ok=True)


# -- helpers shared by the runs built on this engine (surfaces, eigenvalue maps) ------------
# (what a run over a plane records is in landscape.plane)
def array_digest(arr: np.ndarray) -> str:
    """Short SHA-256 of an array's bytes, for run fingerprints."""
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]


def result_path(out: str | os.PathLike | None) -> Path | None:
    """The ``.npz`` path a run's result is saved to (``.npz`` appended when missing)."""
    if out is None:
        return None
    out = Path(out)
    return out if out.suffix == ".npz" else out.with_name(out.name + ".npz")


def save_result(result, out: Path | None) -> None:
    """Write a run's result on rank 0 and drop its progress files (the result now holds every value)."""
    if out is None or dist_info()[0] != 0:
        return
    result.save(out)
    finish(out)

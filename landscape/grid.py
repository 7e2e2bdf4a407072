"""Chunked, resumable, shardable evaluation of many independent points.

Surfaces and eigenvalue maps are thousands of independent evaluations. :func:`run_grid`
is the one engine both use:

* points are cut into chunks; after each chunk the finished values are flushed atomically
  to a progress file, so a killed run resumes where it stopped (``resume=True``) and ends
  identical to an uninterrupted one, provided ``evaluate`` gives each chunk the same values
  whatever ran before it. A flush rewrites the whole file, so on a very large grid the engine
  flushes only as often as keeps writing under a tenth of the run's time (never less than
  once a minute), instead of a cost that grows with the square of the grid;
* under ``torch.distributed`` (launched by ``torchrun``; NCCL on GPUs, gloo on CPU) chunk
  ``c`` goes to rank ``c % world_size``; every rank writes its own progress file and the
  values are gathered on every rank at the end;
* a progress file remembers a fingerprint of the run's inputs, and a file from a different
  run is never mixed in; the error names what differs;
* nothing finished is replaced by accident (:func:`check_output`): a finished result or the
  progress of an earlier run is refused unless the caller resumes it or overwrites it
  (``overwrite=True``, or the CLI's ``--overwrite`` through :func:`overwriting`);
* one resume semantics for every resumable result (:func:`reuse_finished`): ``resume=True`` on
  a finished result of the same inputs (the digest of its fingerprint, stored in its
  ``meta["fingerprint"]``) returns it without recomputing, so resuming a multi-stage command
  after a kill is idempotent; a finished result of other inputs is refused, naming the fix.
"""
from __future__ import annotations

import contextlib
import contextvars
import glob
import hashlib
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from .distributed import dist_info
from .errors import OutputError, ResumeError, check_scalar
from .io import atomic_path
from .progress import bar as progress_bar

Evaluate = Callable[[np.ndarray, np.ndarray], Mapping[str, np.ndarray]]


def progress_files(out: Path) -> list[Path]:
    """Every progress file belonging to the output ``out`` (any rank layout)."""
    return [Path(p) for p in sorted(glob.glob(glob.escape(str(out)) + ".progress*.npz"))]


def _progress_path(out: Path, rank: int, world: int) -> Path:
    return Path(f"{out}.progress.rank{rank}of{world}.npz")


def _read_fingerprint(path: Path) -> str:
    """The fingerprint stored in a progress file; ResumeError when the file is corrupt."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return str(npz["__fingerprint__"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise _corrupt(path, exc) from exc


def _corrupt(path: Path, exc: Exception) -> ResumeError:
    reason = str(exc) or type(exc).__name__
    if "pickle" in reason:  # numpy's advice to load it unsafely is never the fix for a progress file
        reason = "not a numpy .npz file"
    return ResumeError(f"progress file {path} is corrupt or truncated ({reason}); pass --overwrite "
                       "(overwrite=True) to start the run over, or delete the file.")


def _differences(theirs: str, ours: str) -> dict[str, tuple]:
    """``{key: (their value, our value)}`` for every entry in which two fingerprints differ."""
    try:
        a, b = json.loads(theirs), json.loads(ours)
    except ValueError:
        return {}
    if not isinstance(a, dict) or not isinstance(b, dict):
        return {}
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _mismatch(path: Path, theirs: str, ours: str) -> ResumeError:
    diff = _differences(theirs, ours)
    if list(diff) == ["threads"] and None not in diff["threads"]:
        there, here = diff["threads"]
        return ResumeError(f"{path} was computed with {there} CPU threads and this run uses {here}; values depend "
                           f"on the thread count, so pass --threads {there} (or run under threads={there}) to resume "
                           "it, or --overwrite to start over.")
    what = ", ".join(f"{k} {a!r} there, {b!r} here" for k, (a, b) in diff.items()) or "other inputs"
    return ResumeError(f"{path} belongs to a different run ({what}); pass --overwrite (overwrite=True) to start "
                       "over, or choose another output path.")


def _read_progress(files: list[Path], fingerprint: str, n: int, fields: Mapping[str, tuple]):
    done = np.zeros(n, bool)
    values = {k: np.full((n, *shape), np.nan) for k, shape in fields.items()}
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as npz:
                fp = str(npz["__fingerprint__"])
                if fp != fingerprint:
                    raise _mismatch(f, fp, fingerprint)
                d = npz["done"]
                if d.shape != (n,):
                    raise ResumeError(f"{f} holds {d.size} points, this run has {n}; pass --overwrite "
                                      "(overwrite=True) to start over.")
                done |= d
                for k in values:
                    values[k][d] = npz[k][d]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise _corrupt(f, exc) from exc
    return done, values


def _write_progress(path: Path, fingerprint: str, done: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, __fingerprint__=np.array(fingerprint), done=done, **values)


def run_grid(points: np.ndarray, evaluate: Evaluate, fields: Mapping[str, tuple], *, out: str | Path | None = None,
             fingerprint: Mapping | None = None, resume: bool = False, chunk_size: int = 64,
             progress: bool | None = None, desc: str = "grid", overwrite: bool | None = None) -> dict[str, np.ndarray]:
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
        Continue from existing progress files. Without it an existing progress file, or a
        finished result at ``out``, is an error, so earlier work is never silently overwritten.
    chunk_size : int
        Points per chunk (the unit of flushing and of sharding).
    progress : bool or None
        Show progress (see :mod:`landscape.progress`): False is silent, True/None show it.
    desc : str
        Name of the work in progress lines.
    overwrite : bool, optional
        Start over: ignore and remove existing progress, and replace a finished result at
        ``out`` once the new one is saved. Default: False, or True inside :func:`overwriting`.

    Returns
    -------
    dict of np.ndarray
        ``{name: (P, *shape)}`` float64 values, identical on every rank.
    """
    points = np.asarray(points)
    n = len(points)
    chunk_size = check_scalar(chunk_size, "chunk_size", int, min=1)
    rank, world = dist_info()
    fp = json.dumps(fingerprint or {}, sort_keys=True, default=str)
    out = Path(out) if out is not None else None
    overwrite = _OVERWRITE.get() if overwrite is None else bool(overwrite)
    existing = check_output(out, resume=resume, overwrite=overwrite)
    done, values = _read_progress(existing, fp, n, fields)
    if overwrite and rank == 0 and out is not None:
        finish(out)  # the progress of the run being replaced; no rank reads it (check_output gave none)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank has looked for earlier progress before any rank writes its own
    mine = _progress_path(out, rank, world) if out is not None else None
    flush = _Flusher(mine, fp, int(done.sum()))

    chunks = [np.arange(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]
    todo = [c for k, c in enumerate(chunks) if k % world == rank and not done[c].all()]
    mine_total = sum(len(c) for c in chunks[rank::world])
    with progress_bar(mine_total, desc, progress, initial=mine_total - sum(len(c) for c in todo)) as bar:
        try:
            for idx in todo:
                result = evaluate(idx, points[idx])
                for k in fields:
                    values[k][idx] = np.asarray(result[k], dtype=np.float64).reshape(len(idx), *fields[k])
                done[idx] = True
                flush(done, values)
                bar.update(len(idx))
        finally:
            flush(done, values, force=True)  # the last chunks, also on an error or Ctrl-C, for --resume

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


class _Flusher:
    """Write the progress file after a chunk, as often as keeps the writing under a tenth of the run's time.

    Each flush rewrites the whole file (every point's values), so flushing after every chunk
    costs ``O(points^2 / chunk_size)`` on a large grid. A flush is skipped while the time since
    the last one is shorter than ``RATIO`` times the last flush took (and a minute at most), so a
    kill loses at most that much work; on ordinary grids a flush takes milliseconds and every
    chunk is flushed, as before.
    """

    RATIO = 10.0
    MAX_WAIT = 60.0

    def __init__(self, path: Path | None, fingerprint: str, done: int = 0):
        self.path, self.fingerprint = path, fingerprint
        self.cost = 0.0
        self.last = -float("inf")
        self.written = done  # points done at the last flush (or found on disk)

    def __call__(self, done: np.ndarray, values: Mapping[str, np.ndarray], force: bool = False) -> None:
        if self.path is None or self.written == int(done.sum()):
            return
        now = time.perf_counter()
        if not force and now - self.last < min(self.RATIO * self.cost, self.MAX_WAIT):
            return
        self.written = int(done.sum())
        _write_progress(self.path, self.fingerprint, done, values)
        self.last = time.perf_counter()
        self.cost = self.last - now


# -- what may be written where ------------------------------------------------------------
_OVERWRITE: contextvars.ContextVar[bool] = contextvars.ContextVar("landscape_overwrite", default=False)


@contextlib.contextmanager
def overwriting(enabled: bool = True) -> Iterator[None]:
    """Let the runs inside the block start over and replace finished results (the CLI's ``--overwrite``).

    For callers that cannot pass ``overwrite=`` down to :func:`run_grid` through the function they
    call; an explicit ``overwrite=`` still wins.
    """
    token = _OVERWRITE.set(bool(enabled))
    try:
        yield
    finally:
        _OVERWRITE.reset(token)


def finished(out: str | os.PathLike | None) -> bool:
    """Whether ``out`` holds a finished result (the file exists and no progress files are beside it)."""
    return out is not None and Path(out).is_file() and not progress_files(Path(out))


def fingerprint_digest(fingerprint: Mapping | None) -> str:
    """Short SHA-256 of a run's fingerprint: what a finished result stores in ``meta["fingerprint"]``."""
    text = json.dumps(fingerprint or {}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def reuse_finished(out: str | os.PathLike | None, fingerprint: Mapping | None, load: Callable, *,
                   resume: bool = False, overwrite: bool | None = None, what: str = "result"):
    """The finished result at ``out`` to return instead of computing it again, or None to compute it.

    The one resume rule of every resumable result (surfaces, lines, eigenvalue maps and the
    stages of multi-stage commands), checked before any work:

    * nothing finished at ``out``, or ``overwrite``: None (compute; an overwrite replaces the
      old result only once the new one is saved);
    * a finished result and ``resume``: it is loaded and returned when its
      ``meta["fingerprint"]`` is the digest of ``fingerprint`` (same inputs), and refused with
      :class:`ResumeError` otherwise (a result of other inputs, or one saved without a fingerprint);
    * a finished result without ``resume`` or ``overwrite``: :class:`OutputError`.

    Parameters
    ----------
    out : path or None
        The result's path (no file: nothing to reuse).
    fingerprint : mapping
        JSON-able description of the run's inputs (as given to :func:`run_grid`).
    load : callable
        ``load(path) -> Result`` (``Surface.load``, ``Result.load``, ...).
    resume, overwrite : bool
        The run's options; ``overwrite=None`` follows :func:`overwriting`.
    what : str
        How messages name the result ("surface", "eigenvalue map", ...).

    Returns
    -------
    Result or None
    """
    overwrite = _OVERWRITE.get() if overwrite is None else bool(overwrite)
    if not finished(out) or overwrite:
        return None
    if not resume:
        raise OutputError(f"{out} holds the finished {what} of an earlier run; pass --resume (resume=True) to reuse "
                          "it (same inputs only) or --overwrite (overwrite=True) to replace it, or choose another "
                          "output path.")
    done = load(out)
    stored = done.meta.get("fingerprint") if isinstance(getattr(done, "meta", None), dict) else None
    if stored != fingerprint_digest(fingerprint):
        why = ("saved without a fingerprint of its inputs" if stored is None
               else "computed from other inputs: checkpoint, data, directions, grid or options")
        raise ResumeError(f"{out} holds the finished {what} of another run ({why}), so --resume cannot reuse it; "
                          "pass --overwrite (overwrite=True) to compute it again, or choose another output path.")
    return done


def check_output(out: str | os.PathLike | None, *, resume: bool = False, overwrite: bool = False) -> list[Path]:
    """Check that a run may write its result to ``out``; return the progress files it continues from.

    The one check every resumable run makes before any work (surfaces, lines and eigenvalue
    maps through :func:`run_grid`):

    * the progress of an earlier run is continued only with ``resume``, discarded only with
      ``overwrite``, and otherwise refused;
    * a finished result is replaced only with ``overwrite`` (and only once the new one is
      saved); callers with ``resume`` first offer it to :func:`reuse_finished`, so a finished
      result that reaches this check with ``resume`` is one of no known inputs and is refused;
    * a progress file that cannot be read is reported as corrupt, before any work.

    Raises
    ------
    OutputError
        ``out`` is a folder, or a finished result that is neither resumed nor overwritten.
    ResumeError
        Progress of an earlier run without ``resume``/``overwrite``, or a corrupt progress file.
    """
    if out is None:
        return []
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"{out} is a folder; a result is written to a file: choose a file path such as "
                          f"{out / 'result.npz'}.")
    existing = progress_files(out)
    if overwrite:
        return []
    if existing and not resume:
        raise ResumeError(f"{existing[0]} holds the progress of an earlier run; pass --resume (resume=True) to "
                          "continue it, or --overwrite (overwrite=True) to start over.")
    if out.exists() and not existing:
        if resume:
            raise OutputError(f"{out} is finished and this run cannot tell whether it has the same inputs; load it "
                              "with Result.load, pass --overwrite (overwrite=True) to compute it again, or choose "
                              "another output path.")
        raise OutputError(f"{out} holds the finished result of an earlier run; pass --overwrite (overwrite=True) "
                          "to replace it (--resume only continues an interrupted run), or choose another output path.")
    for f in existing:
        _read_fingerprint(f)
    return existing


def recorded_threads(folder: str | os.PathLike) -> int | None:
    """The CPU thread count recorded in the progress files inside ``folder`` (the run a resume continues)."""
    for f in sorted(Path(folder).glob("*.progress*.npz")):
        try:
            threads = json.loads(_read_fingerprint(f)).get("threads")
        except (ResumeError, ValueError, AttributeError):
            continue  # run_grid reports a corrupt file when it reaches it
        if isinstance(threads, int) and threads >= 1:
            return threads
    return None


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

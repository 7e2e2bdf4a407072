"""Small file helpers shared by every module that writes: atomic writes and JSON of arrays."""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it over ``path`` only if the block succeeds.

    A crash inside the block never leaves half a file where a good one was, because the
    final ``os.replace`` is atomic on POSIX and Windows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


_HELD_LOCKS: dict[str, int] = {}  # lock files this process holds, with their nesting depth


def check_folder(folder: str | os.PathLike, what: str = "--out") -> Path:
    """Make sure ``folder`` can be an output folder (created when missing); refuse a file or a path through one.

    Raises
    ------
    OutputError
        ``folder`` is an existing file, or cannot be created.
    """
    from .errors import OutputError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder} is an existing file, not a folder; choose a folder for the outputs "
                          "(the file is left as it is).")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or exc
        raise OutputError(f"{what} {folder} cannot be created ({reason}); choose another folder.") from None
    return folder


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, what: str = "this run") -> Iterator[Path]:
    """Hold ``<folder>/.landscape.lock`` while a run writes into ``folder``; a second run there fails at once.

    The lock is an exclusive ``flock`` on the file (released by the OS if the process dies, so
    a killed run never leaves a stale lock behind); the file records the holder's pid and is
    removed when the run ends. Within one process the lock is re-entrant: a command that locks
    its folder may call code that locks it again.

    Raises
    ------
    OutputError
        Another process holds the lock, or ``folder`` is a file.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder = check_folder(folder)
    path = folder / ".landscape.lock"
    key = str(path.resolve())
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key] += 1
        try:
            yield path
        finally:
            _HELD_LOCKS[key] -= 1
        return
    fh = _acquire(path, folder, what)
    _HELD_LOCKS[key] = 1
    try:
        yield path
    finally:
        del _HELD_LOCKS[key]
        path.unlink(missing_ok=True)  # still locked: a run that opened it meanwhile fails or retries (_acquire)
        if created:  # this run made the folder and wrote nothing (it failed early): leave no trace of it
            with contextlib.suppress(OSError):
                folder.rmdir()
        fh.close()


def _acquire(path: Path, folder: Path, what: str):
    """Open and ``flock`` the lock file; retried when the file was removed while we waited for it."""
    import fcntl

    from .errors import OutputError

    for _ in range(5):
        try:
            fh = open(path, "a+")
        except FileNotFoundError:  # the folder's last holder removed it, empty, as we came
            check_folder(folder)
            continue
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise OutputError(f"{folder} is in use by another run (pid {holder}); wait for it to finish or choose "
                              f"another output folder for {what}.") from None
        try:
            same = os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            return fh
        fh.close()  # we locked a file its last holder had just removed: lock the current one
        check_folder(folder)
    raise OutputError(f"{folder}: could not take its lock file {path.name}; try again.")


def check_not_input(path: str | os.PathLike, inputs, what: str = "output") -> Path:
    """Refuse to write ``path`` when it is one of the files the run reads (``inputs``).

    Raises
    ------
    OutputError
        ``path`` resolves to the same file as one of ``inputs``.
    """
    from .errors import OutputError

    path = Path(path)
    target = path.resolve()
    for item in inputs:
        if item is not None and Path(item).resolve() == target:
            raise OutputError(f"the {what} {path} is also an input of this run ({item}); writing it would destroy "
                              "the input: choose another output path.")
    return path


def check_name(name: str, what: str) -> str:
    """A name used as one path component (a report name, a figure id): no separators, not ``.``/``..``.

    Raises
    ------
    OutputError
        The name would write outside its folder.
    """
    from .errors import OutputError

    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
            or "\x00" in name or Path(name).is_absolute():
        raise OutputError(f"{what} {name!r} must be one plain file name (no '/', '..' or absolute paths), so "
                          "that everything is written inside the output folder.")
    return name


def to_jsonable(value, nonfinite: bool = False):
    """Convert numpy arrays and scalars (recursively) to JSON types.

    NaN becomes null and +-inf the strings "inf"/"-inf" (standard JSON has neither), so
    diverged values survive a round trip through a golden file. ``nonfinite=True`` keeps them
    as floats, for JSON that only Python reads back (its ``NaN``/``Infinity`` tokens), so that a
    NaN stays a NaN and not None.
    """
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, nonfinite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, nonfinite) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist(), nonfinite)
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        if nonfinite:
            return value
        if math.isnan(value):
            return None
        return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON atomically (arrays become lists, non-finite numbers null)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_jsonable(obj), indent=1, sort_keys=False))
    return Path(path)

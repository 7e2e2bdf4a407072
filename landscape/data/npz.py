"""Arrays of your own in a NumPy ``.npz`` archive (read with ``allow_pickle=False``: data only).

Keys: ``x`` and ``y``, or ``x_train``/``y_train`` and ``x_test``/``y_test``; optional
``classes`` (strings). ``x`` may be ``(N, d)``, ``(N, H, W)``, ``(N, C, H, W)`` or channels-last
``(N, H, W, C)`` with ``C`` in 1, 3, 4 (recognised when the second axis cannot be channels).
Values: ``uint8`` (and integer or integral float arrays within 0..255) are 8-bit images,
scaled to [0, 1] when used; other floats are used exactly as stored (so data you normalised
yourself stay normalised). ``y`` holds integer labels ``(N,)`` (a column ``(N, 1)`` is accepted).
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .files import Loaded, check_file

CHANNELS = (1, 3, 4)
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, RuntimeError)


def read_npz(path: Path, split: str) -> Loaded:
    """``x``, ``y`` and ``classes`` of ``split`` from an ``.npz`` file."""
    check_file(path, ".npz")
    try:
        npz = np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc}); "
                           "it is truncated or not written by numpy.savez.") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DatasetError(f"{path}: a single .npy array, not an .npz archive; save np.savez(path, x=..., y=...).")
    with npz:
        keys = set(npz.files)
        xk, yk = (f"x_{split}", f"y_{split}") if f"x_{split}" in keys else ("x", "y")
        if xk not in keys or yk not in keys:
            raise DatasetError(f"{path}: needs arrays 'x' and 'y' (or 'x_{split}'/'y_{split}'); found {sorted(keys)}.")
        x, y = _member(npz, xk, path), _member(npz, yk, path)
        classes = _member(npz, "classes", path) if "classes" in keys else None
    x, y = _inputs(x, path, xk), _labels(y, path, yk)
    if classes is None:
        names = [str(i) for i in range(int(y.max()) + 1 if y.size else 0)]
    elif classes.dtype.kind in "USiu" and classes.ndim == 1:
        names = [str(c) for c in classes]
    else:
        raise DatasetError(f"{path}: 'classes' must be a 1-D array of names, got {classes.dtype} {classes.shape}.")
    return Loaded(x, y, names, f"{path} (npz {xk}, {yk})")


def _member(npz, key: str, path: Path) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DatasetError(f"{path}: array {key!r} holds Python objects, which are never unpickled; "
                               "save plain numeric arrays (and classes as strings).") from None
        raise DatasetError(f"{path}: array {key!r} cannot be read ({exc}); the file is truncated or corrupted.") \
            from None
    except _READ_ERRORS as exc:
        raise DatasetError(f"{path}: array {key!r} cannot be read ({type(exc).__name__}: {exc}); "
                           "the file is truncated or corrupted.") from None


def _inputs(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    if x.dtype.kind not in "fiu":
        raise DatasetError(f"{path}: {key!r} must hold numbers (uint8 or float images), got dtype {x.dtype}.")
    if x.ndim == 2:
        x = x[:, None, None, :]
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[1] not in CHANNELS and x.shape[3] in CHANNELS:
            x = np.moveaxis(x, 3, 1)  # channels-last (N, H, W, C), as Keras and PIL keep images
    else:
        raise DatasetError(f"{path}: {key!r} has shape {x.shape}; expected (N, d), (N, H, W), (N, C, H, W) or "
                           "(N, H, W, C).")
    return _as_8bit(x) if _is_8bit(x) else x


def _is_8bit(x: np.ndarray) -> bool:
    """uint8, or integers / integral floats within 0..255 that are not all in [0, 1] (8-bit images in disguise)."""
    if x.dtype == np.uint8:
        return True
    if not x.size:
        return False
    lo, hi = x.min(), x.max()
    if lo < 0 or hi > 255 or (x.dtype.kind == "f" and (hi <= 1 or not np.all(x == np.round(x)))):
        return False
    return True


def _as_8bit(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.uint8 else np.ascontiguousarray(x).astype(np.uint8)


def _labels(y: np.ndarray, path: Path, key: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DatasetError(f"{path}: {key!r} has shape {y.shape}, but labels must be one class index per sample "
                           "(N,); for one-hot labels save y.argmax(1).")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise DatasetError(f"{path}: {key!r} must hold integer class indices, got dtype {y.dtype}.")
    return y.astype(np.int64)

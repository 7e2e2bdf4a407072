"""SVHN, the cropped-digits format (``train_32x32.mat``, ``test_32x32.mat``, ``extra_32x32.mat``).

Each file is a MATLAB v5 file (read with :func:`scipy.io.loadmat`, which parses data and runs
nothing) holding ``X``, ``uint8`` images of shape ``(32, 32, 3, N)`` (height, width, channel,
sample), and ``y`` of shape ``(N, 1)`` with labels 1..10, where 10 stands for the digit 0.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .files import Layout, Loaded, locate

SVHN_CLASSES = [str(i) for i in range(10)]


def read_svhn(root: Path, split: str, extra: bool = False) -> Loaded:
    """SVHN ``split`` from ``root``, the folder holding the ``.mat`` files.

    ``extra=True`` appends ``extra_32x32.mat`` to the training split, as many papers do.
    """
    names = [f"{split}_32x32.mat"] + (["extra_32x32.mat"] if extra and split == "train" else [])
    files = tuple((n,) for n in names)
    _, paths = locate(root, [Layout(folder, files) for folder in ("", "svhn", "SVHN")], f"SVHN {split} file", "svhn")
    parts = [_read_mat(p) for p in paths]
    x = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y = np.concatenate([p[1] for p in parts])
    return Loaded(x, y, SVHN_CLASSES, f"{paths[0].parent} (SVHN {' + '.join(p.name for p in paths)})")


def _read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    try:
        mat = loadmat(path, variable_names=["X", "y"])
    except (ValueError, TypeError, OSError, KeyError, IndexError, NotImplementedError, MemoryError) as exc:
        raise DatasetError(f"{path}: not a readable MATLAB file ({type(exc).__name__}: {exc}); "
                           "expected SVHN's cropped-digits .mat as distributed.") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None:
        raise DatasetError(f"{path}: needs variables 'X' and 'y' (SVHN cropped digits), found "
                           f"{sorted(k for k in mat if not k.startswith('__'))}.")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
        raise DatasetError(f"{path}: 'X' should be uint8 images of shape (32, 32, 3, N), got {x.dtype} {x.shape}.")
    y = np.asarray(y).reshape(-1)
    if len(y) != x.shape[3]:
        raise DatasetError(f"{path}: 'X' holds {x.shape[3]} images but 'y' {len(y)} labels; the file is damaged.")
    if y.dtype.kind not in "iuf" or not np.all((y >= 1) & (y <= 10) & (y == np.round(y))):
        raise DatasetError(f"{path}: SVHN labels must be 1..10 (10 is the digit 0), found values in "
                           f"[{y.min()}, {y.max()}].")
    # (H, W, C, N) -> (N, C, H, W); label 10 is the digit 0
    return np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1))), (y.astype(np.int64) % 10)

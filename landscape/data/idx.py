"""MNIST and Fashion-MNIST in the IDX format of LeCun et al., plain or gzipped.

An IDX file is a 4-byte magic number (two zero bytes, a type byte, 0x08 for unsigned bytes,
and the number of dimensions), one big-endian uint32 per dimension, then the values.
Images are ``(N, 28, 28)`` and become ``(N, 1, 28, 28)`` ``uint8``; labels are ``(N,)``.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .files import Layout, Loaded, locate

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
UBYTE = 0x08


def _names(prefix: str, what: str, idx: int) -> tuple[str, ...]:
    """The names a file goes by: LeCun's (also torchvision's) and Kaggle's, plain or gzipped.

    ``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte``, each optionally ``.gz``.
    """
    stems = (f"{prefix}-{what}-idx{idx}-ubyte", f"{prefix}-{what}.idx{idx}-ubyte")
    return tuple(s + ext for s in stems for ext in ("", ".gz"))


def read_mnist(root: Path, split: str) -> Loaded:
    """MNIST from ``root``: the IDX files themselves, ``raw/`` or a torchvision root (``MNIST/raw``)."""
    return _read(root, split, "mnist", ("MNIST/raw", "MNIST", "mnist"), MNIST_CLASSES, "MNIST")


def read_fashion_mnist(root: Path, split: str) -> Loaded:
    """Fashion-MNIST from ``root``: the IDX files, ``raw/`` or a torchvision root (``FashionMNIST/raw``)."""
    return _read(root, split, "fashion-mnist", ("FashionMNIST/raw", "FashionMNIST", "fashion-mnist", "fashion"),
                 FASHION_CLASSES, "Fashion-MNIST")


def _read(root: Path, split: str, kind: str, folders: tuple[str, ...], classes: list[str], what: str) -> Loaded:
    prefix = "train" if split == "train" else "t10k"
    files = (_names(prefix, "images", 3), _names(prefix, "labels", 1))
    layouts = [Layout(folder, files) for folder in ("", "raw", *folders)]
    _, (images_path, labels_path) = locate(root, layouts, f"{what} {split} files", kind)
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise DatasetError(f"{kind}:{root}: {images_path.name} holds {len(images)} images but {labels_path.name} "
                           f"holds {len(labels)} labels; the files do not belong together or one is incomplete.")
    return Loaded(images[:, None], labels.astype(np.int64), classes, f"{images_path.parent} ({what} IDX)")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The array in an unsigned-byte IDX file with ``ndim`` dimensions (plain or ``.gz``).

    Raises
    ------
    DatasetError
        Not IDX (bad magic number), another value type, another number of dimensions, a
        truncated header or body, or a damaged gzip stream.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot be read ({exc}); is it a complete IDX file?") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic number); expected the MNIST files as distributed.")
    if raw[2] != UBYTE:
        raise DatasetError(f"{path}: IDX value type 0x{raw[2]:02x}, but MNIST files hold unsigned bytes (0x08).")
    if raw[3] != ndim:
        raise DatasetError(f"{path}: the header says {raw[3]} dimensions, but this file should have {ndim}; "
                           "are images and labels swapped, or is the header damaged?")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: the header is truncated ({len(raw)} bytes, needs {header}).")
    dims = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    body = len(raw) - header
    if body != int(np.prod(dims, dtype=np.int64)):
        raise DatasetError(f"{path}: header says shape {dims} ({int(np.prod(dims, dtype=np.int64))} values) but the "
                           f"file holds {body}; truncated?")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)

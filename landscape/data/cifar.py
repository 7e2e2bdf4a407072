"""CIFAR-10 and CIFAR-100, in both versions the authors distribute.

* python version (``cifar-10-batches-py/``, ``cifar-100-python/``): pickled dicts, read with
  :mod:`landscape.data.safe_pickle` (nothing in the file is executed); Python 2 pickles with
  ``bytes`` keys and Python 3 pickles with ``str`` keys both work;
* binary version (``cifar-10-batches-bin/``, ``cifar-100-binary/``): fixed-size records,
  ``<label><3072 pixels>`` for CIFAR-10 and ``<coarse><fine><3072 pixels>`` for CIFAR-100.

Images are 3 x 32 x 32, stored channel-major (1024 red, 1024 green, 1024 blue, row-major),
which is already ``(C, H, W)``; they stay ``uint8``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DatasetError
from . import safe_pickle
from .files import Layout, Loaded, locate

PIXELS = 3 * 32 * 32
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_TRAIN = tuple((f"data_batch_{i}",) for i in range(1, 6))
CIFAR10_TEST = (("test_batch",),)


def read_cifar10(root: Path, split: str) -> Loaded:
    """CIFAR-10 from ``root``: a torchvision root, the extracted python or binary folder, or their files."""
    py = CIFAR10_TRAIN if split == "train" else CIFAR10_TEST
    binary = tuple((names[0] + ".bin",) for names in py)
    layouts = [Layout("cifar-10-batches-py", py, "python"), Layout("", py, "python"),
               Layout("cifar-10-batches-bin", binary, "binary"), Layout("", binary, "binary")]
    layout, files = locate(root, layouts, f"CIFAR-10 {split} batches", "cifar10")
    folder = files[0].parent
    if layout.version == "python":
        x, y = _python_batches(files, "labels", "CIFAR-10 batch")
        classes = _pickled_names(folder / "batches.meta", "label_names", 10) or CIFAR10_CLASSES
    else:
        x, y = _binary_records(files, label_bytes=1, label_index=0)
        if y.max() > 9:
            raise DatasetError(f"{files[0]}: CIFAR-10 labels go up to {y.max()}; is this CIFAR-100 (use cifar100:)?")
        classes = _text_names(folder / "batches.meta.txt", 10) or CIFAR10_CLASSES
    return Loaded(x, y, classes, f"{folder} (CIFAR-10 {layout.version} version)")


def read_cifar100(root: Path, split: str, labels: str = "fine") -> Loaded:
    """CIFAR-100 from ``root`` with its ``fine`` (100 classes) or ``coarse`` (20 superclasses) labels."""
    layouts = [Layout("cifar-100-python", ((split,),), "python"), Layout("", ((split,),), "python"),
               Layout("cifar-100-binary", ((f"{split}.bin",),), "binary"), Layout("", ((f"{split}.bin",),), "binary")]
    layout, files = locate(root, layouts, f"CIFAR-100 {split} file", "cifar100")
    folder, n = files[0].parent, 100 if labels == "fine" else 20
    if layout.version == "python":
        x, y = _python_batches(files, f"{labels}_labels", "CIFAR-100 file")
        classes = _pickled_names(folder / "meta", f"{labels}_label_names", n)
    else:
        x, y = _binary_records(files, label_bytes=2, label_index=1 if labels == "fine" else 0)
        classes = _text_names(folder / f"{labels}_label_names.txt", n)
    return Loaded(x, y, classes or [str(i) for i in range(n)], f"{folder} (CIFAR-100 {layout.version} version, "
                                                              f"{labels} labels)")


def _python_batches(files: list[Path], label_key: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for f in files:
        batch = safe_pickle.text_keys(safe_pickle.load(f, what))
        if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
            found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
            raise DatasetError(f"{f}: not a {what}: expected a dict with 'data' and {label_key!r}, found {found}.")
        data = batch["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
            got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise DatasetError(f"{f}: 'data' should be a uint8 array of shape (N, {PIXELS}), got {got}; "
                               "the file is not a CIFAR batch or is damaged.")
        labels = np.asarray(batch[label_key])
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
            raise DatasetError(f"{f}: {label_key!r} should be {len(data)} integer labels, got {labels.dtype} "
                               f"of shape {labels.shape}; the file is damaged.")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels.astype(np.int64))
    return (np.concatenate(xs) if len(xs) > 1 else xs[0]), np.concatenate(ys)


def _binary_records(files: list[Path], label_bytes: int, label_index: int) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + PIXELS
    xs, ys = [], []
    for f in files:
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise DatasetError(f"{f}: size {raw.size} bytes is not a multiple of the {record}-byte CIFAR record; "
                               "is this the binary version of the dataset, and is the file complete?")
        raw = raw.reshape(-1, record)
        ys.append(raw[:, label_index].astype(np.int64))
        xs.append(np.ascontiguousarray(raw[:, label_bytes:]).reshape(-1, 3, 32, 32))
    return (np.concatenate(xs) if len(xs) > 1 else xs[0]), np.concatenate(ys)


def _pickled_names(path: Path, key: str, n: int) -> list[str] | None:
    if not path.is_file():
        return None
    meta = safe_pickle.text_keys(safe_pickle.load(path, "CIFAR meta file"))
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)) or len(names) < n:
        return None
    return [safe_pickle.text(v) for v in names[:n]]


def _text_names(path: Path, n: int) -> list[str] | None:
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return names[:n] if len(names) >= n else None

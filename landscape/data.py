"""Datasets: the embedded ``digits`` and loaders for the real files users have.

``load_dataset(spec, split)`` takes a spec string:

=====================  ===============================================================
``digits``             scikit-learn's bundled 8x8 digits, stratified 80/20 split (seed 0)
``cifar10:DIR``        CIFAR-10 binary batches (``data_batch_1.bin`` ... ``test_batch.bin``)
``cifar100:DIR``       CIFAR-100 binary files (``train.bin``, ``test.bin``), fine labels
``mnist:DIR``          MNIST IDX files, gzipped or not (``train-images-idx3-ubyte[.gz]`` ...)
``fer2013:FILE.csv``   FER-2013 CSV with columns ``emotion,pixels,Usage``
``npz:FILE.npz``       arrays ``x`` and ``y`` (or ``x_<split>``/``y_<split>``), optional ``classes``
=====================  ===============================================================

Images come back as float32 ``(N, C, H, W)`` in [0, 1]; the normalisation a model was
trained with lives in the checkpoint's meta and is applied by ``Checkpoint.prepare``.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import DatasetError

SPLITS = ("train", "test")


@dataclasses.dataclass
class Dataset:
    """Images, labels and class names of one split.

    Attributes
    ----------
    x : np.ndarray
        float32 images ``(N, C, H, W)`` scaled to [0, 1].
    y : np.ndarray
        int64 labels ``(N,)``.
    classes : list of str
        Class names, indexed by label.
    name : str
        The spec it was loaded from, plus the split.
    """

    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    name: str = ""

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise DatasetError(f"dataset {self.name!r}: {len(self.x)} images but {len(self.y)} labels; "
                               "the file is inconsistent.")
        if self.y.size and (self.y.min() < 0 or self.y.max() >= len(self.classes)):
            raise DatasetError(f"dataset {self.name!r}: labels span [{self.y.min()}, {self.y.max()}] but there are "
                               f"{len(self.classes)} classes; fix the labels or the class list.")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (``x.shape[1:]``)."""
        return tuple(self.x.shape[1:])

    def subset(self, n: int | None, seed: int = 0) -> "Dataset":
        """A seeded random subset of ``n`` samples (all of them when ``n`` is None or too large)."""
        if n is None or n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self), size=int(n), replace=False))
        return Dataset(self.x[idx], self.y[idx], self.classes, f"{self.name}[subset {n}, seed {seed}]")

    def tensors(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` as torch tensors on ``device``."""
        return torch.as_tensor(self.x, device=device), torch.as_tensor(self.y, device=device)

    def batches(self, batch_size: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                transform=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive batches ``(x, y)`` on ``device``, in order, for data too large to hold there at once.

        Only one batch lives on the device at a time; on CUDA it is copied from pinned host
        memory without blocking. ``transform`` (for example ``Checkpoint.normalize``) is applied
        to each batch after the conversion to ``dtype``, so the values equal those of
        :meth:`tensors` transformed as a whole.

        Parameters
        ----------
        batch_size : int
            Samples per batch (the last one may be smaller).
        device : str or torch.device
        dtype : torch.dtype
            Floating type of the inputs on the device.
        transform : callable, optional
            ``x -> x`` applied on the device.

        Yields
        ------
        (torch.Tensor, torch.Tensor)
            Inputs ``(b, ...)`` and int64 labels ``(b,)``.
        """
        from .errors import check_scalar

        batch_size = check_scalar(batch_size, "batch_size", int, min=1)
        device = torch.device(device)
        pin = device.type == "cuda"
        for i in range(0, len(self), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(self.x[i:i + batch_size]))
            yb = torch.from_numpy(np.ascontiguousarray(self.y[i:i + batch_size]))
            if pin:
                xb, yb = xb.pin_memory(), yb.pin_memory()
            xb = xb.to(device, non_blocking=pin).to(dtype)
            yb = yb.to(device, non_blocking=pin)
            yield (transform(xb) if transform is not None else xb), yb


def load_dataset(spec: str = "digits", split: str = "test") -> Dataset:
    """Load a dataset split from a spec string (see the module docstring).

    Parameters
    ----------
    spec : str
        ``"digits"`` or ``"<kind>:<path>"``.
    split : {"train", "test"}
        Which split. For ``npz`` files without split keys the whole file is returned.

    Raises
    ------
    DatasetError
        Unknown kind, missing path, wrong format or inconsistent file.
    """
    if split not in SPLITS:
        raise DatasetError(f"split {split!r} is not one of {SPLITS}.")
    kind, _, path = spec.partition(":")
    if not path and spec.endswith(".npz"):
        kind, path = "npz", spec
    if kind not in _LOADERS:
        raise DatasetError(f"unknown dataset {spec!r}; use one of: digits, cifar10:DIR, cifar100:DIR, mnist:DIR, "
                           "fer2013:FILE.csv, npz:FILE.npz.")
    if kind != "digits":
        if not path:
            raise DatasetError(f"dataset {spec!r} needs a path: write it as {kind}:PATH.")
        if not Path(path).exists():
            raise DatasetError(f"dataset {spec!r}: {path} does not exist; check the path.")
    data = _LOADERS[kind](path, split)
    data.name = f"{spec}/{split}"
    return data


def spec_needs_file(spec: str) -> bool:
    """Whether loading ``spec`` reads files named in it (everything but the embedded ``digits``)."""
    kind, _, path = str(spec).partition(":")
    return bool(path) or kind not in ("digits",)


def as_dataset(data, subset: int | None = None, seed: int = 0, split: str = "test") -> Dataset:
    """Any form of data a user has, as a :class:`Dataset`, optionally a seeded subset.

    Parameters
    ----------
    data : Dataset, str, (x, y) pair, torch Dataset or DataLoader
        A :class:`Dataset`; a spec string (loads ``split``); a pair of arrays or tensors
        ``(x, y)`` with ``x`` shaped ``(N, ...)`` and integer labels ``y`` ``(N,)``; a map-style
        ``torch.utils.data.Dataset`` whose items are ``(x, y)``; or a ``DataLoader`` yielding
        ``(x, y)`` batches (read once, in its order). Inputs given as tensors are used as they
        are: no [0, 1] scaling is assumed, and a checkpoint's normalisation still applies.
    subset : int, optional
        A seeded random subset of this many samples.
    seed : int
        Seed of the subset.
    split : {"train", "test"}
        Split a spec string loads.

    Returns
    -------
    Dataset

    Raises
    ------
    DatasetError
        Data of another kind, or pairs that are not ``(inputs, integer labels)`` of equal length.
    """
    if isinstance(data, str):
        data = load_dataset(data, split=split)
    elif not isinstance(data, Dataset):
        data = _from_tensors(data)
    return data.subset(subset, seed=seed)


def _from_tensors(data) -> Dataset:
    """A Dataset from an ``(x, y)`` pair, a map-style torch Dataset or a DataLoader."""
    from torch.utils.data import DataLoader
    from torch.utils.data import Dataset as TorchDataset

    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y, name = data[0], data[1], "tensors"
    elif isinstance(data, (DataLoader, TorchDataset)):
        try:
            batches = list(data) if isinstance(data, DataLoader) else [data[i] for i in range(len(data))]
            if not isinstance(data, DataLoader):
                batches = [(torch.as_tensor(np.asarray(b[0]))[None], torch.as_tensor(np.asarray(b[1])).reshape(1))
                           for b in batches]
            x = torch.cat([torch.as_tensor(b[0]) for b in batches])
            y = torch.cat([torch.as_tensor(b[1]).reshape(-1) for b in batches])
        except (TypeError, IndexError, ValueError, RuntimeError) as exc:
            raise DatasetError(f"could not read (inputs, labels) pairs from the {type(data).__name__} ({exc}); its "
                               "items or batches must be (x, y).") from exc
        name = type(data).__name__
    else:
        raise DatasetError(f"data must be a Dataset, a dataset spec string, an (x, y) pair, a torch Dataset or a "
                           f"DataLoader, got {type(data).__name__}.")
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DatasetError(f"labels must be a 1-D array of integer class indices, got dtype {y.dtype} and shape "
                           f"{y.shape}.")
    if x.dtype.kind not in "fiu" or x.ndim < 2:
        raise DatasetError(f"inputs must be a numeric array (N, ...), got dtype {x.dtype} and shape {x.shape}.")
    n_classes = int(y.max()) + 1 if y.size else 0
    return Dataset(x.astype(np.float32, copy=False), y.astype(np.int64), [str(c) for c in range(n_classes)],
                   f"{name}[{len(y)}]")


# -- digits --------------------------------------------------------------------------------
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def _digits(_path: str, split: str) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=DIGITS_TEST_FRACTION,
                                           stratify=y, random_state=DIGITS_SPLIT_SEED)
    idx = np.sort(idx_train if split == "train" else idx_test)
    return Dataset(x[idx], y[idx], [str(c) for c in range(10)])


# -- CIFAR ---------------------------------------------------------------------------------
def _read_records(files: list[Path], label_bytes: int, label_index: int) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + 3 * 32 * 32
    xs, ys = [], []
    for f in files:
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise DatasetError(f"{f}: size {raw.size} bytes is not a multiple of the {record}-byte CIFAR record; "
                               "is this the binary version of the dataset, and is the file complete?")
        raw = raw.reshape(-1, record)
        ys.append(raw[:, label_index].astype(np.int64))
        xs.append(raw[:, label_bytes:].reshape(-1, 3, 32, 32))
    return np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys)


def _find(root: Path, names: list[str], what: str) -> list[Path]:
    found = [root / n for n in names if (root / n).exists()]
    if not found:
        raise DatasetError(f"{root}: no {what} found (looked for {', '.join(names)}).")
    return found


def _class_names(root: Path, filename: str, n: int) -> list[str]:
    f = root / filename
    if f.exists():
        names = [line.strip() for line in f.read_text().splitlines() if line.strip()]
        if len(names) >= n:
            return names[:n]
    return [str(i) for i in range(n)]


def _cifar10(path: str, split: str) -> Dataset:
    root = Path(path)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    x, y = _read_records(_find(root, names, f"CIFAR-10 {split} batches"), 1, 0)
    if y.max() > 9:
        raise DatasetError(f"{root}: CIFAR-10 labels go up to {y.max()}; is this CIFAR-100 (use cifar100:)?")
    return Dataset(x, y, _class_names(root, "batches.meta.txt", 10))


def _cifar100(path: str, split: str) -> Dataset:
    root = Path(path)
    x, y = _read_records(_find(root, [f"{split}.bin"], f"CIFAR-100 {split} file"), 2, 1)
    return Dataset(x, y, _class_names(root, "fine_label_names.txt", 100))


# -- MNIST ---------------------------------------------------------------------------------
def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot be read ({exc}); is it a complete IDX file?") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file (bad magic number).")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: header says shape {tuple(dims)} but the file holds {body.size} values; truncated?")
    return body.reshape(dims)


def _mnist(path: str, split: str) -> Dataset:
    root = Path(path)
    prefix = "train" if split == "train" else "t10k"

    def one(stem):
        return _find(root, [stem, stem + ".gz"], f"MNIST file {stem}")[0]

    images = _read_idx(one(f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(one(f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    if images.ndim != 3:
        raise DatasetError(f"{root}: MNIST images should be 3-dimensional IDX, got {images.ndim} dimensions.")
    return Dataset(images[:, None].astype(np.float32) / 255.0, labels, [str(i) for i in range(10)])


# -- FER-2013 ------------------------------------------------------------------------------
FER_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
FER_USAGE = {"train": {"Training"}, "test": {"PublicTest", "PrivateTest"}}


def _fer2013(path: str, split: str) -> Dataset:
    xs, ys = [], []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"emotion", "pixels", "Usage"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{path}: not a FER-2013 CSV, missing column(s) {sorted(missing)}.")
        for lineno, row in enumerate(reader, start=2):
            if row["Usage"] not in FER_USAGE[split]:
                continue
            try:
                pixels = np.array(row["pixels"].split(), dtype=np.float32)
                label = int(row["emotion"])
            except ValueError as exc:
                raise DatasetError(f"{path}, line {lineno}: {exc}.") from exc
            if pixels.size != 48 * 48:
                raise DatasetError(f"{path}, line {lineno}: {pixels.size} pixels, expected 2304 (48x48).")
            xs.append(pixels.reshape(1, 48, 48) / 255.0)
            ys.append(label)
    if not xs:
        raise DatasetError(f"{path}: no rows with Usage in {sorted(FER_USAGE[split])} for split {split!r}.")
    return Dataset(np.stack(xs), np.array(ys, dtype=np.int64), FER_CLASSES)


# -- npz -----------------------------------------------------------------------------------
def _npz(path: str, split: str) -> Dataset:
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({exc}).") from exc
    with npz:
        keys = set(npz.files)
        xk, yk = (f"x_{split}", f"y_{split}") if f"x_{split}" in keys else ("x", "y")
        if xk not in keys or yk not in keys:
            raise DatasetError(f"{path}: needs arrays 'x' and 'y' (or 'x_{split}'/'y_{split}'); found {sorted(keys)}.")
        x = np.asarray(npz[xk], dtype=np.float32)
        y = np.asarray(npz[yk]).astype(np.int64)
        classes = [str(c) for c in npz["classes"]] if "classes" in keys else [str(i) for i in range(int(y.max()) + 1)]
    if x.ndim == 2:
        x = x[:, None, None, :]
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim != 4:
        raise DatasetError(f"{path}: 'x' has {x.ndim} dimensions; expected (N, d), (N, H, W) or (N, C, H, W).")
    if x.size and x.max() > 1.0 + 1e-6:
        x = x / 255.0 if x.max() <= 255 else x
    return Dataset(x, y, classes)


_LOADERS = {"digits": _digits, "cifar10": _cifar10, "cifar100": _cifar100, "mnist": _mnist,
            "fer2013": _fer2013, "npz": _npz}


def normalization_of(data: Dataset) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation of ``data`` (what training records in meta)."""
    mean = data.x.mean(axis=(0, 2, 3))
    std = data.x.std(axis=(0, 2, 3)) + 1e-8
    return {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}


__all__ = ["Dataset", "load_dataset", "normalization_of", "spec_needs_file", "SPLITS"]

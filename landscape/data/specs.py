"""Dataset specs (``cifar10:~/data``, ``imagefolder:faces?resize=48&grayscale=1``) and :func:`load_dataset`.

A spec is ``KIND:PATH`` with optional ``?option=value&...``; the kinds and their options are
in :data:`KINDS` (and the table of :mod:`landscape.data`). ``~`` in a path is expanded.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import DatasetError, did_you_mean
from .dataset import Dataset

SPLITS = ("train", "test")


# -- option parsers: a spec gives strings, the API gives Python values ------------------------
def _boolean(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on", ""):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise DatasetError(f"option {name}={value!r}: give true or false (1 or 0).")


def _size(value: Any, name: str) -> tuple[int, int]:
    """``48`` or ``"48"`` -> (48, 48); ``"32x40"`` or ``(32, 40)`` -> (H, W) = (32, 40)."""
    parts = value if isinstance(value, (tuple, list)) else str(value).lower().split("x")
    try:
        sizes = [int(v) for v in ([parts] if isinstance(parts, int) else parts)]
    except (TypeError, ValueError):
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1 or max(sizes) > 4096:
        raise DatasetError(f"option {name}={value!r}: give a size N or HxW in pixels (1..4096), e.g. 48 or 32x32.")
    return sizes[0], sizes[-1]


def _choice(*choices: str) -> Callable[[Any, str], str]:
    def parse(value: Any, name: str) -> str:
        if str(value) not in choices:
            raise DatasetError(f"option {name}={value!r} is not one of {', '.join(choices)}.")
        return str(value)

    return parse


def _usage(value: Any, name: str) -> tuple[str, ...]:
    from .fer import USAGES

    items = list(value) if isinstance(value, (tuple, list)) else str(value).replace("+", ",").split(",")
    items = [str(v).strip() for v in items if str(v).strip()]
    bad = [v for v in items if v not in USAGES]
    if bad or not items:
        raise DatasetError(f"option {name}={value!r}: give one or more of {', '.join(USAGES)}, separated by commas.")
    return tuple(items)


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of dataset spec: its reader, syntax, native sample shape and options."""

    name: str
    reader: str  # "module:function" inside landscape.data
    syntax: str
    shape: tuple[int, ...] | None
    options: dict[str, Callable[[Any, str], Any]]
    doc: str
    needs_path: bool = True

    def read(self, path: Path | None, split: str, **options):
        """Run this kind's reader (imported on first use) on ``path``."""
        module, _, func = self.reader.partition(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), func)(path, split, **options)


KINDS: dict[str, Kind] = {k.name: k for k in [
    Kind("digits", "digits:read_digits", "digits", (1, 8, 8), {},
         "scikit-learn's embedded 8x8 digits, stratified 80/20 split (seed 0)", needs_path=False),
    Kind("cifar10", "cifar:read_cifar10", "cifar10:DIR", (3, 32, 32), {},
         "CIFAR-10, python (cifar-10-batches-py) or binary (cifar-10-batches-bin) version, or a folder holding one"),
    Kind("cifar100", "cifar:read_cifar100", "cifar100:DIR", (3, 32, 32), {"labels": _choice("fine", "coarse")},
         "CIFAR-100, python (cifar-100-python) or binary version; labels=fine (100, default) or coarse (20)"),
    Kind("mnist", "idx:read_mnist", "mnist:DIR", (1, 28, 28), {},
         "MNIST IDX files, plain or .gz, or a torchvision root (MNIST/raw)"),
    Kind("fashion-mnist", "idx:read_fashion_mnist", "fashion-mnist:DIR", (1, 28, 28), {},
         "Fashion-MNIST IDX files, plain or .gz, or a torchvision root (FashionMNIST/raw)"),
    Kind("svhn", "svhn:read_svhn", "svhn:DIR", (3, 32, 32), {"extra": _boolean},
         "SVHN train_32x32.mat / test_32x32.mat (label 10 is digit 0); extra=1 adds extra_32x32.mat to train"),
    Kind("fer2013", "fer:read_fer2013", "fer2013:FILE.csv", (1, 48, 48), {"usage": _usage},
         "FER-2013 CSV (emotion, pixels, Usage); test = PublicTest+PrivateTest unless usage=PrivateTest etc."),
    Kind("imagefolder", "imagefolder:read_imagefolder", "imagefolder:DIR", None,
         {"resize": _size, "grayscale": _boolean},
         "one subfolder per class (RAF-DB, CK+), PNG/JPEG...; train/ and test/ subfolders give the splits; "
         "resize=HxW, grayscale=1"),
    Kind("npz", "npz:read_npz", "npz:FILE.npz", None, {},
         "arrays x and y (or x_<split>/y_<split>), optional classes"),
]}
ALIASES = {"fashionmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fer": "fer2013"}


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """``"kind:path?a=1&b=2"`` -> ``(kind, path, {"a": "1", "b": "2"})``; a bare ``*.npz`` path is ``npz``."""
    if not isinstance(spec, (str, os.PathLike)):
        raise DatasetError(f"a dataset spec must be a string such as 'cifar10:DIR', got {type(spec).__name__}.")
    text = os.fspath(spec).strip()
    cut = min([i for i in (text.find(":"), text.find("?")) if i >= 0] or [len(text)])
    kind, rest = text[:cut], text[cut + 1:] if text[cut:cut + 1] == ":" else text[cut:]
    kind = ALIASES.get(kind.lower(), kind.lower())
    if kind not in KINDS and text.lower().split("?")[0].endswith(".npz"):
        kind, rest = "npz", text
    options: dict[str, str] = {}
    path, qmark, query = rest.rpartition("?")
    pairs = [p for p in query.split("&") if p]
    if qmark and all("=" in p or p.isidentifier() for p in pairs):
        for p in pairs:
            key, _, value = p.partition("=")
            options[key.strip()] = value.strip()
    else:
        path = rest
    return kind, path, options


def load_dataset(spec: str = "digits", split: str = "test", **options: Any) -> Dataset:
    """Load a dataset split from a spec string (the kinds are listed in :mod:`landscape.data`).

    Parameters
    ----------
    spec : str
        ``"digits"`` or ``"<kind>:<path>"``, optionally with ``?option=value&...``; ``~`` is expanded.
    split : {"train", "test"}
        Which split. Files that hold one split only (an ``.npz`` without split keys, a FER CSV
        without ``Usage``, an image folder without ``train/``/``test/``) are returned whole.
    **options
        The kind's options as Python values (``resize=(48, 48)``, ``grayscale=True``,
        ``labels="coarse"``, ``usage=("PrivateTest",)``, ``extra=True``); the same as in the spec.

    Returns
    -------
    Dataset
        Named ``"<spec>/<split>"``; ``source`` says which files were read.

    Raises
    ------
    DatasetError
        Unknown kind or option, missing path, a folder without the dataset (the message lists
        what was looked for), wrong format, truncated or inconsistent files.
    """
    if split not in SPLITS:
        raise DatasetError(f"split {split!r} is not one of {SPLITS}.")
    kind_name, path, given = parse_spec(spec)
    kind = KINDS.get(kind_name)
    if kind is None:
        close = difflib.get_close_matches(kind_name, KINDS, n=1)
        raise DatasetError(f"unknown dataset {str(spec)!r}.{f' Did you mean {close[0]!r}?' if close else ''} Write "
                           f"it as {', '.join(k.syntax for k in KINDS.values())}.")
    clash = sorted(set(given) & set(options))
    if clash:
        raise DatasetError(f"option {clash[0]!r} is given both in the spec {str(spec)!r} and as an argument; "
                           "give it once.")
    merged = {**given, **options}
    for key in merged:
        if key not in kind.options:
            hint = did_you_mean(key, kind.options) if kind.options else " It takes no options."
            raise DatasetError(f"dataset {str(spec)!r}: unknown option {key!r} for {kind.name}.{hint}")
    parsed = {key: kind.options[key](value, key) for key, value in merged.items()}
    if kind.needs_path:
        if not path:
            raise DatasetError(f"dataset {str(spec)!r} needs a path: write it as {kind.syntax}.")
        where = Path(os.path.expanduser(path))
        if not where.exists():
            raise DatasetError(f"dataset {str(spec)!r}: {where} does not exist; check the path.")
    elif path:
        raise DatasetError(f"dataset {str(spec)!r}: {kind.name} is built in and takes no path; write {kind.syntax}.")
    else:
        where = None
    loaded = kind.read(where, split, **parsed)
    name = os.fspath(spec) + ("" if not options else ("&" if "?" in os.fspath(spec) else "?") +
                              "&".join(f"{k}={_text(v)}" for k, v in options.items()))
    return Dataset(loaded.x, loaded.y, loaded.classes, f"{name}/{split}", source=loaded.source)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (tuple, list)):
        return ("x" if all(isinstance(v, int) for v in value) else ",").join(str(v) for v in value)
    return str(value)


def spec_needs_file(spec: str) -> bool:
    """Whether loading ``spec`` reads files named in it (everything but the embedded ``digits``)."""
    kind, _, path = str(spec).partition(":")
    return bool(path) or kind not in ("digits",)


def shape_hint(expected: tuple[int, ...]) -> str:
    """How to get inputs of shape ``expected``: the readers whose images have it, and imagefolder's resize."""
    expected = tuple(int(v) for v in expected)
    fits = [k.syntax for k in KINDS.values() if k.shape == expected]
    parts = [f"use {' or '.join(fits)}"] if fits else []
    if len(expected) == 3 and expected[0] in (1, 3):
        grey = "&grayscale=1" if expected[0] == 1 else "&grayscale=0"
        parts.append(f"resize an image folder with imagefolder:DIR?resize={expected[1]}x{expected[2]}{grey}")
    return "; or ".join(parts) if parts else "give data of that shape"


def as_dataset(data, subset: int | None = None, seed: int = 0, split: str = "test") -> Dataset:
    """Any form of data a user has, as a :class:`Dataset`, optionally a seeded subset.

    Parameters
    ----------
    data : Dataset, str, (x, y) pair, torch Dataset or DataLoader
        A :class:`Dataset`; a spec string (loads ``split``); a pair of arrays or tensors
        ``(x, y)`` with ``x`` shaped ``(N, ...)`` and integer labels ``y`` ``(N,)``; a map-style
        ``torch.utils.data.Dataset`` whose items are ``(x, y)``; or a ``DataLoader`` yielding
        ``(x, y)`` batches (read once, in its order). Inputs given as tensors are used as they
        are: no [0, 1] scaling is assumed (``uint8`` too becomes float32 0..255), and a
        checkpoint's normalisation still applies.
    subset : int, optional
        A seeded, stratified random subset of this many samples (:meth:`Dataset.subset`).
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
    import torch
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

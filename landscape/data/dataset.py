"""The :class:`Dataset`: images, labels and class names of one split, kept compactly in host memory.

8-bit images stay ``uint8`` in host memory (a quarter of float32) and become float32 in
[0, 1] only when they are used: per batch in :meth:`Dataset.batches`, or as a whole in
:meth:`Dataset.tensors` and :attr:`Dataset.x`. Every path converts with the same function
(:func:`to_float`), so streamed and whole-split values are identical.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import DatasetError, check_scalar

#: Divisor that maps 8-bit pixel values to [0, 1].
PIXEL_MAX = 255
#: A channel mean at or above this, with no negative input anywhere, marks raw (unnormalised) intensities.
RAW_MEAN_THRESHOLD = 0.1
# samples per chunk when statistics are computed: bounded memory for any split size
_STATS_ELEMENTS = 1 << 22


class NormalizationWarning(UserWarning):
    """A checkpoint without a recorded normalisation meets inputs that look unnormalised."""


def to_float(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inputs as floats: ``uint8`` images divided by 255 (to [0, 1]), floats converted to ``dtype``.

    The one conversion every path uses (whole split, streamed batches, any device), so their
    values agree bit for bit. Division (correctly rounded on every device) rather than a
    multiplication by 1/255 keeps ``uint8 -> float32`` equal to ``np.float32(v) / 255``.
    """
    if x.dtype == torch.uint8:
        return x.to(dtype).div_(PIXEL_MAX)
    return x.to(dtype)


class Dataset:
    """Images, labels and class names of one split.

    Parameters
    ----------
    x : array-like
        Inputs ``(N, ...)``, images as ``(N, C, H, W)``. ``uint8`` arrays are 8-bit images,
        kept as ``uint8`` and scaled to [0, 1] when used; any other numeric array is stored as
        float32 and used as it is. A read-only (``np.frombuffer``) or non-contiguous array is
        copied once, because torch needs writable memory and batches are contiguous slices.
    y : array-like
        Integer labels ``(N,)`` in ``[0, len(classes))``.
    classes : sequence of str
        Class names, indexed by label.
    name : str
        The spec it was loaded from, plus the split (used in messages and provenance).
    source : str, optional
        Where it was read from (file or folder, and which version of the format).

    Attributes
    ----------
    raw : np.ndarray
        The stored inputs, ``uint8`` or float32.
    y : np.ndarray
        int64 labels.
    classes : list of str
    name, source : str

    Raises
    ------
    DatasetError
        No samples, counts that differ, labels out of range, non-numeric or non-finite inputs.
    """

    def __init__(self, x, y, classes: Sequence[str], name: str = "", *, source: str = ""):
        self.name = str(name)
        self.source = str(source)
        self.raw = self._inputs(x)
        self.y = self._labels(y)
        self.classes = [str(c) for c in classes]
        self._stats: dict | None = None
        self._check()

    # -- construction checks ----------------------------------------------------------------
    def _inputs(self, x) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        if x.dtype.kind not in "fiu":
            raise DatasetError(f"dataset {self.name!r}: inputs must be numbers, got dtype {x.dtype}; "
                               "save images as uint8 or float arrays.")
        if x.ndim < 2:
            raise DatasetError(f"dataset {self.name!r}: inputs must have shape (N, ...) with one row per sample, "
                               f"got shape {x.shape}.")
        if x.dtype != np.uint8:
            x = x.astype(np.float32, copy=False)
        if not x.flags.c_contiguous:  # contiguous batches (and no negative strides, which torch refuses)
            x = np.ascontiguousarray(x)
        if not x.flags.writeable:
            x = x.copy()
        return x

    def _labels(self, y) -> np.ndarray:
        if isinstance(y, torch.Tensor):
            y = y.detach().cpu().numpy()
        y = np.asarray(y)
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise DatasetError(f"dataset {self.name!r}: labels must be a 1-D array of integer class indices, got "
                               f"dtype {y.dtype} and shape {y.shape}.")
        return y.astype(np.int64, copy=False)

    def _check(self) -> None:
        if len(self.raw) != len(self.y):
            raise DatasetError(f"dataset {self.name!r}: {len(self.raw)} images but {len(self.y)} labels; "
                               "the file is inconsistent.")
        if len(self.y) == 0:
            raise DatasetError(f"dataset {self.name!r} has no samples; check the file or the split.")
        lo, hi = int(self.y.min()), int(self.y.max())
        if lo < 0 or hi >= len(self.classes):
            raise DatasetError(f"dataset {self.name!r}: labels span [{lo}, {hi}] but there are "
                               f"{len(self.classes)} classes; fix the labels or the class list.")
        if self.raw.dtype != np.uint8:
            bad = _first_non_finite(self.raw)
            if bad is not None:
                raise DatasetError(f"dataset {self.name!r}: sample {bad} holds NaN or inf inputs; "
                                   "clean the data before using it.")

    # -- what it holds ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, {len(self)} x {self.input_shape} {self.raw.dtype}, "
                f"{len(self.classes)} classes)")

    @property
    def x(self) -> np.ndarray:
        """float32 inputs, 8-bit images scaled to [0, 1] (a new array for ``uint8`` storage).

        For large splits prefer :meth:`batches`, which converts one batch at a time.
        """
        if self.raw.dtype == np.uint8:
            return to_float(torch.from_numpy(self.raw)).numpy()
        return self.raw

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (``raw.shape[1:]``)."""
        return tuple(int(v) for v in self.raw.shape[1:])

    @property
    def channels(self) -> int:
        """Number of channels (the first axis of a sample)."""
        return self.input_shape[0]

    @property
    def image_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of images ``(C, H, W)``; None for other input shapes."""
        return self.input_shape[1:] if len(self.input_shape) == 3 else None

    @property
    def is_8bit(self) -> bool:
        """Whether the inputs are stored as ``uint8`` (scaled to [0, 1] when used)."""
        return self.raw.dtype == np.uint8

    # -- statistics and normalisation -------------------------------------------------------
    def statistics(self) -> dict[str, list[float]]:
        """Per-channel ``mean``, ``std`` (population), ``min`` and ``max`` of the inputs as used, in float64.

        Computed once, in chunks (bounded memory for any split), and cached.
        """
        if self._stats is None:
            self._stats = _channel_statistics(self)
        return self._stats

    @property
    def normalization(self) -> dict[str, list[float]]:
        """The split's own per-channel ``{"mean", "std"}``, as training code records it in meta.

        Informative: a model's inputs are normalised with the checkpoint's
        ``meta["normalization"]``, which always wins (see :meth:`landscape.Checkpoint.prepare`).
        Values are rounded to float32; a constant channel gets a std of 1e-8, not 0.
        """
        s = self.statistics()
        return {"mean": [float(np.float32(m)) for m in s["mean"]],
                "std": [float(np.float32(v) + np.float32(1e-8)) for v in s["std"]]}

    def looks_normalized(self) -> bool:
        """Whether the inputs look normalised rather than raw intensities.

        Raw intensities (pixels in [0, 1] or [0, 255]) are never negative and have channel means
        well above 0; inputs standardised with some mean and std have negative values. So data
        count as normalised when any input is negative or every channel mean is below
        :data:`RAW_MEAN_THRESHOLD` (0.1). 8-bit images are raw by construction.
        """
        if self.is_8bit:
            return False
        s = self.statistics()
        return min(s["min"]) < 0 or max(abs(m) for m in s["mean"]) < RAW_MEAN_THRESHOLD

    def summary(self) -> dict:
        """What a user checks first, as plain JSON-ready values (``landscape info --data`` prints it).

        Keys: ``name``, ``source``, ``samples``, ``num_classes``, ``classes``, ``class_counts``,
        ``channels``, ``image_size`` (``[H, W]`` or None), ``input_shape``, ``storage``
        (``"uint8"``: 8-bit images scaled to [0, 1] when used, or ``"float32"``), ``bytes``
        (host memory of inputs and labels) and ``normalization`` (the split's own statistics).
        """
        return {"name": self.name, "source": self.source, "samples": len(self), "num_classes": len(self.classes),
                "classes": list(self.classes),
                "class_counts": np.bincount(self.y, minlength=len(self.classes)).tolist(),
                "channels": self.channels, "image_size": list(self.image_size) if self.image_size else None,
                "input_shape": list(self.input_shape), "storage": str(self.raw.dtype),
                "bytes": int(self.raw.nbytes + self.y.nbytes), "normalization": self.normalization}

    # -- subsets ----------------------------------------------------------------------------
    def take(self, indices, name: str | None = None) -> "Dataset":
        """The samples at ``indices`` (in that order), storage kept (``uint8`` stays ``uint8``)."""
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(self.raw[idx], self.y[idx], self.classes, name or f"{self.name}[{len(idx)} samples]",
                       source=self.source)

    def subset(self, n: int | None, seed: int = 0) -> "Dataset":
        """A seeded, stratified random subset of ``n`` samples (all of them when ``n`` is None or too large).

        Each class gets its share ``n * count / N`` rounded by largest remainders (so every
        class is within one sample of its exact share), and every class present gets at least
        one sample when ``n`` is at least the number of classes (a tiny class's sample is taken
        from the class furthest above its share). See :func:`stratified_indices` for ties.
        Samples keep their order in the split.
        """
        n = check_scalar(n, "subset", int, min=1, allow_none=True)
        seed = check_scalar(seed, "seed", int, min=0)
        if n is None or n >= len(self):
            return self
        return self.take(stratified_indices(self.y, n, seed), f"{self.name}[subset {n}, seed {seed}]")

    # -- to torch ---------------------------------------------------------------------------
    def tensors(self, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` as torch tensors on ``device``: inputs as ``dtype`` (8-bit images in [0, 1]), int64 labels.

        8-bit images travel to the device as ``uint8`` and are converted there.
        """
        device = torch.device(device)
        x = torch.from_numpy(self.raw).to(device)
        return to_float(x, dtype), torch.from_numpy(self.y).to(device)

    def batches(self, batch_size: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                transform: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive batches ``(x, y)`` on ``device``, in order, for data too large to hold there at once.

        Only the batches in flight live on the device. On CUDA each batch is staged in pinned
        host memory (still ``uint8`` for 8-bit images) and copied on a side stream while the
        caller works on the previous one. Inputs are converted to ``dtype`` on the device
        (8-bit images scaled to [0, 1]) and then ``transform`` (for example
        ``Checkpoint.normalize``) is applied, so the values equal those of :meth:`tensors`
        transformed as a whole.

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
        batch_size = check_scalar(batch_size, "batch_size", int, min=1)
        device = torch.device(device)
        starts = range(0, len(self), batch_size)
        staged = _stage_cuda(self, starts, batch_size, device) if device.type == "cuda" else (
            (torch.from_numpy(self.raw[i:i + batch_size]).to(device), torch.from_numpy(self.y[i:i + batch_size])
             .to(device)) for i in starts)
        for xb, yb in staged:
            xb = to_float(xb, dtype)
            yield (transform(xb) if transform is not None else xb), yb


def _stage_cuda(data: Dataset, starts: range, batch_size: int,
                device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches copied host -> device from pinned memory on a side stream, one batch ahead of the caller."""
    main = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)

    def stage(i: int):
        xs, ys = torch.from_numpy(data.raw[i:i + batch_size]), torch.from_numpy(data.y[i:i + batch_size])
        xh = torch.empty(xs.shape, dtype=xs.dtype, pin_memory=True).copy_(xs)
        yh = torch.empty(ys.shape, dtype=ys.dtype, pin_memory=True).copy_(ys)
        with torch.cuda.stream(side):
            # the pinned buffers are not reused before these copies finish (the host allocator records them)
            xd, yd = xh.to(device, non_blocking=True), yh.to(device, non_blocking=True)
        return xd, yd, side.record_event()

    pending = stage(starts[0]) if len(starts) else None
    for k in range(len(starts)):
        xd, yd, ready = pending
        main.wait_event(ready)
        xd.record_stream(main)  # memory allocated on the side stream is used on the main one
        yd.record_stream(main)
        pending = stage(starts[k + 1]) if k + 1 < len(starts) else None
        yield xd, yd


def stratified_indices(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded stratified sample of ``n`` of the labels ``y``.

    Class ``c`` with ``N_c`` of the ``N`` samples has the exact share ``s_c = n N_c / N``.
    Quotas are ``floor(s_c)``; the samples left over go to the classes with the largest
    remainders ``s_c - quota_c`` (Hamilton's method), so every quota is within one of its
    share. Tiny classes: when ``n`` is at least the number of classes present, each class
    gets at least one sample, and the samples this costs are taken back, one at a time, from
    the classes whose quota exceeds 1 and lies furthest above their share. Ties (equal
    remainders) are broken by a seeded random order of the classes, so no class is favoured
    systematically and the same seed always gives the same subset. Within a class, samples
    are drawn uniformly without replacement.
    """
    rng = np.random.default_rng(seed)
    labels, counts = np.unique(y, return_counts=True)
    share = n * counts / len(y)
    quota = np.floor(share).astype(np.int64)
    if n >= len(labels):
        quota = np.maximum(quota, 1)
    tiebreak = rng.permutation(len(labels))
    while quota.sum() < n:  # largest remainder first; only classes with samples left
        room = quota < counts
        k = _pick(np.where(room, share - quota, -np.inf), tiebreak, largest=True)
        quota[k] += 1
    while quota.sum() > n:  # paid for the one-per-class minimum: smallest remainder gives back
        k = _pick(np.where(quota > 1, share - quota, np.inf), tiebreak, largest=False)
        quota[k] -= 1
    chosen = [rng.choice(np.flatnonzero(y == c), size=int(q), replace=False) for c, q in zip(labels, quota) if q]
    return np.sort(np.concatenate(chosen))


def _pick(key: np.ndarray, tiebreak: np.ndarray, largest: bool) -> int:
    """Index of the largest (or smallest) ``key``; among equal keys the first in ``tiebreak`` order."""
    order = np.lexsort((tiebreak, -key if largest else key))
    return int(order[0])


def _first_non_finite(x: np.ndarray) -> int | None:
    """Index of the first sample holding NaN or inf, checked in chunks (no full-size temporary)."""
    step = max(1, _STATS_ELEMENTS // max(1, math.prod(x.shape[1:])))
    for i in range(0, len(x), step):
        ok = np.isfinite(x[i:i + step]).reshape(len(x[i:i + step]), -1).all(axis=1)
        if not ok.all():
            return i + int(np.argmin(ok))
    return None


def _channel_statistics(data: Dataset) -> dict[str, list[float]]:
    """Per-channel mean, population std, min and max in float64, merged over chunks (Chan et al.)."""
    x = data.raw
    c = x.shape[1]
    step = max(1, _STATS_ELEMENTS // max(1, math.prod(x.shape[1:])))
    count, mean, m2 = 0, np.zeros(c), np.zeros(c)
    lo, hi = np.full(c, np.inf), np.full(c, -np.inf)
    for i in range(0, len(x), step):
        part = to_float(torch.from_numpy(x[i:i + step])).numpy().astype(np.float64)
        part = np.moveaxis(part, 1, 0).reshape(c, -1)
        k = part.shape[1]
        m = part.mean(axis=1)
        d = m - mean
        m2 += ((part - m[:, None]) ** 2).sum(axis=1) + d ** 2 * count * k / (count + k)
        mean += d * k / (count + k)
        count += k
        lo, hi = np.minimum(lo, part.min(axis=1)), np.maximum(hi, part.max(axis=1))
    return {"mean": mean.tolist(), "std": np.sqrt(m2 / count).tolist(), "min": lo.tolist(), "max": hi.tolist()}


def normalization_of(data: Dataset) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation of ``data`` (what training records in meta)."""
    return data.normalization

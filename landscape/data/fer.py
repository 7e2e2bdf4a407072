"""FER-2013 (Goodfellow et al. 2013) as Kaggle distributes it: one CSV of 48 x 48 grey faces.

Columns ``emotion`` (0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral),
``pixels`` (2304 space-separated values 0..255) and ``Usage``: ``Training`` (28,709 rows),
``PublicTest`` (3,589, the usual validation set) and ``PrivateTest`` (3,589, the usual test
set). The split ``train`` is ``Training``; ``test`` is ``PublicTest`` and ``PrivateTest``
unless ``usage=`` names the rows to use. The challenge's ``icml_face_data.csv`` (header
names with leading spaces) reads the same; a file without ``Usage`` is one split, used whole.
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .files import Loaded, check_file

FER_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
FER_USAGE = {"train": ("Training",), "test": ("PublicTest", "PrivateTest")}
USAGES = ("Training", "PublicTest", "PrivateTest")
FILENAMES = ("fer2013.csv", "fer2013/fer2013.csv", "icml_face_data.csv")
SIDE = 48


def read_fer2013(path: Path, split: str, usage: tuple[str, ...] | None = None) -> Loaded:
    """The rows of ``split`` (or of the ``usage`` values given) from a FER-2013 CSV, or a folder holding one."""
    path = _csv_file(path)
    wanted = set(usage or FER_USAGE[split])
    try:
        with open(path, newline="", encoding="utf-8") as fh, warnings.catch_warnings():
            # np.fromstring warns (DeprecationWarning) where a row holds a non-number; the count check reports it
            warnings.simplefilter("ignore", DeprecationWarning)
            x, y, has_usage = _rows(csv.reader(fh), path, wanted)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); is this the FER-2013 CSV?") \
            from None
    except csv.Error as exc:
        raise DatasetError(f"{path}: not a readable CSV ({exc}).") from None
    if not len(y):
        raise DatasetError(f"{path}: no rows with Usage in {sorted(wanted)} for split {split!r}.")
    chosen = "all rows (no Usage column)" if not has_usage else "Usage " + "+".join(u for u in USAGES if u in wanted)
    return Loaded(x, y, FER_CLASSES, f"{path} (FER-2013 CSV, {chosen})")


def _csv_file(path: Path) -> Path:
    if path.is_dir():
        hit = next((path / n for n in FILENAMES if (path / n).is_file()), None)
        if hit is None:
            raise DatasetError(f"fer2013:{path}: a folder without a FER-2013 CSV (looked for {', '.join(FILENAMES)}); "
                               "give the CSV file.")
        path = hit
    return check_file(path, "FER-2013 CSV")


def _rows(reader, path: Path, wanted: set[str]) -> tuple[np.ndarray, np.ndarray, bool]:
    header = [h.strip() for h in next(reader, [])]
    missing = {"emotion", "pixels"} - set(header)
    if missing:
        raise DatasetError(f"{path}: not a FER-2013 CSV, missing column(s) {sorted(missing)}; found {header[:6]}.")
    col_e, col_p = header.index("emotion"), header.index("pixels")
    col_u = header.index("Usage") if "Usage" in header else None
    images, labels = [], []
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DatasetError(f"{path}, line {lineno}: {len(row)} fields, the header has {len(header)}.")
        if col_u is not None and row[col_u].strip() not in wanted:
            continue
        try:
            label = int(row[col_e])
            # numpy's text parser: 4-5x faster than str.split and int() over 35,887 rows of 2,304 values
            pixels = np.fromstring(row[col_p], dtype=np.int64, sep=" ")
        except ValueError as exc:
            raise DatasetError(f"{path}, line {lineno}: {exc}; emotion must be an integer and pixels integers "
                               "0..255.") from None
        if pixels.size != SIDE * SIDE:
            raise DatasetError(f"{path}, line {lineno}: {pixels.size} pixels read, expected 2304 (48x48) integers "
                               "0..255 separated by spaces.")
        if pixels.min() < 0 or pixels.max() > 255:
            raise DatasetError(f"{path}, line {lineno}: pixel values span [{pixels.min()}, {pixels.max()}], "
                               "expected 0..255.")
        if not 0 <= label < len(FER_CLASSES):
            raise DatasetError(f"{path}, line {lineno}: emotion {label} is not one of 0..6.")
        images.append(pixels.astype(np.uint8).reshape(1, SIDE, SIDE))
        labels.append(label)
    x = np.stack(images) if images else np.zeros((0, 1, SIDE, SIDE), np.uint8)
    return x, np.array(labels, dtype=np.int64), col_u is not None

"""An image folder: one subfolder per class, PNG/JPEG/... files read with Pillow (how RAF-DB and CK+ are kept).

The layout and label convention are torchvision's ``ImageFolder``: classes are the
subfolder names in sorted order (label ``i`` is the ``i``-th name), and every image file at
any depth below a class folder belongs to it. A folder whose ``train/`` and ``test/`` (or
``val/``) subfolders each hold class folders, as RAF-DB's Kaggle layout does, gives the two
splits; a folder of class folders alone (CK+) is one split, used whole for either.

Images become ``uint8`` ``(N, C, H, W)``: one channel when every image is greyscale (or
``grayscale=True``), else three (RGB; an alpha channel is dropped, as torchvision's loader
does). All images must share one size unless ``resize=(H, W)`` resamples them (bilinear,
antialiased, Pillow's ``Image.resize``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .files import Loaded

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's list
GREY_MODES = ("1", "L", "LA", "La")
TEST_FOLDERS = ("test", "val", "valid", "validation")


def read_imagefolder(root: Path, split: str, resize: tuple[int, int] | None = None,
                     grayscale: bool | None = None) -> Loaded:
    """The images under ``root`` (or its ``split`` subfolder), labelled by class folder."""
    if not root.is_dir():
        raise DatasetError(f"imagefolder:{root}: not a folder; give the folder that holds one subfolder per class.")
    folder = _split_folder(root, split)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"imagefolder:{folder}: no class subfolders; put each class's images in a subfolder "
                           "named after the class.")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        if not found:
            raise DatasetError(f"imagefolder:{folder}: class folder {name!r} holds no images "
                               f"({', '.join(EXTENSIONS)}); remove it or add its images.")
        files += found
        labels += [label] * len(found)
    mode, size = _plan(files, folder, resize, grayscale)
    x = np.empty((len(files), 1 if mode == "L" else 3, *size), dtype=np.uint8)
    for i, path in enumerate(files):
        x[i] = _decode(path, mode, size)
    resized = f", resized to {size[0]}x{size[1]}" if resize else ""
    return Loaded(x, np.array(labels, dtype=np.int64), classes,
                  f"{folder} (image folder, {len(classes)} classes{resized})")


def _split_folder(root: Path, split: str) -> Path:
    """``root/train`` or ``root/test`` (or ``val``) when the folder is split, else ``root`` itself."""
    names = ("train",) if split == "train" else TEST_FOLDERS
    splits = [n for n in ("train", *TEST_FOLDERS) if (root / n).is_dir()]
    if not splits:
        return root
    hit = next((root / n for n in names if (root / n).is_dir()), None)
    if hit is None:
        raise DatasetError(f"imagefolder:{root}: holds {', '.join(splits)} but no {' or '.join(names)} folder for "
                           f"split {split!r}; use the split it has.")
    return hit


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable image ({type(exc).__name__}: {exc}).") from None


def _plan(files: list[Path], folder: Path, resize, grayscale) -> tuple[str, tuple[int, int]]:
    """Mode ("L" or "RGB") and ``(H, W)`` of the output, from the headers alone (no decoding)."""
    modes, sizes = set(), {}
    for path in files:
        with _open(path) as im:
            modes.add(im.mode)
            sizes.setdefault((im.height, im.width), path)
    if grayscale is None:
        grayscale = modes <= set(GREY_MODES)
    if resize is not None:
        return ("L" if grayscale else "RGB"), tuple(resize)
    if len(sizes) > 1:
        (s1, p1), (s2, p2) = list(sizes.items())[:2]
        raise DatasetError(f"imagefolder:{folder}: images have {len(sizes)} different sizes ({s1[0]}x{s1[1]} in "
                           f"{p1.name}, {s2[0]}x{s2[1]} in {p2.name}, ...); pass resize=HxW, e.g. "
                           f"imagefolder:{folder}?resize={s1[0]}x{s1[1]}.")
    return ("L" if grayscale else "RGB"), next(iter(sizes))


def _decode(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image as ``(C, H, W)`` ``uint8`` in ``mode``, resized to ``size`` when it differs."""
    from PIL import Image

    with _open(path) as im:
        try:
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise DatasetError(f"{path}: {im.mode} (16-bit or float) images are not supported; save 8-bit "
                                   "images.")
            im = im.convert(mode)
            if (im.height, im.width) != size:
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DatasetError(f"{path}: cannot be decoded ({exc}); the file is truncated or damaged.") from None
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, 2, 0)

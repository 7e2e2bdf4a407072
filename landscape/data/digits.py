"""scikit-learn's embedded 8 x 8 digits (1,797 images, values 0..16), split 80/20, stratified, seed 0."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .files import Loaded

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def read_digits(_path: Path | None, split: str) -> Loaded:
    """The ``split`` of the digits as float32 ``(N, 1, 8, 8)`` in [0, 1] (pixel / 16)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=DIGITS_TEST_FRACTION,
                                           stratify=y, random_state=DIGITS_SPLIT_SEED)
    idx = np.sort(idx_train if split == "train" else idx_test)
    return Loaded(x[idx], y[idx], [str(c) for c in range(10)], "sklearn.datasets.load_digits")

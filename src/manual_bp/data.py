"""Datasets for training: small, bundled, offline.

Shapes: ``x_*`` is ``(n, d)`` float32, ``y_*`` is ``(n,)`` int32 class ids in
``[0, num_classes)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["Dataset", "load_digits"]

_PIXEL_MAX = 16.0
"""The digits' pixel intensities are integers 0..16."""

_STD_FLOOR = 1.0 / _PIXEL_MAX
"""Smallest per-feature std used in standardization: one intensity step after scaling.

Some border pixels are (nearly) always 0 in the training split; without a floor a single
non-zero test pixel there would be scaled to a huge value (or divided by 0).
"""


class Dataset(NamedTuple):
    """A classification dataset split into a training and a test part (numpy arrays)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes, 64 features).

    The split is stratified by class and determined by ``seed``. Features are scaled to
    ``[0, 1]`` (pixel / 16) and then standardized with the training split's statistics only,
    ``x' = (x − μ_train) / max(σ_train, 1/16)``, so nothing about the test split leaks into
    training.

    Raises:
      ImportError: if scikit-learn is not installed.
      ValueError: if ``seed`` is not a non-negative int or ``test_fraction`` is not in (0, 1),
        or leaves fewer than one example per class on either side.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"load_digits: seed must be a non-negative int, got {seed!r}")
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, int | float | np.floating)
        or not 0.0 < float(test_fraction) < 1.0
    ):
        raise ValueError(
            f"load_digits: test_fraction must be a number in (0, 1), got {test_fraction!r}"
        )
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise ImportError(
            "load_digits needs scikit-learn; install it with: pip install 'manual_bp[data]'"
        ) from e

    digits = _sk_load_digits()
    x = np.asarray(digits.data, dtype=np.float64) / _PIXEL_MAX
    y = np.asarray(digits.target, dtype=np.int32)
    num_classes = int(y.max()) + 1
    n_test = math.ceil(float(test_fraction) * len(y))
    if not num_classes <= n_test <= len(y) - num_classes:
        raise ValueError(
            f"load_digits: test_fraction={test_fraction!r} gives {n_test} test and "
            f"{len(y) - n_test} training examples of {len(y)}; each side needs at least "
            f"{num_classes} (one per class)"
        )
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=n_test, stratify=y, random_state=int(seed)
    )
    mean = x_train.mean(axis=0)
    std = np.maximum(x_train.std(axis=0), _STD_FLOOR)
    return Dataset(
        x_train=((x_train - mean) / std).astype(np.float32),
        y_train=y_train.astype(np.int32),
        x_test=((x_test - mean) / std).astype(np.float32),
        y_test=y_test.astype(np.int32),
        num_classes=num_classes,
        name="digits",
    )

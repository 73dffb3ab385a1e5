"""The :class:`Dataset` every loader returns, and the checks and transforms they share.

Shapes: ``x_*`` is ``(n, d)`` float32, ``y_*`` is ``(n,)`` int32 class ids in
``[0, num_classes)``.

Every loader standardizes the features with the training split's statistics only
(:func:`standardize`), ``x' = (x − μ_train) / max(σ_train, floor)``, so nothing about the test
split leaks into training; the floor keeps (nearly) constant training features from blowing up
test values. Splits drawn by a seed are stratified by class (:func:`stratified_split`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "BYTE_STD_FLOOR",
    "Dataset",
    "check_seed",
    "check_test_fraction",
    "standardize",
    "stratified_split",
]


BYTE_STD_FLOOR = 1.0 / 255.0
"""The std floor for 8-bit images scaled to [0, 1]: one intensity step."""


class Dataset(NamedTuple):
    """A classification dataset split into a training and a test part (numpy arrays)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str


def check_seed(fn: str, seed: Any) -> int:
    """``seed`` as an int if it is a non-negative int; else a ValueError naming ``fn``."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"{fn}: seed must be a non-negative int, got {seed!r}")
    return int(seed)


def check_test_fraction(fn: str, test_fraction: Any) -> float:
    """``test_fraction`` as a float if it is a number in (0, 1); else a ValueError naming
    ``fn``."""
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, int | float | np.floating)
        or not 0.0 < float(test_fraction) < 1.0
    ):
        raise ValueError(f"{fn}: test_fraction must be a number in (0, 1), got {test_fraction!r}")
    return float(test_fraction)


def stratified_split(
    y: np.ndarray, num_classes: int, n_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` with ``n_test`` test examples, each class in proportion.

    Class ``c`` with ``n_c`` of the ``n`` examples gets ``⌊n_c·n_test/n⌋`` test examples; the
    remaining ones go to the classes with the largest remainders (ties: lower class id).
    Which examples, and the order of both parts, is drawn from ``default_rng(seed)``.
    """
    n = len(y)
    counts = np.bincount(y, minlength=num_classes).astype(np.int64)
    per_class = counts * n_test // n
    remainder = counts * n_test % n
    extra = n_test - int(per_class.sum())
    order = np.lexsort((np.arange(num_classes), -remainder))
    per_class[order[:extra]] += 1
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for c in range(num_classes):
        members = rng.permutation(np.flatnonzero(y == c))
        test_parts.append(members[: per_class[c]])
        train_parts.append(members[per_class[c] :])
    train = rng.permutation(np.concatenate(train_parts))
    test = rng.permutation(np.concatenate(test_parts))
    return train, test


def standardize(
    x_train: np.ndarray, x_test: np.ndarray, floor: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(x − μ_train) / max(σ_train, floor)`` for both parts, as float32.

    Computed in float64 for 64-bit inputs and in float32 otherwise (statistics always
    accumulate in float64).
    """
    work = np.result_type(x_train.dtype, np.float32)
    mean = x_train.mean(axis=0, dtype=np.float64)
    std = np.maximum(x_train.std(axis=0, dtype=np.float64), floor)
    mean, std = mean.astype(work), std.astype(work)
    return (
        ((x_train.astype(work, copy=False) - mean) / std).astype(np.float32),
        ((x_test.astype(work, copy=False) - mean) / std).astype(np.float32),
    )

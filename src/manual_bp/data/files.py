"""The user's own files: a ``.npz`` archive (:func:`load_npz`) or a folder of MNIST-format IDX
files (:func:`load_idx`).

Every problem with a file is a ValueError naming the loader, the file and what is wrong with it.
Nothing is unpickled: archives are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import gzip
import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import (
    BYTE_STD_FLOOR,
    Dataset,
    check_seed,
    check_test_fraction,
    standardize,
    stratified_split,
)

__all__ = ["load_idx", "load_npz"]


_NPZ_STD_FLOOR_FRACTION = 1e-2
"""For ``.npz`` data the std floor is this fraction of the training split's pooled std
(about one intensity step for 8-bit images, in whatever units they are stored)."""

_IDX_IMAGES_MAGIC = 0x00000803
"""IDX magic of unsigned-byte data with 3 dimensions (images: count, rows, columns)."""

_IDX_LABELS_MAGIC = 0x00000801
"""IDX magic of unsigned-byte data with 1 dimension (labels: count)."""

_IDX_FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
"""The IDX file names :func:`load_idx` looks for, each also with a ``.gz`` suffix."""


def _check_num_classes(fn: str, num_classes: Any) -> int | None:
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise ValueError(f"{fn}: num_classes must be a positive int or None, got {num_classes!r}")
    if num_classes <= 0:
        raise ValueError(f"{fn}: num_classes must be a positive int or None, got {num_classes!r}")
    return int(num_classes)


def _check_file(fn: str, path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"{fn}: {path}: is a directory, expected a file")
    if not path.exists():
        raise ValueError(f"{fn}: {path}: file not found")


def _npz_labels(fn: str, path: Path, key: str, y: np.ndarray) -> np.ndarray:
    if y.ndim != 1:
        raise ValueError(
            f"{fn}: {path}: {key!r} must be 1-D (n,) class labels, got shape {y.shape}"
        )
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{fn}: {path}: {key!r} must hold integer class labels, got dtype {y.dtype} "
            f"(save them with y.astype(np.int64))"
        )
    if len(y) and y.min() < 0:
        raise ValueError(
            f"{fn}: {path}: {key!r} has negative labels (min {y.min()}); labels must be class "
            f"ids 0, 1, ..., num_classes - 1"
        )
    return y


def _npz_features(fn: str, path: Path, key: str, x: np.ndarray) -> np.ndarray:
    if x.ndim < 2:
        raise ValueError(
            f"{fn}: {path}: {key!r} must have shape (n, d) or (n, ...) with at least one "
            f"feature axis, got shape {x.shape}"
        )
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.issubdtype(
        x.dtype, np.complexfloating
    ):
        raise ValueError(f"{fn}: {path}: {key!r} must be real numbers, got dtype {x.dtype}")
    if x.size and np.issubdtype(x.dtype, np.inexact):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        if bad:
            raise ValueError(f"{fn}: {path}: {key!r} has {bad} non-finite values (NaN or inf)")
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    return x.reshape(len(x), math.prod(x.shape[1:]))


def load_npz(
    path: str | os.PathLike[str],
    seed: int = 0,
    test_fraction: float = 0.2,
    num_classes: int | None = None,
) -> Dataset:
    """A classification dataset from a user's ``.npz`` archive (``numpy.savez``).

    The archive holds ``x`` with shape ``(n, ...)`` (real numbers) and ``y`` with shape
    ``(n,)`` (integer class ids ``0 ... num_classes − 1``). If it also holds ``x_test`` and
    ``y_test``, those are the test split and ``seed`` / ``test_fraction`` are not used;
    otherwise the examples are split stratified by class, determined by ``seed``. Other
    arrays in the archive are ignored. Loaded with ``allow_pickle=False``.

    Each example is flattened to a feature vector, ``(n, d₁, d₂, ...) → (n, d₁·d₂·...)``, as
    the MLPs of :mod:`manual_bp.train` expect. Features are standardized with the training
    split's statistics, ``x' = (x − μ_train) / max(σ_train, floor)`` with ``floor`` 1 % of
    the training split's pooled std (0.01 if that is 0); float64 inputs are standardized in
    float64, the result is float32.

    Args:
      path: the ``.npz`` file.
      seed: seed of the split (when the archive has no test split).
      test_fraction: fraction of the examples in the test split (rounded up).
      num_classes: the number of classes; default: the largest label + 1.

    Raises:
      ValueError: naming the file and the problem: missing file or a directory, not an
        ``.npz`` archive, missing or object (pickled) arrays, wrong ranks or dtypes, length
        mismatches, negative labels or labels ``≥ num_classes``, an empty dataset, non-finite
        features, or a split that leaves either side empty; also for a bad ``seed``,
        ``test_fraction`` or ``num_classes``.
    """
    fn = "load_npz"
    path = Path(path)
    seed = check_seed(fn, seed)
    test_fraction = check_test_fraction(fn, test_fraction)
    num_classes = _check_num_classes(fn, num_classes)
    _check_file(fn, path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, ValueError) as e:
        raise ValueError(f"{fn}: {path}: not an .npz archive ({e})") from e
    except OSError as e:
        raise ValueError(f"{fn}: {path}: cannot read the file: {e}") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{fn}: {path}: is a single .npy array, expected an .npz archive")
    arrays: dict[str, np.ndarray] = {}
    with archive:
        keys = set(archive.files)
        missing = [k for k in ("x", "y") if k not in keys]
        if missing:
            raise ValueError(
                f"{fn}: {path}: missing array(s) {', '.join(map(repr, missing))}; the archive "
                f"has {sorted(keys) or 'no arrays'} (expected 'x' and 'y', optionally "
                f"'x_test' and 'y_test')"
            )
        if ("x_test" in keys) != ("y_test" in keys):
            have, lack = ("x_test", "y_test") if "x_test" in keys else ("y_test", "x_test")
            raise ValueError(f"{fn}: {path}: has {have!r} but no {lack!r}; give both or neither")
        for key in ("x", "y", "x_test", "y_test"):
            if key not in keys:
                continue
            try:
                arrays[key] = archive[key]
            except ValueError as e:
                if "allow_pickle" in str(e):
                    raise ValueError(
                        f"{fn}: {path}: {key!r} is an object array (stored with pickle), which "
                        f"is not loaded; save a numeric array instead"
                    ) from e
                raise ValueError(f"{fn}: {path}: cannot read {key!r}: {e}") from e
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
                raise ValueError(f"{fn}: {path}: cannot read {key!r}, corrupt archive: {e}") from e

    x = _npz_features(fn, path, "x", arrays["x"])
    y = _npz_labels(fn, path, "y", arrays["y"])
    if len(x) != len(y):
        raise ValueError(f"{fn}: {path}: 'x' has {len(x)} examples but 'y' has {len(y)}")
    if not len(y):
        raise ValueError(f"{fn}: {path}: the dataset is empty ('x' and 'y' have 0 examples)")
    if x.shape[1] == 0:
        raise ValueError(f"{fn}: {path}: 'x' has 0 features per example")
    given_test = "x_test" in arrays
    if given_test:
        x_test = _npz_features(fn, path, "x_test", arrays["x_test"])
        y_test = _npz_labels(fn, path, "y_test", arrays["y_test"])
        if len(x_test) != len(y_test):
            raise ValueError(
                f"{fn}: {path}: 'x_test' has {len(x_test)} examples but 'y_test' has {len(y_test)}"
            )
        if not len(y_test):
            raise ValueError(f"{fn}: {path}: the test split is empty ('x_test' has 0 examples)")
        if arrays["x_test"].shape[1:] != arrays["x"].shape[1:]:
            raise ValueError(
                f"{fn}: {path}: 'x_test' examples have shape {arrays['x_test'].shape[1:]} but "
                f"'x' examples have shape {arrays['x'].shape[1:]}"
            )
        largest = max(int(y.max()), int(y_test.max()))
    else:
        largest = int(y.max())
    if num_classes is None:
        num_classes = largest + 1
    elif largest >= num_classes:
        raise ValueError(
            f"{fn}: {path}: labels must be in [0, {num_classes}) for num_classes={num_classes}, "
            f"found label {largest}"
        )

    if not given_test:
        n = len(y)
        n_test = math.ceil(test_fraction * n)
        if not 1 <= n_test <= n - 1:
            raise ValueError(
                f"{fn}: {path}: test_fraction={test_fraction!r} gives {n_test} test and "
                f"{n - n_test} training examples of {n}; each side needs at least one"
            )
        y = y.astype(np.int64)
        train, test = stratified_split(y, num_classes, n_test, seed)
        x, x_test, y, y_test = x[train], x[test], y[train], y[test]
    pooled = float(x.std(dtype=np.float64))
    floor = _NPZ_STD_FLOOR_FRACTION * (pooled if pooled > 0 else 1.0)
    x_train, x_test = standardize(x, x_test, floor)
    return Dataset(
        x_train, y.astype(np.int32), x_test, y_test.astype(np.int32), num_classes, path.name
    )


def _read_bytes(fn: str, path: Path) -> bytes:
    """The file's bytes, gunzipped if its name ends in ``.gz``."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{fn}: {path}: cannot read the file: {e}") from e
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{fn}: {path}: not a valid gzip file: {e}") from e


def _read_idx(fn: str, path: Path, magic: int, what: str) -> np.ndarray:
    """An unsigned-byte IDX array: 4-byte magic, big-endian uint32 dimensions, then the data."""
    raw = _read_bytes(fn, path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < 4:
        raise ValueError(f"{fn}: {path}: {len(raw)} bytes, too short for an IDX header")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        hint = " (the file looks gzip-compressed: name it *.gz)" if raw[:2] == b"\x1f\x8b" else ""
        raise ValueError(
            f"{fn}: {path}: bad IDX magic number 0x{got:08x}, expected 0x{magic:08x} "
            f"({what}: unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''}){hint}"
        )
    if len(raw) < header:
        raise ValueError(
            f"{fn}: {path}: truncated IDX header: {len(raw)} bytes, the header needs {header}"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    need, have = math.prod(dims), len(raw) - header
    if have != need:
        problem = "truncated" if have < need else "too long"
        raise ValueError(
            f"{fn}: {path}: {problem}: the header's dimensions {dims} need {need} bytes of "
            f"data, the file has {have}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(fn: str, directory: Path, part: str) -> Path:
    names = [name + suffix for name in _IDX_FILES[part] for suffix in ("", ".gz")]
    for name in names:
        candidate = directory / name
        if candidate.is_dir():
            raise ValueError(f"{fn}: {candidate}: is a directory, expected a file")
        if candidate.exists():
            return candidate
    raise ValueError(
        f"{fn}: {directory / names[0]}: file not found (also looked for "
        f"{', '.join(names[1:])} in {directory})"
    )


def load_idx(directory: str | os.PathLike[str], num_classes: int = 10) -> Dataset:
    """MNIST-format IDX files from ``directory`` (MNIST, Fashion-MNIST, ...), fixed split.

    Reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
    and ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``; the names with a dot
    before ``idx``, ``train-images.idx3-ubyte``, are accepted too). An IDX file is a
    big-endian magic number (``0x00000803`` for unsigned-byte images with 3 dimensions,
    ``0x00000801`` for unsigned-byte labels with 1), one big-endian uint32 per dimension,
    then the bytes. The train and t10k files are the training and test splits, so there is
    no seed. Images are flattened (28×28 → 784), scaled to ``[0, 1]`` (pixel / 255) and
    standardized with the training split's statistics, ``x' = (x − μ_train) /
    max(σ_train, 1/255)``.

    Args:
      directory: the folder holding the four files.
      num_classes: labels must be in ``[0, num_classes)``; 10 for MNIST and Fashion-MNIST.

    Raises:
      ValueError: naming the file and the problem: missing directory or file, bad magic
        number, not gzip data, a size that does not match the header, different image and
        label counts, different image sizes in the two splits, an empty split, or a label
        ``≥ num_classes``.
    """
    fn = "load_idx"
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int | np.integer)
        or not 0 < num_classes <= 256
    ):
        raise ValueError(f"{fn}: num_classes must be an int in 1..256, got {num_classes!r}")
    num_classes = int(num_classes)
    directory = Path(directory)
    if not directory.is_dir():
        problem = "is not a directory" if directory.exists() else "directory not found"
        raise ValueError(f"{fn}: {directory}: {problem}")
    splits = []
    for part in ("train", "test"):
        images_path = _find_idx(fn, directory, f"{part}_images")
        labels_path = _find_idx(fn, directory, f"{part}_labels")
        images = _read_idx(fn, images_path, _IDX_IMAGES_MAGIC, "images")
        labels = _read_idx(fn, labels_path, _IDX_LABELS_MAGIC, "labels")
        if len(images) != len(labels):
            raise ValueError(
                f"{fn}: {images_path}: has {len(images)} images but {labels_path} has "
                f"{len(labels)} labels"
            )
        if not len(labels):
            raise ValueError(f"{fn}: {images_path}: has 0 images")
        if not math.prod(images.shape[1:]):
            raise ValueError(
                f"{fn}: {images_path}: images of size {images.shape[1:]} have 0 pixels"
            )
        if labels.max() >= num_classes:
            raise ValueError(
                f"{fn}: {labels_path}: label {labels.max()} is out of range; labels must be in "
                f"[0, {num_classes}) for num_classes={num_classes}"
            )
        splits.append((images_path, images, labels))
    (train_path, train_images, train_labels), (test_path, test_images, test_labels) = splits
    if train_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(
            f"{fn}: {test_path}: images are {test_images.shape[1:]} but those in {train_path} "
            f"are {train_images.shape[1:]}"
        )
    x_train, x_test = standardize(
        train_images.reshape(len(train_images), -1).astype(np.float32) / np.float32(255.0),
        test_images.reshape(len(test_images), -1).astype(np.float32) / np.float32(255.0),
        BYTE_STD_FLOOR,
    )
    return Dataset(
        x_train,
        train_labels.astype(np.int32),
        x_test,
        test_labels.astype(np.int32),
        num_classes,
        directory.name or str(directory),
    )

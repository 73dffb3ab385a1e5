"""Datasets by name: the specs :func:`load_dataset` takes (:data:`DATASETS`)."""

from __future__ import annotations

from .bundled import load_digits, load_mnist1d, load_mnist5k
from .dataset import Dataset, check_seed
from .files import load_idx, load_npz

__all__ = ["DATASETS", "load_dataset"]


DATASETS = ("digits", "mnist1d", "mnist5k", "npz:PATH", "idx:DIR")
"""The specs :func:`load_dataset` accepts."""


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
        check_seed("load_dataset", seed)
        return load_idx(arg)
    raise ValueError(f"load_dataset: unknown dataset {spec!r}; choose one of: {choices}")

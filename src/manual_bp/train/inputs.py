"""The checks :func:`manual_bp.train.fit` runs on its arguments, on the host, before tracing.

Every message starts with ``fit:`` and names the argument, what it expected and what it got.
Labels are checked against ``[0, num_classes)`` here because under ``jit`` an out-of-range id
would silently select nothing (a wrong loss, no error); token ids fed to an embedding against
``[0, vocab)``, because under ``jit`` one outside gives a row of NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from .. import nn
from ..data import Dataset

__all__ = ["check_dataset", "check_fit_inputs"]


def _array(name: str, a: Any) -> np.ndarray:
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise TypeError(f"fit: {name} must be an array, got {type(a).__name__}")
    if np.ndim(a) < 1:
        raise ValueError(f"fit: {name} must have one row per example, got shape {np.shape(a)}")
    return np.asarray(a)


def _check_features(name: str, x: np.ndarray) -> None:
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"fit: {name} must hold real numbers, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating) and x.size and not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise ValueError(f"fit: {name} has {bad} non-finite values (NaN or inf) of {x.size}")


def _check_labels(name: str, y: np.ndarray, num_classes: int) -> None:
    if np.issubdtype(y.dtype, np.integer):
        if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            lo, hi = int(y.min()), int(y.max())
            raise ValueError(
                f"fit: {name} must hold class ids in [0, {num_classes}) for "
                f"num_classes={num_classes}, got labels from {lo} to {hi}"
            )
    elif np.issubdtype(y.dtype, np.floating):
        if y.shape[-1:] != (num_classes,):
            raise ValueError(
                f"fit: {name} holds probability targets, so its last axis must be "
                f"num_classes={num_classes}, got shape {y.shape}"
            )
        if y.size and not np.all(np.isfinite(y)):
            raise ValueError(f"fit: {name} has non-finite values (NaN or inf)")
    else:
        raise TypeError(
            f"fit: {name} must hold integer class ids or float targets, got dtype {y.dtype}"
        )


def check_dataset(data: Dataset) -> None:
    """Ranks, dtypes, lengths, finite features and label ranges of both splits."""
    c = data.num_classes
    if isinstance(c, bool) or not isinstance(c, int | np.integer) or c <= 0:
        raise ValueError(f"fit: data.num_classes must be a positive int, got {c!r}")
    x_train, y_train = _array("data.x_train", data.x_train), _array("data.y_train", data.y_train)
    x_test, y_test = _array("data.x_test", data.x_test), _array("data.y_test", data.y_test)
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) != len(y):
            raise ValueError(
                f"fit: data.x_{split} has {len(x)} examples but data.y_{split} has {len(y)}"
            )
        if not len(x):
            raise ValueError(f"fit: the {split} split is empty (data.x_{split} has 0 examples)")
        _check_features(f"data.x_{split}", x)
        _check_labels(f"data.y_{split}", y, int(c))
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"fit: data.x_test examples have shape {x_test.shape[1:]} but data.x_train examples "
            f"have shape {x_train.shape[1:]}"
        )


def _first_layer(net: nn.Layer) -> nn.Layer:
    """The layer that reads the network's input: the first leaf in forward order."""
    while net.children:
        net = net.children[0]
    return net


def _check_token_ids(net: nn.Layer, data: Dataset) -> None:
    """Integer inputs of a network that starts with an embedding must be ids in [0, vocab):
    under jit an id outside gives a row of NaN, found only once the loss is NaN."""
    first = _first_layer(net)
    if first.kind != "embedding":
        return
    vocab = int(first.config["vocab"])
    for split in ("train", "test"):
        x = np.asarray(getattr(data, f"x_{split}"))
        if not np.issubdtype(x.dtype, np.integer):
            raise TypeError(
                f"fit: data.x_{split} feeds the embedding {first.name!r}, so it must hold "
                f"integer token ids, got dtype {x.dtype}"
            )
        if x.size and (int(x.min()) < 0 or int(x.max()) >= vocab):
            raise ValueError(
                f"fit: data.x_{split} must hold token ids in [0, {vocab}) for the embedding "
                f"{first.name!r} (vocab={vocab}), got ids from {int(x.min())} to {int(x.max())}"
            )


def _check_key(key: Any) -> None:
    typed = isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    raw = isinstance(key, jax.Array | np.ndarray) and key.dtype == np.uint32 and key.shape == (2,)
    if not (typed and key.shape == ()) and not raw:
        what = f"{type(key).__name__} {getattr(key, 'dtype', '')} {getattr(key, 'shape', '')}"
        raise TypeError(f"fit: key must be one PRNG key (jax.random.key(seed)), got {what.strip()}")


def _check_opt_state(optimizer: Any, params: Any, opt_state: Any) -> None:
    """``opt_state`` must have the tree, shapes and dtypes of ``optimizer.init(params)``."""
    expected = jax.eval_shape(optimizer.init, params)
    want = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
    got = dict(jax.tree_util.tree_flatten_with_path(opt_state)[0])
    keystr = jax.tree_util.keystr
    missing = sorted(keystr(p) for p in want.keys() - got.keys())
    extra = sorted(keystr(p) for p in got.keys() - want.keys())
    if missing or extra or jax.tree.structure(expected) != jax.tree.structure(opt_state):
        raise ValueError(
            "fit: opt_state does not match optimizer.init(params) (a state of another optimizer "
            f"or model?): missing {missing[:4]}, unexpected {extra[:4]}; expected the tree "
            f"{jax.tree.structure(expected)}"[:600]
        )
    for path, like in want.items():
        leaf = got[path]
        shape, dtype = np.shape(leaf), getattr(leaf, "dtype", np.asarray(leaf).dtype)
        if shape != like.shape or np.dtype(dtype) != np.dtype(like.dtype):
            raise ValueError(
                f"fit: opt_state{keystr(path)}: expected shape {like.shape} and dtype "
                f"{np.dtype(like.dtype)} (as optimizer.init(params) gives), got {shape} "
                f"{np.dtype(dtype)}"
            )


def check_fit_inputs(
    net: nn.Layer,
    params: Any,
    data: Dataset,
    *,
    optimizer: Any,
    batch_size: int,
    key: Any,
    opt_state: Any,
    state: Any,
    callbacks: dict[str, Callable[..., Any] | None],
) -> None:
    """Every argument of ``fit`` that the shape checks of the layers do not already cover."""
    check_dataset(data)
    if not callable(getattr(optimizer, "init", None)) or not callable(
        getattr(optimizer, "update", None)
    ):
        raise TypeError(
            "fit: optimizer must be an optax GradientTransformation (with init and update), "
            f"got {type(optimizer).__name__}"
        )
    _check_key(key)
    for name, fn in callbacks.items():
        if fn is not None and not callable(fn):
            raise TypeError(f"fit: {name} must be callable or None, got {type(fn).__name__}")
    _check_token_ids(net, data)
    input_shape = (batch_size, *np.shape(data.x_train)[1:])
    nn.check_params(net, params, input_shape)
    if state is not None:
        nn.check_state(net, state, input_shape)
    if opt_state is not None:
        _check_opt_state(optimizer, params, opt_state)
    y = np.asarray(data.y_train)
    if np.issubdtype(y.dtype, np.integer):
        out = net.output_shape(input_shape)
        if tuple(out[-1:]) != (data.num_classes,):
            raise ValueError(
                f"fit: the network gives {out[-1] if out else 'no'} outputs per example (output "
                f"shape {tuple(out)}), but data.num_classes is {data.num_classes}"
            )

"""Checkpoints that cannot execute code on load, written atomically, restored exactly.

A checkpoint is one ``.npz`` file (read with ``allow_pickle=False``) holding every leaf of the
parameters, the optimizer state and the network's state under its tree path
(``params/dense_0/w``, ``opt_state/0/mu/dense_0/w``, ``state/batch_norm_1/mean``, ...), the
epoch, the PRNG key's data, the run's configuration as JSON, and a SHA-256 digest over all of
it. It is written to a temporary file in the same folder and renamed over the old one, so an
interrupted write leaves the previous checkpoint intact.

A checkpoint is never written with a NaN or infinite value in the parameters, the optimizer
state or the network state: :func:`save_checkpoint` refuses them, so the last checkpoint on disk
is always the last finite one.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from .._files import atomic_write

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]

_FORMAT = "manual_bp.checkpoint/1"


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` returns."""

    params: Any
    opt_state: Any
    epoch: int
    key: jax.Array
    config: dict[str, Any]
    state: Any = None
    """The network's state (batch-norm statistics), when ``state_like`` was given."""


def _flat(prefix: str, tree: Any) -> dict[str, np.ndarray]:
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        out["/".join([prefix, *parts])] = np.asarray(leaf)
    return out


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    params: Any,
    opt_state: Any,
    epoch: int,
    key: jax.Array,
    config: dict[str, Any],
    state: Any = None,
) -> None:
    """Write a checkpoint atomically (temporary file in the same folder, fsync, rename, fsync
    of the folder).

    ``state`` is the network's state (batch-norm running statistics), if it has any.
    """
    path = Path(path)
    arrays = {**_flat("params", params), **_flat("opt_state", opt_state)}
    arrays.update(_flat("state", {} if state is None else state))
    _check_finite(arrays, path)
    arrays.update(_meta(epoch, key, config))
    arrays["meta/format"] = np.frombuffer(_FORMAT.encode(), np.uint8)
    arrays["meta/digest"] = np.frombuffer(_digest(arrays).encode(), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays), "wb")


def _check_finite(arrays: dict[str, np.ndarray], path: Path) -> None:
    for name, a in arrays.items():
        if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
            bad = int(np.count_nonzero(~np.isfinite(a)))
            raise ValueError(
                f"save_checkpoint: {name} has {bad} non-finite values (NaN or inf) of {a.size}; "
                f"refusing to write them to {path}"
            )


def _meta(epoch: Any, key: Any, config: Any) -> dict[str, np.ndarray]:
    if isinstance(epoch, bool) or not isinstance(epoch, int | np.integer) or epoch < 0:
        raise ValueError(f"save_checkpoint: epoch must be a non-negative int, got {epoch!r}")
    if not isinstance(key, jax.Array) or not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        raise TypeError(
            f"save_checkpoint: key must be a typed PRNG key (jax.random.key(seed)), "
            f"got {type(key).__name__} {getattr(key, 'dtype', '')}".rstrip()
        )
    if not isinstance(config, dict):
        raise TypeError(f"save_checkpoint: config must be a dict, got {type(config).__name__}")
    try:
        text = json.dumps(config, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"save_checkpoint: config must be plain JSON data: {e}") from None
    return {
        "meta/epoch": np.asarray(epoch, np.int64),
        "meta/key": np.asarray(jax.random.key_data(key)),
        "meta/config": np.frombuffer(text.encode(), np.uint8),
    }


def _restore(prefix: str, template: Any, arrays: dict[str, np.ndarray], path: Path) -> Any:
    expected = _flat(prefix, template)
    have = {k for k in arrays if k.startswith(prefix + "/")}
    missing, extra = sorted(set(expected) - have), sorted(have - set(expected))
    if missing or extra:
        raise ValueError(
            f"checkpoint {path}: it was written for a different model or optimizer: "
            f"missing {missing[:5]}, unexpected {extra[:5]}"
        )
    leaves = []
    for name, like in expected.items():
        a = arrays[name]
        if a.shape != like.shape or a.dtype != like.dtype:
            raise ValueError(
                f"checkpoint {path}: {name} has shape {a.shape} and dtype {a.dtype}, the model "
                f"expects {like.shape} {like.dtype} (a checkpoint of a different model)"
            )
        leaves.append(jax.numpy.asarray(a))
    return jax.tree.unflatten(jax.tree.structure(template), leaves)


def load_checkpoint(
    path: str | os.PathLike[str], *, params_like: Any, opt_state_like: Any, state_like: Any = None
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` into the given tree structures
    (``state_like`` for the network's state; ``None`` for a network without state).

    Raises:
      ValueError: the file is missing, truncated, corrupted or tampered with (digest mismatch),
        not a checkpoint, or written for a different model or optimizer.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        raise ValueError(f"checkpoint {path}: unreadable (truncated or corrupted): {e}") from None
    try:
        fmt = arrays["meta/format"].tobytes().decode()
        digest = arrays.pop("meta/digest").tobytes().decode()
    except (KeyError, UnicodeDecodeError):
        raise ValueError(f"checkpoint {path}: not a manual_bp checkpoint") from None
    if fmt != _FORMAT:
        raise ValueError(f"checkpoint {path}: unknown format {fmt!r}, expected {_FORMAT!r}")
    if _digest(arrays) != digest:
        raise ValueError(f"checkpoint {path}: contents do not match its digest (corrupted)")
    params = _restore("params", params_like, arrays, path)
    opt_state = _restore("opt_state", opt_state_like, arrays, path)
    state = _restore("state", {} if state_like is None else state_like, arrays, path)
    key = jax.random.wrap_key_data(jax.numpy.asarray(arrays["meta/key"]))
    config = json.loads(arrays["meta/config"].tobytes().decode())
    epoch = int(arrays["meta/epoch"])
    return Checkpoint(params, opt_state, epoch, key, config, None if state_like is None else state)

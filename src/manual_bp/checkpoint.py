"""Checkpoints that cannot execute code on load, written atomically, restored exactly.

A checkpoint is one ``.npz`` file (read with ``allow_pickle=False``) holding every leaf of the
parameters and the optimizer state under its tree path (``params/dense_0/w``,
``opt_state/0/mu/dense_0/w``, ...), the epoch, the PRNG key's data, the run's configuration as
JSON, and a SHA-256 digest over all of it. It is written to a temporary file in the same folder
and renamed over the old one, so an interrupted write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]

_FORMAT = "manual_bp.checkpoint/1"


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` returns."""

    params: Any
    opt_state: Any
    epoch: int
    key: jax.Array
    config: dict[str, Any]


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
) -> None:
    """Write a checkpoint atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    arrays = {**_flat("params", params), **_flat("opt_state", opt_state)}
    arrays["meta/epoch"] = np.asarray(epoch, np.int64)
    arrays["meta/key"] = np.asarray(jax.random.key_data(key))
    arrays["meta/config"] = np.frombuffer(json.dumps(config, sort_keys=True).encode(), np.uint8)
    arrays["meta/format"] = np.frombuffer(_FORMAT.encode(), np.uint8)
    arrays["meta/digest"] = np.frombuffer(_digest(arrays).encode(), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    path: str | os.PathLike[str], *, params_like: Any, opt_state_like: Any
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` into the given tree structures.

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
    key = jax.random.wrap_key_data(jax.numpy.asarray(arrays["meta/key"]))
    config = json.loads(arrays["meta/config"].tobytes().decode())
    return Checkpoint(params, opt_state, int(arrays["meta/epoch"]), key, config)

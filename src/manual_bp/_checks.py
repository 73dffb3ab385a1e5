"""Input checks shared by rules and layers: they run on shapes and dtypes, before any tracing.

Every message names the op, what it expected and what it got.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FLOAT_DTYPES = "float16, bfloat16, float32, float64"


def dtype_of(x: Any) -> np.dtype:
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"expected an array, got {type(x).__name__}")
    return np.dtype(x.dtype)


def require_array(op: str, arg: str, x: Any) -> None:
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{op}: {arg} must be an array, got {type(x).__name__}")


def require_float(op: str, arg: str, x: Any) -> None:
    require_array(op, arg, x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{op}: {arg} must have a floating dtype ({FLOAT_DTYPES}), got {x.dtype}")


def require_integer(op: str, arg: str, x: Any) -> None:
    require_array(op, arg, x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{op}: {arg} must have an integer dtype, got {x.dtype}")


def require_same_dtype(op: str, **arrays: Any) -> None:
    dtypes = {name: np.dtype(a.dtype) for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name}: {dt}" for name, dt in dtypes.items())
        raise TypeError(f"{op}: all inputs must share one dtype, got {listed}")


def require_ndim(op: str, arg: str, x: Any, *, at_least: int = 0, exactly: int | None = None):
    if exactly is not None and x.ndim != exactly:
        raise ValueError(
            f"{op}: {arg} must have rank {exactly}, got rank {x.ndim} (shape {tuple(x.shape)})"
        )
    if x.ndim < at_least:
        raise ValueError(
            f"{op}: {arg} must have rank >= {at_least}, got rank {x.ndim} (shape {tuple(x.shape)})"
        )


def require_shape(op: str, arg: str, x: Any, expected: tuple[int, ...]) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{op}: {arg} must have shape {tuple(expected)}, got {tuple(x.shape)}")


def normalize_axis(op: str, axis: int, ndim: int) -> int:
    if not isinstance(axis, int | np.integer) or isinstance(axis, bool):
        raise TypeError(f"{op}: axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{op}: axis {axis} is out of range for an input of rank {ndim}")
    return int(axis) % ndim


def is_int(value: Any) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def require_int(
    op: str, arg: str, value: Any, expected: str, *, at_least: int | None = None,
    at_most: int | None = None,
) -> None:  # fmt: skip
    """``value`` must be an int in [at_least, at_most]: TypeError if it is no int, ValueError if
    it is out of range; the message says ``{arg} must be {expected}, got {value!r}``."""
    if not is_int(value):
        raise TypeError(f"{op}: {arg} must be {expected}, got {value!r}")
    if (at_least is not None and value < at_least) or (at_most is not None and value > at_most):
        raise ValueError(f"{op}: {arg} must be {expected}, got {value!r}")


def require_positive_int(op: str, arg: str, value: Any) -> int:
    """``value`` as an int if it is a positive int (not a bool): TypeError if it is no int,
    ValueError if it is below 1; the message says ``{op}: {arg} must be a positive int``."""
    require_int(op, arg, value, "a positive int", at_least=1)
    return int(value)


def require_leaves(op: str, tree: Any, what: str = "tree") -> None:
    """Every leaf of ``tree`` is an array or a Python number; else name the first bad path."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not hasattr(leaf, "dtype") and not isinstance(leaf, int | float | complex):
            raise TypeError(
                f"{op}: every leaf of {what} must be an array or a number, got "
                f"{type(leaf).__name__} at {what}{jax.tree_util.keystr(path)}"
            )


def prefix_errors(where: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a plain ValueError/TypeError it raises gets ``where`` in front (subclasses,
    which may carry their own fields, pass through unchanged)."""
    try:
        return fn()
    except (ValueError, TypeError) as e:
        if type(e) not in (ValueError, TypeError):
            raise
        raise type(e)(f"{where}: {e}") from None

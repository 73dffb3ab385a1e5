"""Linear maps: ``dense`` (x @ w + b) and ``matmul``.

Index letters: ``...`` any leading batch dims, ``m`` rows, ``k`` contracted, ``n`` columns,
``i`` input features, ``o`` output features.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from .._checks import require_float, require_ndim, require_same_dtype, require_shape
from .contract import register

__all__ = ["DenseResiduals", "dense", "matmul"]


class DenseResiduals(NamedTuple):
    """What ``dense``'s backward needs: the input x (the activation a, ∂y/∂w) and w."""

    x: Any
    w: Any


def _dense_fwd(x: Any, w: Any, b: Any) -> tuple[Any, DenseResiduals]:
    """y[..., o] = Σ_i x[..., i] w[i, o] + b[o] over any leading batch dims of x."""
    for arg, a in (("x", x), ("w", w), ("b", b)):
        require_float("dense", arg, a)
    require_same_dtype("dense", x=x, w=w, b=b)
    require_ndim("dense", "w", w, exactly=2)
    require_ndim("dense", "x", x, at_least=1)
    i, o = w.shape
    if x.shape[-1] != i:
        raise ValueError(
            f"dense: x must have shape (..., {i}) to match w of shape {tuple(w.shape)}, "
            f"got {tuple(x.shape)}"
        )
    require_shape("dense", "b", b, (o,))
    y = jnp.einsum("...i,io->...o", x, w) + jnp.reshape(b, (1,) * (x.ndim - 1) + (o,))
    return y, DenseResiduals(x, w)


def _dense_bwd(res: DenseResiduals, g: Any) -> tuple[Any, Any, Any]:
    """dx = g wᵀ;  dw = Σ_batch xᵀ g;  db = Σ_batch g  (sums over every broadcast batch axis)."""
    x, w = res
    dx = jnp.einsum("...o,io->...i", g, w)
    dw = jnp.einsum("...i,...o->io", x, g)
    db = jnp.sum(g, axis=tuple(range(g.ndim - 1)))
    return dx, dw, db


def _dense_jvp(res: DenseResiduals, dx: Any, dw: Any, db: Any) -> Any:
    """(dx, dw, db) ↦ dy = dx w + x dw + db  (a ``None`` tangent is a zero one)."""
    x, w = res
    o = w.shape[1]
    dy = jnp.zeros((*x.shape[:-1], o), x.dtype)
    if dx is not None:
        dy = dy + jnp.einsum("...i,io->...o", dx, w)
    if dw is not None:
        dy = dy + jnp.einsum("...i,io->...o", x, dw)
    if db is not None:
        dy = dy + jnp.reshape(db, (1,) * (x.ndim - 1) + (o,))
    return dy


dense = register("dense", _dense_fwd, _dense_bwd, _dense_jvp)


def _matmul_fwd(a: Any, b: Any) -> tuple[Any, tuple[Any, Any]]:
    """c[..., m, n] = Σ_k a[..., m, k] b[..., k, n]; b is (k, n) shared or has a's batch dims."""
    require_float("matmul", "a", a)
    require_float("matmul", "b", b)
    require_same_dtype("matmul", a=a, b=b)
    require_ndim("matmul", "a", a, at_least=2)
    require_ndim("matmul", "b", b, at_least=2)
    if b.ndim != 2 and tuple(b.shape[:-2]) != tuple(a.shape[:-2]):
        raise ValueError(
            f"matmul: b must have shape (k, n) or {(*a.shape[:-2], a.shape[-1], 'n')} "
            f"(a's batch dims), got {tuple(b.shape)} for a of shape {tuple(a.shape)}"
        )
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(
            f"matmul: contracted dims differ: a is {tuple(a.shape)} (k={a.shape[-1]}), "
            f"b is {tuple(b.shape)} (k={b.shape[-2]})"
        )
    b_spec = "kn" if b.ndim == 2 else "...kn"
    return jnp.einsum(f"...mk,{b_spec}->...mn", a, b), (a, b)


def _matmul_bwd(res: tuple[Any, Any], g: Any) -> tuple[Any, Any]:
    """da = g bᵀ;  db = aᵀ g, summed over a's batch dims when b is shared."""
    a, b = res
    b_spec = "kn" if b.ndim == 2 else "...kn"
    da = jnp.einsum(f"...mn,{b_spec}->...mk", g, b)
    db = jnp.einsum(f"...mk,...mn->{b_spec}", a, g)
    return da, db


def _matmul_jvp(res: tuple[Any, Any], da: Any, db: Any) -> Any:
    """(da, db) ↦ dc = da b + a db  (a ``None`` tangent is a zero one)."""
    a, b = res
    b_spec = "kn" if b.ndim == 2 else "...kn"
    dc = jnp.zeros((*a.shape[:-1], b.shape[-1]), a.dtype)
    if da is not None:
        dc = dc + jnp.einsum(f"...mk,{b_spec}->...mn", da, b)
    if db is not None:
        dc = dc + jnp.einsum(f"...mk,{b_spec}->...mn", a, db)
    return dc


matmul = register("matmul", _matmul_fwd, _matmul_bwd, _matmul_jvp)

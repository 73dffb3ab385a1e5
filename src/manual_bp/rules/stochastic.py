"""Inverted dropout: ``dropout(x, key, rate=p)`` keeps each entry with probability 1 − p and
scales the kept ones by 1/(1 − p), so the expected output is x and evaluation needs no rescale.

The mask is drawn from the PRNG key passed in (``jax.random.bernoulli(key, 1 − p, x.shape)``),
so the same key gives the same mask — in this rule and in the reference. The residual is the
scaled mask s; the backward is dx = g s. The key gets no cotangent.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._checks import require_array, require_float
from .contract import register

__all__ = ["DropoutResiduals", "dropout"]


class DropoutResiduals(NamedTuple):
    """What ``dropout``'s backward needs: the scaled mask s = m / (1 − p)."""

    scale: Any


def require_rate(op: str, rate: Any) -> float:
    """A dropout rate must be a Python number in [0, 1)."""
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise TypeError(f"{op}: rate must be a Python number in [0, 1), got {rate!r}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{op}: rate must be in [0, 1), got {rate!r}")
    return float(rate)


def require_key(op: str, key: Any) -> None:
    """A PRNG key: a typed key (``jax.random.key``) or raw uint32 key data (``PRNGKey``)."""
    require_array(op, "key", key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.ndim != 0:
            raise ValueError(f"{op}: key must be a single PRNG key, got shape {tuple(key.shape)}")
        return
    if key.dtype != jnp.uint32 or key.ndim != 1:
        raise TypeError(
            f"{op}: key must be a PRNG key (jax.random.key or jax.random.PRNGKey), got an array "
            f"of shape {tuple(key.shape)} and dtype {key.dtype}"
        )


def _dropout_fwd(x, key, *, rate):
    """y = x s,  s = m / (1 − p),  m ~ Bernoulli(1 − p) element-wise. The residual is s."""
    require_float("dropout", "x", x)
    require_key("dropout", key)
    rate = require_rate("dropout", rate)
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    scale = jnp.where(keep, jnp.asarray(1.0 / (1.0 - rate), x.dtype), jnp.zeros((), x.dtype))
    return x * scale, DropoutResiduals(scale)


def _dropout_bwd(res, g, *, rate):
    """dx = g s (the dropped entries get no gradient); the key gets ``None``."""
    del rate
    (scale,) = res
    return g * scale, None


def _dropout_jvp(res, dx, dkey, *, rate):
    """(dx, ·) ↦ dy = dx s; the key takes no tangent (``dkey`` is ``None``)."""
    del rate, dkey
    return dx * res.scale


dropout = register("dropout", _dropout_fwd, _dropout_bwd, _dropout_jvp)

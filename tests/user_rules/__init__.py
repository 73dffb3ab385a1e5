"""A package of the user's own rules, audited as a user would: ``manual-bp verify --module
user_rules`` and :mod:`manual_bp.testing` read its ``RULES`` and ``ROWS``.

* ``swish_beta``: y = z σ(βz), ∂y/∂z = s + β z s (1 − s) with s = σ(βz);
* ``prelu``: y = x if x > 0 else α x with a learned slope α per feature (the last axis).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from manual_bp import Rule
from manual_bp.verify import Row
from manual_bp.verify.table import F32, F64, unary


def swish_beta_fwd(z, *, beta=1.0):
    """y = z σ(βz); the residuals are z and s = σ(βz)."""
    s = jax.nn.sigmoid(beta * z)
    return z * s, (z, s)


def swish_beta_bwd(res, g, *, beta=1.0):
    """dz = g (s + β z s (1 − s))."""
    z, s = res
    return (g * (s + beta * z * s * (1 - s)),)


def _feature(alpha, ndim):
    return jnp.reshape(alpha, (1,) * (ndim - 1) + alpha.shape)


def prelu_fwd(x, alpha):
    """y = x if x > 0 else α x, α (D,) along the last axis; the residuals are x and α."""
    return jnp.where(x > 0, x, _feature(alpha, x.ndim) * x), (x, alpha)


def prelu_bwd(res, g):
    """dx = g (1 if x > 0 else α); dα = Σ_batch g x [x ≤ 0] (α was broadcast over the batch)."""
    x, alpha = res
    batch = tuple(range(x.ndim - 1))
    dx = g * jnp.where(x > 0, 1.0, _feature(alpha, x.ndim))
    return dx, jnp.sum(g * jnp.where(x > 0, 0.0, x), axis=batch)


def prelu_args(rng, shape, dtype, domain):
    """x of ``shape`` and a slope α in [0.05, 0.5] per feature."""
    (x,) = unary(rng, shape, dtype, domain)
    return x, jnp.asarray(rng.uniform(0.05, 0.5, size=shape[-1:]), dtype)


RULES = {
    "swish_beta": Rule("swish_beta", swish_beta_fwd, swish_beta_bwd),
    "prelu": Rule("prelu", prelu_fwd, prelu_bwd),
}

ROWS = (
    Row("swish_beta", unary, ((4, 5),), static={"beta": 1.5}),
    Row("prelu", prelu_args, ((6, 4),), diff=(0, 1), dtypes=(F64, F32)),
)

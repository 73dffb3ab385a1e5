"""Normalizations along one axis: ``softmax``, ``log_softmax`` and ``logsumexp``.

All three shift by the (gradient-free) maximum before exponentiating, so |z| ≈ 1e3 stays finite,
and masked entries z = −inf get probability 0.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from .._checks import normalize_axis, require_float
from .contract import register

__all__ = ["log_softmax", "logsumexp", "softmax"]


def _shifted(op, z, axis):
    """z − max(z) along ``axis`` (keepdims), the max treated as a constant (it cancels)."""
    require_float(op, "z", z)
    axis = normalize_axis(op, axis, z.ndim)
    m = lax.stop_gradient(jnp.max(z, axis=axis, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0)
    return z - m, m, axis


def _softmax_fwd(z, *, axis=-1):
    """p_i = e^{z_i} / Σ_j e^{z_j} along ``axis``; the residual is p."""
    s, _, axis = _shifted("softmax", z, axis)
    e = jnp.exp(s)
    p = e / jnp.sum(e, axis=axis, keepdims=True)
    return p, (p,)


def _softmax_bwd(res, g, *, axis=-1):
    """dz_i = p_i (g_i − Σ_j p_j g_j)."""
    (p,) = res
    return (p * (g - jnp.sum(p * g, axis=axis, keepdims=True)),)


def _softmax_jvp(res, t, *, axis=-1):
    """dz ↦ dp = p ⊙ (dz − Σ_j p_j dz_j)."""
    (p,) = res
    return p * (t - jnp.sum(p * t, axis=axis, keepdims=True))


softmax = register("softmax", _softmax_fwd, _softmax_bwd, _softmax_jvp)


def log_softmax_fwd(z, *, axis=-1):
    """y_i = z_i − logsumexp(z) along ``axis``; the residual is y."""
    s, _, axis = _shifted("log_softmax", z, axis)
    y = s - jnp.log(jnp.sum(jnp.exp(s), axis=axis, keepdims=True))
    return y, (y,)


def _log_softmax_bwd(res, g, *, axis=-1):
    """dz_i = g_i − e^{y_i} Σ_j g_j."""
    (y,) = res
    return (g - jnp.exp(y) * jnp.sum(g, axis=axis, keepdims=True),)


def _log_softmax_jvp(res, t, *, axis=-1):
    """dz ↦ dy = dz − Σ_j e^{y_j} dz_j."""
    (y,) = res
    return t - jnp.sum(jnp.exp(y) * t, axis=axis, keepdims=True)


log_softmax = register("log_softmax", log_softmax_fwd, _log_softmax_bwd, _log_softmax_jvp)


def _logsumexp_fwd(z, *, axis=-1):
    """L = log Σ_i e^{z_i} along ``axis`` (the axis is removed); the residual is p = e^{z − L}."""
    s, m, axis = _shifted("logsumexp", z, axis)
    log_sum = jnp.log(jnp.sum(jnp.exp(s), axis=axis, keepdims=True))
    p = jnp.exp(s - log_sum)
    return jnp.squeeze(log_sum + m, axis=axis), (p,)


def _logsumexp_bwd(res, g, *, axis=-1):
    """dz_i = g p_i, p = softmax(z)."""
    (p,) = res
    axis = axis % p.ndim
    return (jnp.expand_dims(g, axis) * p,)


def _logsumexp_jvp(res, t, *, axis=-1):
    """dz ↦ dL = Σ_i p_i dz_i, p = softmax(z) (the axis is removed)."""
    (p,) = res
    return jnp.sum(p * t, axis=axis % p.ndim)


logsumexp = register("logsumexp", _logsumexp_fwd, _logsumexp_bwd, _logsumexp_jvp)

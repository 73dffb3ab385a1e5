"""Normalizations: ``layer_norm`` and ``rms_norm`` over the last (feature) axis, ``batch_norm``
over every other axis (the batch), and ``batch_norm_inference`` with fixed statistics.

Index letters: ``...`` any leading batch dims, ``d`` features (size D). For ``batch_norm`` the
statistics are taken per feature over the M = (number of elements) / D positions ``m`` of the
batch (N for (N, D), N·H·W for NHWC images). Every backward pass goes through the statistics
(mean, variance or mean square): the simplified form that treats them as constants is wrong
whenever the statistics depend on x, which is always.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import lax

from .._checks import require_float, require_ndim, require_same_dtype, require_shape
from .contract import register

__all__ = ["batch_moments", "batch_norm", "batch_norm_inference", "layer_norm", "rms_norm"]


def require_eps(op: str, eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps > 0:
        raise ValueError(f"{op}: eps must be a positive Python number, got {eps!r}")
    return float(eps)


def _check(op: str, x: Any, **params: Any) -> int:
    require_float(op, "x", x)
    for arg, p in params.items():
        require_float(op, arg, p)
    require_same_dtype(op, x=x, **params)
    require_ndim(op, "x", x, at_least=1)
    d = x.shape[-1]
    for arg, p in params.items():
        require_shape(op, f"{arg} (one per feature of x {tuple(x.shape)})", p, (d,))
    return d


def _row(p: Any, ndim: int) -> Any:
    """A (d,) parameter reshaped to (1, ..., 1, d) for an input of rank ``ndim``."""
    return jnp.reshape(p, (1,) * (ndim - 1) + p.shape)


def _layer_norm_fwd(x, gamma, beta, *, eps=1e-5):
    """y = x̂ γ + β,  x̂ = (x − μ) r,  μ = mean_d x,  r = 1/√(mean_d (x − μ)² + ε).

    Two passes (the variance of the centred x), so a large mean costs no precision.
    The residuals are x̂, r and γ.
    """
    _check("layer_norm", x, gamma=gamma, beta=beta)
    eps = require_eps("layer_norm", eps)
    xc = x - jnp.mean(x, axis=-1, keepdims=True)
    r = lax.rsqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + eps)
    xhat = xc * r
    return xhat * _row(gamma, x.ndim) + _row(beta, x.ndim), (xhat, r, gamma)


def _layer_norm_bwd(res, g, *, eps=1e-5):
    """dx = r (ĝ − mean_d ĝ − x̂ mean_d(ĝ x̂)), ĝ = g γ;  dγ = Σ_... g x̂;  dβ = Σ_... g."""
    del eps
    xhat, r, gamma = res
    gh = g * _row(gamma, g.ndim)
    mean_gh = jnp.mean(gh, axis=-1, keepdims=True)
    mean_ghx = jnp.mean(gh * xhat, axis=-1, keepdims=True)
    dx = r * (gh - mean_gh - xhat * mean_ghx)
    batch = tuple(range(g.ndim - 1))
    return dx, jnp.sum(g * xhat, axis=batch), jnp.sum(g, axis=batch)


def _layer_norm_jvp(res, dx, dgamma, dbeta, *, eps=1e-5):
    """(dx, dγ, dβ) ↦ dy = γ r (dx − mean_d dx − x̂ mean_d(x̂ dx)) + x̂ dγ + dβ."""
    del eps
    xhat, r, gamma = res
    dxhat = r * (
        dx
        - jnp.mean(dx, axis=-1, keepdims=True)
        - xhat * jnp.mean(xhat * dx, axis=-1, keepdims=True)
    )
    return dxhat * _row(gamma, dx.ndim) + xhat * _row(dgamma, dx.ndim) + _row(dbeta, dx.ndim)


layer_norm = register("layer_norm", _layer_norm_fwd, _layer_norm_bwd, _layer_norm_jvp)


def _rms_norm_fwd(x, gamma, *, eps=1e-6):
    """y = x̂ γ,  x̂ = x r,  r = 1/√(mean_d x² + ε); the residuals are x̂, r and γ."""
    _check("rms_norm", x, gamma=gamma)
    eps = require_eps("rms_norm", eps)
    r = lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    xhat = x * r
    return xhat * _row(gamma, x.ndim), (xhat, r, gamma)


def _rms_norm_bwd(res, g, *, eps=1e-6):
    """dx = r (ĝ − x̂ mean_d(ĝ x̂)), ĝ = g γ;  dγ = Σ_... g x̂."""
    del eps
    xhat, r, gamma = res
    gh = g * _row(gamma, g.ndim)
    dx = r * (gh - xhat * jnp.mean(gh * xhat, axis=-1, keepdims=True))
    return dx, jnp.sum(g * xhat, axis=tuple(range(g.ndim - 1)))


def _rms_norm_jvp(res, dx, dgamma, *, eps=1e-6):
    """(dx, dγ) ↦ dy = γ r (dx − x̂ mean_d(x̂ dx)) + x̂ dγ."""
    del eps
    xhat, r, gamma = res
    dxhat = r * (dx - xhat * jnp.mean(xhat * dx, axis=-1, keepdims=True))
    return dxhat * _row(gamma, dx.ndim) + xhat * _row(dgamma, dx.ndim)


rms_norm = register("rms_norm", _rms_norm_fwd, _rms_norm_bwd, _rms_norm_jvp)


def batch_moments(x: Any) -> tuple[Any, Any]:
    """Per-feature mean μ_d = mean_m x and biased variance σ²_d = mean_m (x − μ)² over every
    axis but the last, each of shape (D,). Two passes (the variance of the centred x)."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    xc = x - _row(mean, x.ndim)
    return mean, jnp.mean(xc * xc, axis=axes)


def _batch_norm_fwd(x, gamma, beta, *, eps=1e-5):
    """Training mode: y = x̂ γ + β,  x̂ = (x − μ) r,  r = 1/√(σ² + ε), with μ, σ² the batch's
    own per-feature statistics (:func:`batch_moments`). The residuals are x̂, r (D,) and γ."""
    _check("batch_norm", x, gamma=gamma, beta=beta)
    eps = require_eps("batch_norm", eps)
    mean, var = batch_moments(x)
    r = lax.rsqrt(var + eps)
    xhat = (x - _row(mean, x.ndim)) * _row(r, x.ndim)
    return xhat * _row(gamma, x.ndim) + _row(beta, x.ndim), (xhat, r, gamma)


def _batch_norm_bwd(res, g, *, eps=1e-5):
    """dx = r (ĝ − mean_m ĝ − x̂ mean_m(ĝ x̂)), ĝ = g γ;  dγ = Σ_m g x̂;  dβ = Σ_m g.

    Layer norm's backward with the roles of the axes swapped: every x in the batch moves μ and
    σ², so each output depends on every input of its feature column.
    """
    del eps
    xhat, r, gamma = res
    batch = tuple(range(g.ndim - 1))
    gh = g * _row(gamma, g.ndim)
    mean_gh = jnp.mean(gh, axis=batch, keepdims=True)
    mean_ghx = jnp.mean(gh * xhat, axis=batch, keepdims=True)
    dx = _row(r, g.ndim) * (gh - mean_gh - xhat * mean_ghx)
    return dx, jnp.sum(g * xhat, axis=batch), jnp.sum(g, axis=batch)


def _batch_norm_jvp(res, dx, dgamma, dbeta, *, eps=1e-5):
    """(dx, dγ, dβ) ↦ dy = γ r (dx − mean_m dx − x̂ mean_m(x̂ dx)) + x̂ dγ + dβ."""
    del eps
    xhat, r, gamma = res
    batch = tuple(range(dx.ndim - 1))
    centred = dx - jnp.mean(dx, axis=batch, keepdims=True)
    dxhat = _row(r, dx.ndim) * (centred - xhat * jnp.mean(xhat * dx, axis=batch, keepdims=True))
    return dxhat * _row(gamma, dx.ndim) + xhat * _row(dgamma, dx.ndim) + _row(dbeta, dx.ndim)


batch_norm = register("batch_norm", _batch_norm_fwd, _batch_norm_bwd, _batch_norm_jvp)


def _batch_norm_inference_fwd(x, mean, var, gamma, beta, *, eps=1e-5):
    """Evaluation mode: y = x̂ γ + β,  x̂ = (x − μ) r,  r = 1/√(v + ε), with fixed per-feature
    statistics μ = ``mean`` and v = ``var`` (the running averages). The residuals are x̂, r, γ."""
    _check("batch_norm_inference", x, mean=mean, var=var, gamma=gamma, beta=beta)
    eps = require_eps("batch_norm_inference", eps)
    r = lax.rsqrt(var + eps)
    xhat = (x - _row(mean, x.ndim)) * _row(r, x.ndim)
    return xhat * _row(gamma, x.ndim) + _row(beta, x.ndim), (xhat, r, gamma)


def _batch_norm_inference_bwd(res, g, *, eps=1e-5):
    """A per-feature affine map, so no sums through statistics:
    dx = g γ r;  dμ = −Σ_m g γ r;  dv = −½ Σ_m g γ x̂ r²;  dγ = Σ_m g x̂;  dβ = Σ_m g."""
    del eps
    xhat, r, gamma = res
    batch = tuple(range(g.ndim - 1))
    gr = g * _row(gamma * r, g.ndim)
    dvar = -0.5 * jnp.sum(gr * xhat, axis=batch) * r
    return (
        gr,
        -jnp.sum(gr, axis=batch),
        dvar,
        jnp.sum(g * xhat, axis=batch),
        jnp.sum(g, axis=batch),
    )


def _batch_norm_inference_jvp(res, dx, dmean, dvar, dgamma, dbeta, *, eps=1e-5):
    """(dx, dμ, dv, dγ, dβ) ↦ dy = γ (r (dx − dμ) − ½ x̂ r² dv) + x̂ dγ + dβ."""
    del eps
    xhat, r, gamma = res
    n = dx.ndim
    dxhat = _row(r, n) * (dx - _row(dmean, n)) - 0.5 * xhat * _row(r * r * dvar, n)
    return dxhat * _row(gamma, n) + xhat * _row(dgamma, n) + _row(dbeta, n)


batch_norm_inference = register(
    "batch_norm_inference",
    _batch_norm_inference_fwd,
    _batch_norm_inference_bwd,
    _batch_norm_inference_jvp,
)

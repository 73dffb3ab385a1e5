"""Elementwise activations a = σ(z) and their derivatives σ'(z), the lecture's amplifiers.

Every backward here is ``dz = g · σ'(z)`` and every jvp ``dz ↦ σ'(z)·dz``; each docstring
gives σ'. Piecewise forms use a
double ``where`` so the branch not taken never produces an inf or NaN.

Beside each rule sits its second derivative σ''(z), computed from the same residuals
(:data:`SECOND_DERIVATIVES`): the term diag(σ''(z) ⊙ ∂C/∂a) that an activation adds to the
Hessian backpropagated through it (:func:`manual_bp.curvature.hessian_diag`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from typing import Any

import jax.numpy as jnp
from jax import lax

from .._checks import require_float
from .contract import register

__all__ = [
    "SECOND_DERIVATIVES",
    "elu",
    "gelu",
    "leaky_relu",
    "relu",
    "sigmoid",
    "silu",
    "softplus",
    "tanh",
]

_SQRT_2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715


def _require_real(op: str, arg: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{op}: {arg} must be a Python real number, got {type(value).__name__}")
    return float(value)


def _sigmoid_fwd(z):
    """a = 1 / (1 + e^{-z}); the residual is a itself."""
    require_float("sigmoid", "z", z)
    a = lax.logistic(z)
    return a, (a,)


def _sigmoid_bwd(res, g):
    """σ'(z) = a (1 − a)."""
    (a,) = res
    return (g * a * (1 - a),)


def _sigmoid_jvp(res, t):
    """dz ↦ σ'(z)·dz = a(1 − a)·dz."""
    (a,) = res
    return t * a * (1 - a)


sigmoid = register("sigmoid", _sigmoid_fwd, _sigmoid_bwd, _sigmoid_jvp)


def _tanh_fwd(z):
    """a = tanh z; the residual is a."""
    require_float("tanh", "z", z)
    a = jnp.tanh(z)
    return a, (a,)


def _tanh_bwd(res, g):
    """tanh'(z) = 1 − a²."""
    (a,) = res
    return (g * (1 - a * a),)


def _tanh_jvp(res, t):
    """dz ↦ tanh'(z)·dz = (1 − a²)·dz."""
    (a,) = res
    return t * (1 - a * a)


tanh = register("tanh", _tanh_fwd, _tanh_bwd, _tanh_jvp)


def _relu_fwd(z):
    """a = max(z, 0); the residual is a (a > 0 exactly where z > 0)."""
    require_float("relu", "z", z)
    a = jnp.where(z > 0, z, 0)
    return a, (a,)


def _relu_bwd(res, g):
    """relu'(z) = 1 if z > 0 else 0 (convention: relu'(0) = 0)."""
    (a,) = res
    return (jnp.where(a > 0, g, 0),)


def _relu_jvp(res, t):
    """dz ↦ relu'(z)·dz = [z > 0]·dz (relu'(0) = 0, as in the backward)."""
    (a,) = res
    return jnp.where(a > 0, t, 0)


relu = register("relu", _relu_fwd, _relu_bwd, _relu_jvp)


def _leaky_relu_fwd(z, *, negative_slope=0.01):
    """a = z if z > 0 else s·z, s = ``negative_slope``; the residual is the mask z > 0."""
    require_float("leaky_relu", "z", z)
    s = _require_real("leaky_relu", "negative_slope", negative_slope)
    positive = z > 0
    return jnp.where(positive, z, s * z), (positive,)


def _leaky_relu_bwd(res, g, *, negative_slope=0.01):
    """leaky_relu'(z) = 1 if z > 0 else s (convention: leaky_relu'(0) = s, the left side)."""
    (positive,) = res
    return (jnp.where(positive, g, negative_slope * g),)


def _leaky_relu_jvp(res, t, *, negative_slope=0.01):
    """dz ↦ leaky_relu'(z)·dz = (dz if z > 0 else s·dz)."""
    (positive,) = res
    return jnp.where(positive, t, negative_slope * t)


leaky_relu = register("leaky_relu", _leaky_relu_fwd, _leaky_relu_bwd, _leaky_relu_jvp)


def _elu_fwd(z, *, alpha=1.0):
    """a = z if z > 0 else α(e^z − 1); the residual is z (α e^z stays exact for z ≪ 0)."""
    require_float("elu", "z", z)
    alpha = _require_real("elu", "alpha", alpha)
    if alpha <= 0:
        raise ValueError(f"elu: alpha must be > 0, got {alpha}")
    positive = z > 0
    a = jnp.where(positive, z, alpha * jnp.expm1(jnp.where(positive, 0, z)))
    return a, (z,)


def _elu_bwd(res, g, *, alpha=1.0):
    """elu'(z) = 1 if z > 0 else α e^z (convention: elu'(0) = α, the left side)."""
    (z,) = res
    positive = z > 0
    return (jnp.where(positive, g, g * alpha * jnp.exp(jnp.where(positive, 0, z))),)


def _elu_jvp(res, t, *, alpha=1.0):
    """dz ↦ elu'(z)·dz = (dz if z > 0 else α e^z·dz)."""
    (z,) = res
    positive = z > 0
    return jnp.where(positive, t, t * alpha * jnp.exp(jnp.where(positive, 0, z)))


elu = register("elu", _elu_fwd, _elu_bwd, _elu_jvp)


def _gelu_fwd(z, *, approximate=False):
    """a = z Φ(z) (exact), or a = ½ z (1 + tanh(√(2/π)(z + 0.044715 z³))) (approximate)."""
    require_float("gelu", "z", z)
    if not isinstance(approximate, bool):
        raise TypeError(f"gelu: approximate must be a bool, got {type(approximate).__name__}")
    if approximate:
        t = jnp.tanh(_SQRT_2_OVER_PI * (z + _GELU_CUBIC * z * z * z))
        return 0.5 * z * (1 + t), (z,)
    return z * (0.5 * lax.erfc(-z / _SQRT_2)), (z,)


def _gelu_slope(z, approximate):
    """gelu'(z) = Φ(z) + z φ(z) (exact);  ½(1 + t) + ½ z (1 − t²) √(2/π)(1 + 3·0.044715 z²)."""
    if approximate:
        t = jnp.tanh(_SQRT_2_OVER_PI * (z + _GELU_CUBIC * z * z * z))
        du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * z * z)
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * du
    cdf = 0.5 * lax.erfc(-z / _SQRT_2)
    pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)
    return cdf + z * pdf


def _gelu_bwd(res, g, *, approximate=False):
    """dz = g · gelu'(z), gelu' as in :func:`_gelu_slope`."""
    (z,) = res
    return (g * _gelu_slope(z, approximate),)


def _gelu_jvp(res, t, *, approximate=False):
    """dz ↦ gelu'(z)·dz = (Φ(z) + z φ(z))·dz (exact; the tanh form's slope when approximate)."""
    (z,) = res
    return t * _gelu_slope(z, approximate)


gelu = register("gelu", _gelu_fwd, _gelu_bwd, _gelu_jvp)


def _softplus_fwd(z):
    """a = log(1 + e^z), computed as logaddexp(z, 0); the residual is z."""
    require_float("softplus", "z", z)
    return jnp.logaddexp(z, 0), (z,)


def _softplus_bwd(res, g):
    """softplus'(z) = σ(z)."""
    (z,) = res
    return (g * lax.logistic(z),)


def _softplus_jvp(res, t):
    """dz ↦ softplus'(z)·dz = σ(z)·dz."""
    (z,) = res
    return t * lax.logistic(z)


softplus = register("softplus", _softplus_fwd, _softplus_bwd, _softplus_jvp)


def _silu_fwd(z):
    """a = z σ(z); the residual is z."""
    require_float("silu", "z", z)
    return z * lax.logistic(z), (z,)


def _silu_bwd(res, g):
    """silu'(z) = σ(z) (1 + z (1 − σ(z)))."""
    (z,) = res
    s = lax.logistic(z)
    return (g * s * (1 + z * (1 - s)),)


def _silu_jvp(res, t):
    """dz ↦ silu'(z)·dz = σ(z)(1 + z(1 − σ(z)))·dz."""
    (z,) = res
    s = lax.logistic(z)
    return t * s * (1 + z * (1 - s))


silu = register("silu", _silu_fwd, _silu_bwd, _silu_jvp)


# ---- second derivatives σ''(z), from each rule's residuals --------------------------------


def _sigmoid_second(res):
    """σ'' = a (1 − a)(1 − 2a)."""
    (a,) = res
    return a * (1 - a) * (1 - 2 * a)


def _tanh_second(res):
    """tanh'' = −2a (1 − a²)."""
    (a,) = res
    return -2 * a * (1 - a * a)


def _relu_second(res):
    """relu'' = 0 (z ≠ 0)."""
    (a,) = res
    return jnp.zeros_like(a)


def _elu_second(res, *, alpha=1.0):
    """elu'' = 0 if z > 0 else α e^z (double ``where``)."""
    (z,) = res
    positive = z > 0
    return jnp.where(positive, 0, alpha * jnp.exp(jnp.where(positive, 0, z)))


def _gelu_second(res, *, approximate=False):
    """gelu'' = φ(z)(2 − z²) (exact); with t = tanh u, u = √(2/π)(z + 0.044715 z³):
    (1 − t²)(u' − z t u'² + ½ z u''), u' = √(2/π)(1 + 3·0.044715 z²), u'' = 6·0.044715 √(2/π) z."""
    (z,) = res
    if approximate:
        t = jnp.tanh(_SQRT_2_OVER_PI * (z + _GELU_CUBIC * z * z * z))
        du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * z * z)
        ddu = _SQRT_2_OVER_PI * 6 * _GELU_CUBIC * z
        sech2 = 1 - t * t
        # where sech² is 0 (|z| large) the product is 0; u'² overflows first in float16
        return jnp.where(sech2 > 0, sech2 * (du - z * t * du * du + 0.5 * z * ddu), 0)
    pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)
    return pdf * (2 - z * z)


def _softplus_second(res):
    """softplus'' = σ(z)(1 − σ(z))."""
    (z,) = res
    s = lax.logistic(z)
    return s * (1 - s)


def _silu_second(res):
    """silu'' = σ(z)(1 − σ(z))(2 + z (1 − 2σ(z)))."""
    (z,) = res
    s = lax.logistic(z)
    return s * (1 - s) * (2 + z * (1 - 2 * s))


def _leaky_relu_second(res, *, negative_slope=0.01):
    """leaky_relu'' = 0 (z ≠ 0)."""
    del negative_slope
    (positive,) = res  # a bool mask: weakly typed zeros take the dtype of what they meet
    return jnp.where(positive, 0.0, 0.0)


SECOND_DERIVATIVES: dict[str, Callable[..., Any]] = {
    "sigmoid": _sigmoid_second,
    "tanh": _tanh_second,
    "relu": _relu_second,
    "leaky_relu": _leaky_relu_second,
    "elu": _elu_second,
    "gelu": _gelu_second,
    "softplus": _softplus_second,
    "silu": _silu_second,
}
"""σ''(z) by rule name: ``SECOND_DERIVATIVES[name](residuals, **static)``, the residuals those
of the rule's forward (``rule.fwd(z, **static)[1]``) and ``static`` its settings; an array
shaped like z. Each docstring gives the formula; the piecewise-linear relu and leaky relu
have σ'' = 0 away from their kink (the Hessian there does not exist)."""

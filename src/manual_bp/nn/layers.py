"""The elementwise activation layers, softmax along an axis, and the dense layer.

Each activation is a parameter-free layer around one rule of :mod:`manual_bp.rules`;
:data:`ACTIVATIONS` names them for the models and the command line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._checks import require_positive_int
from ..rules import (
    Rule,
    dense,
    elu,
    gelu,
    leaky_relu,
    log_softmax,
    relu,
    sigmoid,
    silu,
    softmax,
    softplus,
    tanh,
)
from ..rules.linear import DenseResiduals
from .core import Layer, parameter_free

__all__ = [
    "ACTIVATIONS",
    "Dense",
    "Elu",
    "Gelu",
    "LeakyRelu",
    "LogSoftmax",
    "Relu",
    "Sigmoid",
    "Silu",
    "Softmax",
    "Softplus",
    "Tanh",
]


def _elementwise(kind: str, rule: Rule, name: str | None, **static: Any) -> Layer:
    """A shape-preserving parameter-free layer; its static settings are checked right away."""
    jax.eval_shape(lambda z: rule.fwd(z, **static), jax.ShapeDtypeStruct((1,), jnp.float32))
    return parameter_free(kind, rule, name, lambda shape: tuple(shape), **static)


def Sigmoid(*, name: str | None = None) -> Layer:
    """a = σ(z) = 1 / (1 + e^{−z})."""
    return _elementwise("sigmoid", sigmoid, name)


def Tanh(*, name: str | None = None) -> Layer:
    """a = tanh z."""
    return _elementwise("tanh", tanh, name)


def Relu(*, name: str | None = None) -> Layer:
    """a = max(z, 0), with relu'(0) = 0."""
    return _elementwise("relu", relu, name)


def LeakyRelu(negative_slope: float = 0.01, *, name: str | None = None) -> Layer:
    """a = z if z > 0 else s·z."""
    return _elementwise("leaky_relu", leaky_relu, name, negative_slope=negative_slope)


def Elu(alpha: float = 1.0, *, name: str | None = None) -> Layer:
    """a = z if z > 0 else α(e^z − 1)."""
    return _elementwise("elu", elu, name, alpha=alpha)


def Gelu(approximate: bool = False, *, name: str | None = None) -> Layer:
    """a = z Φ(z), or its tanh approximation."""
    return _elementwise("gelu", gelu, name, approximate=approximate)


def Softplus(*, name: str | None = None) -> Layer:
    """a = log(1 + e^z)."""
    return _elementwise("softplus", softplus, name)


def Silu(*, name: str | None = None) -> Layer:
    """a = z σ(z)."""
    return _elementwise("silu", silu, name)


def Softmax(axis: int = -1, *, name: str | None = None) -> Layer:
    """a = softmax(z) along ``axis``."""
    return _elementwise("softmax", softmax, name, axis=axis)


def LogSoftmax(axis: int = -1, *, name: str | None = None) -> Layer:
    """a = log softmax(z) along ``axis``."""
    return _elementwise("log_softmax", log_softmax, name, axis=axis)


def Dense(
    features: int,
    *,
    w_init: Callable[..., Any] | None = None,
    name: str | None = None,
) -> Layer:
    """z = a W + b over any leading batch dims: the lecture's weighted sum.

    ``params = {"w": (i, o), "b": (o,)}``; ``w`` starts from ``w_init(key, (i, o), dtype)``
    (default LeCun normal, variance 1/i), ``b`` at zero. The tape is the input activation
    ``a`` alone: ∂z/∂w = a, and W comes from the parameters in the backward pass.
    """
    features = require_positive_int("Dense", "features", features)
    w_init = w_init or jax.nn.initializers.lecun_normal()

    def init(key, input_shape, dtype=jnp.float32):
        if len(input_shape) < 1:
            raise ValueError(f"Dense: input_shape must have rank >= 1, got {tuple(input_shape)}")
        return {
            "w": w_init(key, (int(input_shape[-1]), features), dtype),
            "b": jnp.zeros((features,), dtype),
        }

    def forward(params, x, ctx=None):
        z, res = dense.fwd(x, params["w"], params["b"])
        return z, res.x

    def backward(params, tape, dz):
        da, dw, db = dense.bwd(DenseResiduals(tape, params["w"]), dz)
        return {"w": dw, "b": db}, {}, da

    def output_shape(input_shape):
        return (*tuple(input_shape)[:-1], features)

    return Layer(name, "dense", {"features": features}, init, forward, backward, output_shape)


ACTIVATIONS: dict[str, Callable[[], Layer]] = {
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "relu": Relu,
    "leaky_relu": LeakyRelu,
    "elu": Elu,
    "gelu": Gelu,
    "softplus": Softplus,
    "silu": Silu,
}
"""The activation layers by name: what :func:`~manual_bp.nn.mlp`, :func:`~manual_bp.nn.LeNet`
and ``manual-bp train --activation`` accept."""

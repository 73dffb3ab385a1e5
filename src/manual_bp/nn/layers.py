"""The elementwise activation layers, softmax along an axis, the dense layer, and layers made
from a rule of the user's own (:func:`from_rule`).

Each activation is a parameter-free layer around one rule of :mod:`manual_bp.rules`;
:data:`ACTIVATIONS` names them for the models and the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .._checks import prefix_errors, require_positive_int
from ..rules import (
    Rule,
    dense,
    elu,
    gelu,
    get_rule,
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
from .core import Layer, Shape, check_context, parameter_free

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
    "from_rule",
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

    def jvp(params, tape, dparams, dx):  # dz = dx W + a dW + db
        return dense.jvp(DenseResiduals(tape, params["w"]), dx, dparams["w"], dparams["b"])

    def output_shape(input_shape):
        return (*tuple(input_shape)[:-1], features)

    config = {"features": features}
    return Layer(name, "dense", config, init, forward, backward, output_shape, jvp=jvp)


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


def from_rule(
    rule: Rule | str,
    *,
    kind: str | None = None,
    name: str | None = None,
    params: Sequence[str] = (),
    init: Callable[..., Mapping[str, Any]] | None = None,
    output_shape: Callable[[Shape], Shape] | None = None,
    **static: Any,
) -> Layer:
    """A layer from a rule: y = rule(x, *parameters, **static).

    The rule's first primal is the layer's input x; its other primals are the layer's
    parameters, named by ``params`` in the rule's order and drawn by
    ``init(key, input_shape, dtype) -> {name: array}``. The forward pass keeps the rule's
    residuals on the tape; the backward pass returns the rule's cotangents: the parameters'
    as ``grads`` (by name) and x's as ``dx``. A parameter-free rule needs neither.
    Forward mode (``jvp``) is the rule's ``jvp``, with the parameters' tangents in their order;
    a rule without one gives a layer without forward mode.

    ``kind`` (default: the rule's name) and ``config`` (the ``static`` keywords) describe the
    layer: :func:`~manual_bp.verify.check_network` compares it with a reference forward
    registered for its kind (``reference.register(kind, fn)``), or else with ``jax.vjp`` of
    its own forward. ``output_shape`` defaults to the shape the rule's forward gives (from
    ``jax.eval_shape`` on a float32 input).
    """
    rule = prefix_errors("from_rule", lambda: get_rule(rule))
    op = f"from_rule({rule.name!r})"
    kind = rule.name if kind is None else kind
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{op}: kind must be a non-empty str, got {kind!r}")
    if isinstance(params, str) or not all(isinstance(p, str) and p for p in params):
        raise TypeError(f"{op}: params must be a tuple of parameter names, got {params!r}")
    names = tuple(params)
    if len(set(names)) != len(names):
        raise ValueError(f"{op}: parameter names must be unique, got {names}")
    if names and not callable(init):
        raise TypeError(
            f"{op}: a layer with parameters {names} needs init(key, input_shape, dtype) -> "
            f"dict, got {type(init).__name__}"
        )
    if not names and init is not None:
        raise ValueError(f"{op}: init was given but params is empty; name the parameters")
    if output_shape is not None and not callable(output_shape):
        raise TypeError(f"{op}: output_shape must be callable or None, got {output_shape!r}")

    def init_params(key, input_shape, dtype=jnp.float32):
        p = init(key, tuple(input_shape), dtype) if names else {}
        if not isinstance(p, Mapping) or set(p) != set(names):
            got = sorted(p) if isinstance(p, Mapping) else type(p).__name__
            raise ValueError(f"{op}: init must return a dict with keys {list(names)}, got {got}")
        return {n: p[n] for n in names}

    def inferred_shape(input_shape):
        x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
        p = jax.eval_shape(
            lambda k: init_params(k, input_shape), jax.ShapeDtypeStruct((2,), jnp.uint32)
        )
        out = jax.eval_shape(lambda x, p: rule.fwd(x, *(p[n] for n in names), **static)[0], x, p)
        return tuple(out.shape)

    shape_of = output_shape or inferred_shape
    if not names:
        return parameter_free(kind, rule, name, shape_of, **static)

    def forward(params, x, ctx=None):
        check_context(name or kind, ctx)
        return rule.fwd(x, *(params[n] for n in names), **static)

    def backward(params, tape, dy):
        del params
        cts = rule.bwd(tape, dy, **static)
        if not isinstance(cts, tuple | list) or len(cts) != 1 + len(names):
            raise TypeError(
                f"{op}: bwd must return {1 + len(names)} cotangents (x, {', '.join(names)}), "
                f"got {type(cts).__name__} of length {len(cts) if hasattr(cts, '__len__') else '?'}"
            )
        missing = [n for n, c in zip(names, cts[1:], strict=True) if c is None]
        if missing:
            raise TypeError(f"{op}: bwd returned None for the parameter(s) {missing}")
        return dict(zip(names, cts[1:], strict=True)), {}, cts[0]

    def jvp(params, tape, dparams, dx):
        del params
        return rule.jvp(tape, dx, *(dparams[n] for n in names), **static)

    has_jvp = rule.jvp is not None
    return Layer(
        name,
        kind,
        dict(static),
        init_params,
        forward,
        backward,
        shape_of,
        jvp=jvp if has_jvp else None,
    )

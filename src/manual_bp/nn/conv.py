"""Layers of the conv family (part of :mod:`manual_bp.nn`): ``Conv2D``, ``MaxPool2D``,
``AvgPool2D`` and ``Flatten``.

Images are NHWC (N, H, W, C); kernels are HWIO (kh, kw, C / groups, O).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._checks import require_positive_int
from ..rules import Rule
from ..rules import conv as _conv
from .core import Layer, Shape, parameter_free

__all__ = ["AvgPool2D", "Conv2D", "Flatten", "MaxPool2D"]


def _require_nhwc_shape(op: str, input_shape: Shape) -> Shape:
    input_shape = tuple(input_shape)
    if len(input_shape) != 4:
        raise ValueError(f"{op}: input_shape must be NHWC (rank 4), got {input_shape}")
    return input_shape


def _spatial_out(op: str, input_shape: Shape, geometry: Callable[[Shape], Any]) -> Shape:
    """(N, P, Q) of an NHWC input, from the rule's own padding arithmetic."""
    n = _require_nhwc_shape(op, input_shape)[0]
    return (n, *geometry(input_shape).out)


def _check_settings(op: str, rule: Rule, probe: Any, **static: Any) -> None:
    """Raise the rule's ValueError/TypeError for bad settings now, not at the first call."""
    try:
        jax.eval_shape(lambda *p: rule.fwd(*p, **static), *probe)
    except (ValueError, TypeError) as e:
        if type(e) not in (ValueError, TypeError):
            raise
        raise type(e)(f"{op}: {e}") from None


def Conv2D(
    features: int,
    kernel_size: int | tuple[int, int] = (3, 3),
    *,
    strides: int | tuple[int, int] = (1, 1),
    padding: str | tuple[tuple[int, int], tuple[int, int]] = "SAME",
    dilation: int | tuple[int, int] = (1, 1),
    groups: int = 1,
    use_bias: bool = True,
    w_init: Callable[..., Any] | None = None,
    name: str | None = None,
) -> Layer:
    """z[n,p,q,o] = Σ_{i,j,c} apad[n, p·s + i·d, q·s + j·d, c] w[i,j,c,o] + b[o].

    ``params = {"w": (kh, kw, C / groups, features), "b": (features,)}``; ``w`` starts from
    ``w_init(key, shape, dtype)`` (default LeCun normal, variance 1 / (kh·kw·C / groups)),
    ``b`` at zero. ``use_bias=False`` drops ``b`` (b = 0), as before a batch norm, which
    subtracts any per-channel constant again (so ∂C/∂b would be identically 0).
    As for :func:`~manual_bp.nn.Dense`, the tape is the input activation ``a`` alone (∂z/∂w is
    built from it) and ``w`` comes from the parameters in the backward pass.
    """
    features = require_positive_int("Conv2D", "features", features)
    groups = require_positive_int("Conv2D", "groups", groups)
    kernel_size = _conv.pair("Conv2D", "kernel_size", kernel_size)
    static = {
        "strides": _conv.pair("Conv2D", "strides", strides),
        "padding": _conv.padding_spec("Conv2D", padding),
        "dilation": _conv.pair("Conv2D", "dilation", dilation),
        "groups": groups,
    }
    if features % groups:
        raise ValueError(f"Conv2D: features ({features}) must be divisible by groups={groups}")
    if not isinstance(use_bias, bool):
        raise TypeError(f"Conv2D: use_bias must be a bool, got {use_bias!r}")
    w_init = w_init or jax.nn.initializers.lecun_normal()

    def w_shape(input_shape):
        c = _require_nhwc_shape("Conv2D", input_shape)[3]
        if c % groups:
            raise ValueError(
                f"Conv2D: input channels ({c}) must be divisible by groups={groups} "
                f"(input_shape {tuple(input_shape)})"
            )
        return (*kernel_size, c // groups, features)

    def init(key, input_shape, dtype=jnp.float32):
        shape = w_shape(input_shape)
        _check_settings(
            "Conv2D",
            _conv.conv2d,
            (
                jax.ShapeDtypeStruct(tuple(input_shape), dtype),
                jax.ShapeDtypeStruct(shape, dtype),
                jax.ShapeDtypeStruct((features,), dtype),
            ),
            **static,
        )
        w = w_init(key, shape, dtype)
        return {"w": w, "b": jnp.zeros((features,), dtype)} if use_bias else {"w": w}

    def forward(params, x, ctx=None):
        w = params["w"]
        b = params["b"] if use_bias else jnp.zeros((features,), w.dtype)
        z, res = _conv.conv2d.fwd(x, w, b, **static)
        return z, res.x

    def backward(params, tape, dz):
        da, dw, db = _conv.conv2d.bwd(_conv.Conv2DResiduals(tape, params["w"]), dz, **static)
        return ({"w": dw, "b": db} if use_bias else {"w": dw}), {}, da

    def jvp(params, tape, dparams, dx):  # dz = conv(dx, W) + conv(a, dW) + db
        dw = dparams["w"]
        db = dparams["b"] if use_bias else jnp.zeros((features,), dw.dtype)
        return _conv.conv2d.jvp(_conv.Conv2DResiduals(tape, params["w"]), dx, dw, db, **static)

    def output_shape(input_shape):
        geometry = lambda s: _conv.conv_geometry(  # noqa: E731
            s, w_shape(s), static["strides"], static["padding"], static["dilation"]
        )
        return (*_spatial_out("Conv2D", input_shape, geometry), features)

    config = {"features": features, "kernel_size": kernel_size, **static, "use_bias": use_bias}
    return Layer(name, "conv2d", config, init, forward, backward, output_shape, jvp=jvp)


def _Pool(
    op: str, kind: str, rule: Rule, window: Any, strides: Any, padding: Any, name: str | None
) -> Layer:
    window = _conv.pair(op, "window", window)
    static = {
        "window": window,
        "strides": window if strides is None else _conv.pair(op, "strides", strides),
        "padding": _conv.padding_spec(op, padding),
    }
    # padding vs window (explicit padding smaller than the window) needs no input shape
    _conv.pool_geometry(op, (1, *static["window"], 1), **static)

    def output_shape(input_shape):
        geometry = lambda s: _conv.pool_geometry(op, s, **static)  # noqa: E731
        return (*_spatial_out(op, input_shape, geometry), tuple(input_shape)[3])

    return parameter_free(kind, rule, name, output_shape, **static)


def MaxPool2D(
    window: int | tuple[int, int] = (2, 2),
    strides: int | tuple[int, int] | None = None,
    padding: str | tuple[tuple[int, int], tuple[int, int]] = "VALID",
    *,
    name: str | None = None,
) -> Layer:
    """a[n,p,q,c] = max_{i,j} zpad[n, p·s + i, q·s + j, c] (padding is −inf).

    ``strides`` defaults to ``window``. The backward sends each window's cotangent to the
    first maximum in row-major window order; overlapping windows add up.
    """
    return _Pool("MaxPool2D", "max_pool2d", _conv.max_pool2d, window, strides, padding, name)


def AvgPool2D(
    window: int | tuple[int, int] = (2, 2),
    strides: int | tuple[int, int] | None = None,
    padding: str | tuple[tuple[int, int], tuple[int, int]] = "VALID",
    *,
    name: str | None = None,
) -> Layer:
    """a[n,p,q,c] = mean of z over the entries of window (p, q) inside the image.

    ``strides`` defaults to ``window``. Padded positions are not counted in the divisor
    (count_include_pad=False).
    """
    return _Pool("AvgPool2D", "avg_pool2d", _conv.avg_pool2d, window, strides, padding, name)


def Flatten(*, name: str | None = None) -> Layer:
    """a[n, f] = z[n, ...] flattened row-major: (N, ...) -> (N, Π ...)."""

    def output_shape(input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) < 2:
            raise ValueError(
                f"Flatten: input_shape must be (N, ...) with rank >= 2, got {input_shape}"
            )
        return (input_shape[0], math.prod(input_shape[1:]))

    return parameter_free("flatten", _conv.flatten, name, output_shape)

"""Reference forwards of the conv family: ops by rule name, and layers by kind.

Written with ``lax.conv_general_dilated`` and ``lax.reduce_window``; their gradients come from
``jax.grad`` only. Images are NHWC, kernels HWIO; ``lax`` resolves "SAME"/"VALID" padding
itself. Average pooling divides by the number of window entries inside the image (padding is
not counted), which is itself a window sum over an image of ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jax import lax

_DIMS = ("NHWC", "HWIO", "NHWC")


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _spatial_padding(padding):
    if isinstance(padding, str):
        return padding
    return [tuple(p) for p in padding]


def _window_padding(padding):
    if isinstance(padding, str):
        return padding
    return [(0, 0), *(tuple(p) for p in padding), (0, 0)]


def conv2d(x, w, b, *, strides=(1, 1), padding="SAME", dilation=(1, 1), groups=1):
    y = lax.conv_general_dilated(
        x,
        w,
        window_strides=_pair(strides),
        padding=_spatial_padding(padding),
        rhs_dilation=_pair(dilation),
        dimension_numbers=_DIMS,
        feature_group_count=groups,
    )
    return y + jnp.reshape(b, (1, 1, 1, -1))


def _pool_dims(window, strides):
    window = _pair(window)
    strides = window if strides is None else _pair(strides)
    return (1, *window, 1), (1, *strides, 1)


def max_pool2d(x, *, window=(2, 2), strides=None, padding="VALID"):
    dims, steps = _pool_dims(window, strides)
    return lax.reduce_window(x, -jnp.inf, lax.max, dims, steps, _window_padding(padding))


def avg_pool2d(x, *, window=(2, 2), strides=None, padding="VALID"):
    dims, steps = _pool_dims(window, strides)
    pads = _window_padding(padding)
    total = lax.reduce_window(x, 0.0, lax.add, dims, steps, pads)
    count = lax.reduce_window(jnp.ones(x.shape, x.dtype), 0.0, lax.add, dims, steps, pads)
    return total / count


def flatten(x):
    return jnp.reshape(x, (x.shape[0], -1))


def _conv2d_layer(layer, params, x, run_child):
    del run_child
    cfg = layer.config
    bias = params["b"] if cfg.get("use_bias", True) else jnp.zeros(params["w"].shape[-1:], x.dtype)
    return conv2d(
        x,
        params["w"],
        bias,
        strides=cfg["strides"],
        padding=cfg["padding"],
        dilation=cfg["dilation"],
        groups=cfg["groups"],
    )


FORWARD: dict[str, Callable[..., Any]] = {
    "conv2d": conv2d,
    "max_pool2d": max_pool2d,
    "avg_pool2d": avg_pool2d,
    "flatten": flatten,
}
LAYERS: dict[str, Callable[..., Any]] = {"conv2d": _conv2d_layer}

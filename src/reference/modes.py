"""Reference forwards of the layers that differ between training and evaluation: batch norm and
dropout, written with jax.numpy and jax.random; their gradients come from ``jax.grad`` only.

Conventions shared with manual_bp (they are part of the layers' specification): batch norm
normalizes over every axis but the last; its running statistics move by
``(1 − momentum) · old + momentum · batch`` with the unbiased batch variance; dropout keeps an
entry where ``jax.random.bernoulli(key, 1 − rate, x.shape)`` is true.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def _feature(p, ndim):
    return jnp.reshape(p, (1,) * (ndim - 1) + p.shape)


def batch_norm(x, gamma, beta, *, eps=1e-5):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.var(x, axis=axes)
    return batch_norm_inference(x, mean, var, gamma, beta, eps=eps)


def batch_norm_inference(x, mean, var, gamma, beta, *, eps=1e-5):
    xhat = (x - _feature(mean, x.ndim)) / jnp.sqrt(_feature(var, x.ndim) + eps)
    return xhat * _feature(gamma, x.ndim) + _feature(beta, x.ndim)


def dropout(x, key, *, rate):
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


FORWARD: dict[str, Callable[..., Any]] = {
    "batch_norm": batch_norm,
    "batch_norm_inference": batch_norm_inference,
    "dropout": dropout,
}


def _batch_norm_layer(layer, params, x, run):
    """``(y, new_state)`` for a BatchNorm layer in the mode ``run.train``."""
    cfg = layer.config
    state = run.state
    if run.train:
        axes = tuple(range(x.ndim - 1))
        m = x.size // x.shape[-1]
        mean = jnp.mean(x, axis=axes)
        var = jnp.var(x, axis=axes)
        y = batch_norm(x, params["gamma"], params["beta"], eps=cfg["eps"])
        mom = cfg["momentum"]
        unbiased = jax.lax.stop_gradient(var) * (m / (m - 1))
        new = {
            "mean": (1 - mom) * state["mean"] + mom * jax.lax.stop_gradient(mean),
            "var": (1 - mom) * state["var"] + mom * unbiased,
        }
        return y, new
    y = batch_norm_inference(
        x, state["mean"], state["var"], params["gamma"], params["beta"], eps=cfg["eps"]
    )
    return y, state


def _dropout_layer(layer, params, x, run):
    del params
    rate = layer.config["rate"]
    if not run.train or rate == 0.0:
        return x, {}
    return dropout(x, run.key, rate=rate), {}


MODE_LAYERS: dict[str, Callable[..., Any]] = {
    "batch_norm": _batch_norm_layer,
    "dropout": _dropout_layer,
}
"""``fn(layer, params, x, run) -> (y, new_state)``; ``run`` has ``train``, ``key``, ``state``."""

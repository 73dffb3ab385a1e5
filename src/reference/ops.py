"""The same forward functions as manual_bp's rules, written independently with jax.numpy,
jax.nn, lax and optax. Gradients of these come only from ``jax.grad`` / ``jax.vjp``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _bias(b, ndim):
    return jnp.reshape(b, (1,) * (ndim - 1) + b.shape)


def dense(x, w, b):
    return jnp.tensordot(x, w, axes=1) + _bias(b, x.ndim)


def matmul(a, b):
    if b.ndim == 2:
        return jnp.tensordot(a, b, axes=1)
    return jnp.matmul(a, b)


def leaky_relu(z, *, negative_slope=0.01):
    return jax.nn.leaky_relu(z, negative_slope)


def elu(z, *, alpha=1.0):
    return jax.nn.elu(z, alpha)


def gelu(z, *, approximate=False):
    return jax.nn.gelu(z, approximate=approximate)


def softmax(z, *, axis=-1):
    return jax.nn.softmax(z, axis=axis)


def log_softmax(z, *, axis=-1):
    return jax.nn.log_softmax(z, axis=axis)


def logsumexp(z, *, axis=-1):
    return jax.nn.logsumexp(z, axis=axis)


def mse(pred, target):
    return jnp.mean(optax.squared_error(pred, target))


def softmax_cross_entropy(logits, labels):
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    return jnp.mean(optax.softmax_cross_entropy(logits, labels))


def sigmoid_binary_cross_entropy(logits, labels):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))


FORWARD = {
    "dense": dense,
    "matmul": matmul,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": leaky_relu,
    "elu": elu,
    "gelu": gelu,
    "softplus": jax.nn.softplus,
    "silu": jax.nn.silu,
    "softmax": softmax,
    "log_softmax": log_softmax,
    "logsumexp": logsumexp,
    "mse": mse,
    "softmax_cross_entropy": softmax_cross_entropy,
    "sigmoid_binary_cross_entropy": sigmoid_binary_cross_entropy,
}
"""Reference forward of every op, by the name manual_bp registers its rule under."""


# ---- families -------------------------------------------------------------------------------
from . import conv, modes, recurrent, transformer  # noqa: E402

for _family in (conv, modes, recurrent, transformer):
    FORWARD.update(_family.FORWARD)

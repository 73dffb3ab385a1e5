"""Losses: the output layer's dC/dz comes straight from here (the lecture's last case).

Each returns a scalar. ``mse`` and ``sigmoid_binary_cross_entropy`` average over every
element; ``softmax_cross_entropy`` sums over the class axis (the last) and averages over the
remaining batch axes. Index letters: ``n`` examples (all leading axes), ``c`` classes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .._checks import (
    require_array,
    require_float,
    require_ndim,
    require_same_dtype,
    require_shape,
)
from .contract import register
from .probabilities import log_softmax_fwd

__all__ = ["mse", "sigmoid_binary_cross_entropy", "softmax_cross_entropy"]


def _same_float_pair(op, a_name, a, b_name, b):
    require_float(op, a_name, a)
    require_float(op, b_name, b)
    require_same_dtype(op, **{a_name: a, b_name: b})
    require_shape(op, b_name, b, tuple(a.shape))
    if a.size == 0:
        raise ValueError(f"{op}: {a_name} is empty (shape {tuple(a.shape)})")


def _mse_fwd(pred, target):
    """C = mean((pred − target)²) over every element; the residual is the difference."""
    _same_float_pair("mse", "pred", pred, "target", target)
    diff = pred - target
    return jnp.mean(diff * diff), (diff,)


def _mse_bwd(res, g):
    """dpred = 2 g (pred − target) / M = −dtarget, M the number of elements."""
    (diff,) = res
    dpred = (2 * g / diff.size) * diff
    return dpred, -dpred


def _mse_jvp(res, dpred, dtarget):
    """(dpred, dtarget) ↦ dC = (2/M) Σ (pred − target)(dpred − dtarget)."""
    (diff,) = res
    d = dpred if dtarget is None else dpred - dtarget
    return (2 / diff.size) * jnp.sum(diff * d)


mse = register("mse", _mse_fwd, _mse_bwd, _mse_jvp)


def _softmax_cross_entropy_fwd(logits, labels):
    """C = −(1/N) Σ_n Σ_c t_nc log softmax(z_n)_c.

    ``labels`` are integer class ids of shape ``logits.shape[:-1]`` (t is their one-hot), or
    probability targets of the logits' shape and dtype. An out-of-range id gives a NaN loss.
    The residuals are log p and the labels.
    """
    op = "softmax_cross_entropy"
    require_float(op, "logits", logits)
    require_ndim(op, "logits", logits, at_least=1)
    if logits.size == 0:
        raise ValueError(f"{op}: logits are empty (shape {tuple(logits.shape)})")
    require_array(op, "labels", labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        require_shape(op, "integer labels", labels, tuple(logits.shape[:-1]))
        logp, _ = log_softmax_fwd(logits, axis=-1)
        picked = jnp.take_along_axis(logp, labels[..., None], axis=-1, mode="fill")
        return -jnp.mean(picked), (logp, labels)
    require_float(op, "labels (integer ids or probability targets)", labels)
    require_same_dtype(op, logits=logits, labels=labels)
    require_shape(op, "probability targets", labels, tuple(logits.shape))
    logp, _ = log_softmax_fwd(logits, axis=-1)
    return -jnp.sum(labels * logp) / (logp.size // logp.shape[-1]), (logp, labels)


def _softmax_cross_entropy_bwd(res, g):
    """dz = g (softmax(z) Σ_c t − t) / N (= g (p − onehot)/N for ids);  dt = −g log p / N."""
    logp, labels = res
    n = logp.size // logp.shape[-1]
    p = jnp.exp(logp)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        onehot = jax.nn.one_hot(labels, logp.shape[-1], dtype=logp.dtype)
        return (g / n) * (p - onehot), None
    total = jnp.sum(labels, axis=-1, keepdims=True)
    return (g / n) * (p * total - labels), (-g / n) * logp


def _softmax_cross_entropy_jvp(res, dlogits, dlabels):
    """(dz, dt) ↦ dC = (1/N) Σ (p Σ_c t − t)·dz − (1/N) Σ log p·dt  (ids: (1/N) Σ (p − onehot)·dz).

    Integer labels take no tangent (``dlabels`` is ``None``).
    """
    logp, labels = res
    n = logp.size // logp.shape[-1]
    p = jnp.exp(logp)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        onehot = jax.nn.one_hot(labels, logp.shape[-1], dtype=logp.dtype)
        return jnp.sum((p - onehot) * dlogits) / n
    total = jnp.sum(labels, axis=-1, keepdims=True)
    dc = jnp.sum((p * total - labels) * dlogits)
    if dlabels is not None:
        dc = dc - jnp.sum(logp * dlabels)
    return dc / n


softmax_cross_entropy = register(
    "softmax_cross_entropy",
    _softmax_cross_entropy_fwd,
    _softmax_cross_entropy_bwd,
    _softmax_cross_entropy_jvp,
)


def _sigmoid_bce_fwd(logits, labels):
    """C = mean(log(1 + e^z) − t z) over every element, from logits z (never log∘sigmoid)."""
    _same_float_pair("sigmoid_binary_cross_entropy", "logits", logits, "labels", labels)
    return jnp.mean(jnp.logaddexp(logits, 0) - labels * logits), (logits, labels)


def _sigmoid_bce_bwd(res, g):
    """dz = g (σ(z) − t) / M;  dt = −g z / M, M the number of elements."""
    logits, labels = res
    scale = g / logits.size
    return scale * (lax.logistic(logits) - labels), -scale * logits


def _sigmoid_bce_jvp(res, dlogits, dlabels):
    """(dz, dt) ↦ dC = (1/M) Σ [(σ(z) − t) dz − z dt]."""
    logits, labels = res
    dc = jnp.sum((lax.logistic(logits) - labels) * dlogits)
    if dlabels is not None:
        dc = dc - jnp.sum(logits * dlabels)
    return dc / logits.size


sigmoid_binary_cross_entropy = register(
    "sigmoid_binary_cross_entropy", _sigmoid_bce_fwd, _sigmoid_bce_bwd, _sigmoid_bce_jvp
)

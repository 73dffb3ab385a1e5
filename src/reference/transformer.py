"""Reference forwards of the transformer family: ops by rule name, and layers by kind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def _feature_row(p, ndim):
    return jnp.reshape(p, (1,) * (ndim - 1) + p.shape)


def layer_norm(x, gamma, beta, *, eps=1e-5):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True)
    xhat = (x - mean) / jnp.sqrt(var + eps)
    return xhat * _feature_row(gamma, x.ndim) + _feature_row(beta, x.ndim)


def rms_norm(x, gamma, *, eps=1e-6):
    ms = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return x / jnp.sqrt(ms + eps) * _feature_row(gamma, x.ndim)


def embedding(ids, table):
    # out-of-range ids (negative ones included) read past the end: NaN rows, no gradient
    ids = jnp.where(ids < 0, table.shape[0], ids)
    return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan)


def add_positions(x, table):
    t = x.shape[-2]
    pos = jax.lax.slice_in_dim(table, 0, t, axis=0)
    return x + jnp.broadcast_to(pos, x.shape)


def multi_head_attention(x, wq, wk, wv, wo, bq, bk, bv, bo, mask, *, num_heads, causal=False):
    n, t, d = x.shape
    e = d // num_heads

    def heads(w, b):  # (n, t, d) -> (n, h, t, e)
        y = x @ w + jnp.broadcast_to(b, (n, t, d))
        return jnp.transpose(jnp.reshape(y, (n, t, num_heads, e)), (0, 2, 1, 3))

    q, k, v = heads(wq, bq), heads(wk, bk), heads(wv, bv)
    scores = jnp.matmul(q, jnp.swapaxes(k, -1, -2)) / jnp.sqrt(jnp.asarray(e, x.dtype))
    allowed = jnp.ones((n, num_heads, t, t), bool)
    if mask is not None:
        allowed = allowed & jnp.broadcast_to(mask[:, None, None, :], allowed.shape)
    if causal:
        allowed = allowed & jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), allowed.shape)
    any_allowed = jnp.any(allowed, axis=-1, keepdims=True)
    logits = jnp.where(allowed, scores, -jnp.inf)
    logits = jnp.where(jnp.broadcast_to(any_allowed, logits.shape), logits, 0.0)
    probs = jax.nn.softmax(logits, axis=-1) * allowed.astype(x.dtype)
    ctx = jnp.matmul(probs, v)  # (n, h, t, e)
    ctx = jnp.reshape(jnp.transpose(ctx, (0, 2, 1, 3)), (n, t, d))
    return ctx @ wo + jnp.broadcast_to(bo, (n, t, d))


def flash_attention(
    x, wq, wk, wv, wo, bq, bk, bv, bo, mask, *, num_heads, causal=False, block_size=64
):
    """The blockwise rule computes plain attention: ``block_size`` changes only how."""
    del block_size
    args = (x, wq, wk, wv, wo, bq, bk, bv, bo, mask)
    return multi_head_attention(*args, num_heads=num_heads, causal=causal)


FORWARD: dict[str, Callable[..., Any]] = {
    "layer_norm": layer_norm,
    "rms_norm": rms_norm,
    "embedding": embedding,
    "add_positions": add_positions,
    "multi_head_attention": multi_head_attention,
    "flash_attention": flash_attention,
}


def _layer_norm(layer, params, x, run_child):
    del run_child
    return layer_norm(x, params["gamma"], params["beta"], **dict(layer.config))


def _rms_norm(layer, params, x, run_child):
    del run_child
    return rms_norm(x, params["gamma"], **dict(layer.config))


def _embedding(layer, params, x, run_child):
    del layer, run_child
    return embedding(x, params["table"])


def _positional_embedding(layer, params, x, run_child):
    del layer, run_child
    return add_positions(x, params["table"])


def _attention(layer, params, x, run_child):
    del run_child
    p = params  # the layer has no key bias
    return multi_head_attention(
        x, p["wq"], p["wk"], p["wv"], p["wo"], p["bq"], jnp.zeros_like(p["bq"]), p["bv"], p["bo"],
        None, num_heads=layer.config["num_heads"], causal=layer.config["causal"],
    )  # fmt: skip


LAYERS: dict[str, Callable[..., Any]] = {
    "layer_norm": _layer_norm,
    "rms_norm": _rms_norm,
    "embedding": _embedding,
    "positional_embedding": _positional_embedding,
    "multi_head_attention": _attention,
    "residual": lambda layer, params, x, run_child: x + run_child(layer.children[0], x),
}

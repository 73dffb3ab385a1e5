"""Reference forwards of the recurrent family: ops by rule name, and layers by kind.

Each cell is written out step by step over a time-major ``lax.scan``; gradients come from
``jax.grad`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def _scan_batch_major(step, init, x):
    """Run ``step(carry, x_t) -> (carry, h_t)`` over t for x (N, T, I); return (N, T, H)."""
    _, hs = lax.scan(step, init, jnp.transpose(x, (1, 0, 2)))
    return jnp.transpose(hs, (1, 0, 2))


def rnn(x, h0, w_x, w_h, b):
    def step(h, x_t):
        h = jnp.tanh(jnp.dot(x_t, w_x) + jnp.dot(h, w_h) + b[None, :])
        return h, h

    return _scan_batch_major(step, h0, x)


def lstm(x, h0, c0, w_x, w_h, b):
    def step(carry, x_t):
        h, c = carry
        i, f, g, o = jnp.split(jnp.dot(x_t, w_x) + jnp.dot(h, w_h) + b[None, :], 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    return _scan_batch_major(step, (h0, c0), x)


def gru(x, h0, w_x, w_h, b_x, b_h):
    wx_r, wx_z, wx_n = jnp.split(w_x, 3, axis=-1)
    wh_r, wh_z, wh_n = jnp.split(w_h, 3, axis=-1)
    bx_r, bx_z, bx_n = (v[None, :] for v in jnp.split(b_x, 3))
    bh_r, bh_z, bh_n = (v[None, :] for v in jnp.split(b_h, 3))

    def step(h, x_t):
        r = jax.nn.sigmoid(jnp.dot(x_t, wx_r) + bx_r + jnp.dot(h, wh_r) + bh_r)
        z = jax.nn.sigmoid(jnp.dot(x_t, wx_z) + bx_z + jnp.dot(h, wh_z) + bh_z)
        n = jnp.tanh(jnp.dot(x_t, wx_n) + bx_n + r * (jnp.dot(h, wh_n) + bh_n))
        h = (1 - z) * n + z * h
        return h, h

    return _scan_batch_major(step, h0, x)


def last_step(x):
    return lax.index_in_dim(x, x.shape[-2] - 1, axis=x.ndim - 2, keepdims=False)


def _batch_state(state, x):
    """A learned (H,) initial state repeated over the batch of x (N, T, I)."""
    return jnp.tile(state[None, :], (x.shape[0], 1))


def _rnn_layer(layer, params, x, run_child):
    del layer, run_child
    return rnn(x, _batch_state(params["h0"], x), params["w_x"], params["w_h"], params["b"])


def _lstm_layer(layer, params, x, run_child):
    del layer, run_child
    h0, c0 = _batch_state(params["h0"], x), _batch_state(params["c0"], x)
    return lstm(x, h0, c0, params["w_x"], params["w_h"], params["b"])


def _gru_layer(layer, params, x, run_child):
    del layer, run_child
    h0 = _batch_state(params["h0"], x)
    return gru(x, h0, params["w_x"], params["w_h"], params["b_x"], params["b_h"])


FORWARD: dict[str, Callable[..., Any]] = {
    "rnn": rnn,
    "lstm": lstm,
    "gru": gru,
    "last_step": last_step,
}
LAYERS: dict[str, Callable[..., Any]] = {
    "rnn": _rnn_layer,
    "lstm": _lstm_layer,
    "gru": _gru_layer,
}

"""Layers of the recurrent family (part of :mod:`manual_bp.nn`).

``RNN``, ``LSTM`` and ``GRU`` map a batch-major sequence x (N, T, I) to the full hidden
sequence hs (N, T, H). Each learns its initial state h0 (and c0) of shape (H,), starting at
zero: the forward pass repeats it over the batch, so the backward pass sums the rule's
∂C/∂h0 (N, H) over the batch. ``LastStep`` picks hs[:, −1, :] for a classifier head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._checks import require_ndim, require_positive_int
from ..rules import recurrent as _rec
from .core import Layer, parameter_free

__all__ = ["GRU", "LSTM", "RNN", "LastStep"]

_STATES = {"rnn": ("h0",), "lstm": ("h0", "c0"), "gru": ("h0",)}
_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
_BIASES = {"rnn": ("b",), "lstm": ("b",), "gru": ("b_x", "b_h")}


def _recurrent(kind: str, hidden: int, name: str | None, w_init: Callable[..., Any] | None):
    """A layer running rule ``kind`` with params w_x, w_h, biases and learned initial states."""
    hidden = require_positive_int(kind.upper(), "hidden", hidden)
    rule = getattr(_rec, kind)
    w_init = w_init or jax.nn.initializers.lecun_normal()
    states, biases, width = _STATES[kind], _BIASES[kind], _GATES[kind] * hidden

    def init(key, input_shape, dtype=jnp.float32):
        if len(input_shape) != 3:
            raise ValueError(
                f"{kind.upper()}: input_shape must be (N, T, I), got {tuple(input_shape)}"
            )
        k_x, k_h = jax.random.split(key)
        params = {
            "w_x": w_init(k_x, (int(input_shape[-1]), width), dtype),
            "w_h": w_init(k_h, (hidden, width), dtype),
        }
        params.update({b: jnp.zeros((width,), dtype) for b in biases})
        params.update({s: jnp.zeros((hidden,), dtype) for s in states})
        return params

    def forward(params, x, ctx=None):
        require_ndim(kind, "x", x, exactly=3)
        batch = (x.shape[0], hidden)
        initial = [jnp.broadcast_to(jnp.reshape(params[s], (1, hidden)), batch) for s in states]
        return rule.fwd(x, *initial, params["w_x"], params["w_h"], *(params[b] for b in biases))

    def backward(params, tape, dhs):
        del params
        dx, *d_states_and_weights = rule.bwd(tape, dhs)
        d_states = d_states_and_weights[: len(states)]
        d_w_x, d_w_h, *d_biases = d_states_and_weights[len(states) :]
        grads = {"w_x": d_w_x, "w_h": d_w_h}
        grads.update(zip(biases, d_biases, strict=True))
        grads.update({s: jnp.sum(d, axis=0) for s, d in zip(states, d_states, strict=True)})
        return grads, {}, dx

    def jvp(params, tape, dparams, dx):  # the initial states' tangents repeated over the batch
        del params
        batch = (dx.shape[0], hidden)
        d_initial = [jnp.broadcast_to(jnp.reshape(dparams[s], (1, hidden)), batch) for s in states]
        d_weights = (dparams["w_x"], dparams["w_h"], *(dparams[b] for b in biases))
        return rule.jvp(tape, dx, *d_initial, *d_weights)

    def output_shape(input_shape):
        return (*tuple(input_shape)[:-1], hidden)

    config = {"hidden": hidden}
    return Layer(name, kind, config, init, forward, backward, output_shape, jvp=jvp)


def RNN(hidden: int, *, w_init: Callable[..., Any] | None = None, name: str | None = None) -> Layer:
    """h_t = tanh(x_t W_x + h_{t−1} W_h + b) over x (N, T, I); output hs (N, T, H).

    ``params = {"w_x": (I, H), "w_h": (H, H), "b": (H,), "h0": (H,)}``; the weights start
    from ``w_init(key, shape, dtype)`` (default LeCun normal), b and h0 at zero.
    """
    return _recurrent("rnn", hidden, name, w_init)


def LSTM(
    hidden: int, *, w_init: Callable[..., Any] | None = None, name: str | None = None
) -> Layer:
    """LSTM with gates in the order i, f, g, o (see ``manual_bp.rules.recurrent.lstm``).

    ``params = {"w_x": (I, 4H), "w_h": (H, 4H), "b": (4H,), "h0": (H,), "c0": (H,)}``;
    output hs (N, T, H); the final cell state is internal.
    """
    return _recurrent("lstm", hidden, name, w_init)


def GRU(hidden: int, *, w_init: Callable[..., Any] | None = None, name: str | None = None) -> Layer:
    """GRU in the PyTorch / cuDNN form, gates r, z, n (see ``manual_bp.rules.recurrent.gru``).

    ``params = {"w_x": (I, 3H), "w_h": (H, 3H), "b_x": (3H,), "b_h": (3H,), "h0": (H,)}``;
    output hs (N, T, H).
    """
    return _recurrent("gru", hidden, name, w_init)


def LastStep(*, name: str | None = None) -> Layer:
    """y = x[..., T−1, :], the last step of a sequence; its delta is zero at every other step."""

    def output_shape(input_shape):
        shape = tuple(input_shape)
        if len(shape) < 2:
            raise ValueError(f"LastStep: input_shape must have rank >= 2, got {shape}")
        return (*shape[:-2], shape[-1])

    return parameter_free("last_step", _rec.last_step, name, output_shape)

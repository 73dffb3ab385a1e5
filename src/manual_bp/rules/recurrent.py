"""Recurrent cells run over a whole sequence — ``rnn``, ``lstm``, ``gru`` — and ``last_step``.

Index letters: ``n`` batch, ``t`` time, ``i`` input features, ``h`` and ``k`` hidden units,
``g`` the stacked gate pre-activations (4H for the LSTM, 3H for the GRU). Sequences are
batch-major: x is (N, T, I) and the output hs is (N, T, H), hs[:, t] = h_t.

The forward pass is a ``lax.scan`` over t that keeps h_t (and the gate activations) for every
step. The backward pass is backpropagation through time: a reverse ``lax.scan`` that carries
∂C/∂h_{t−1} (and ∂C/∂c_{t−1}) from step t to step t − 1 and emits the delta δ_t of the step's
pre-activation. Weights are shared over time, so their gradients sum over every step —
∂C/∂W = Σ_t a_tᵀ δ_t — and are taken after the scan as one contraction over (n, t) instead of
T small products inside it. The initial states h0 (c0) are inputs and get their own gradient:
the carry left over when the reverse scan reaches t = 0. Forward mode (the jvps) is a forward
``lax.scan`` of the tangent recurrence from ḣ_0 (and ċ_0), the step's input and shared-weight
terms computed for all steps at once before it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import lax

from .._checks import require_float, require_ndim, require_same_dtype, require_shape
from .contract import register

__all__ = [
    "GRUResiduals",
    "LSTMResiduals",
    "RNNResiduals",
    "RecurrentDeltas",
    "gru",
    "gru_projection_deltas",
    "last_step",
    "lstm",
    "lstm_projection_deltas",
    "rnn",
    "rnn_projection_deltas",
]


def _check_cell(op: str, gates: int, x: Any, states: dict[str, Any], **params: Any) -> int:
    """Check x (N, T, I), each state (N, H), w_x (I, gates·H), w_h (H, gates·H), biases; H."""
    arrays = {"x": x, **states, **params}
    for arg, a in arrays.items():
        require_float(op, arg, a)
    require_same_dtype(op, **arrays)
    require_ndim(op, "x", x, exactly=3)
    n, t, i = x.shape
    if t < 1:
        raise ValueError(f"{op}: x must have at least one time step, got shape {tuple(x.shape)}")
    first = next(iter(states))
    require_ndim(op, first, states[first], exactly=2)
    h = states[first].shape[1]
    for arg, s in states.items():
        require_shape(op, arg, s, (n, h))
    require_shape(op, "w_x", params["w_x"], (i, gates * h))
    require_shape(op, "w_h", params["w_h"], (h, gates * h))
    for arg, b in params.items():
        if arg.startswith("b"):
            require_shape(op, arg, b, (gates * h,))
    return h


def _time_major(a: Any) -> Any:
    """(N, T, ...) -> (T, N, ...), the layout lax.scan walks over."""
    return jnp.swapaxes(a, 0, 1)


def _rows(a: Any) -> Any:
    """(T, N, F) -> (T·N, F): every step's rows stacked, for one matrix product."""
    return jnp.reshape(a, (-1, a.shape[-1]))


def _previous(h0: Any, hs: Any) -> Any:
    """h_{t−1} for every t: (h0, h_1, ..., h_{T−1}) as (N, T, H)."""
    return jnp.concatenate([jnp.expand_dims(h0, 1), hs[:, :-1]], axis=1)


def _input_projection(x: Any, w_x: Any, b: Any) -> Any:
    """u[t, n, g] = Σ_i x[n, t, i] w_x[i, g] + b[g] for all steps at once, time-major."""
    return jnp.einsum("nti,ig->tng", x, w_x) + jnp.reshape(b, (1, 1, b.shape[0]))


class RecurrentDeltas(NamedTuple):
    """The per-step deltas of a cell's two weight-shared projections and the inputs they
    multiply, batch-major: ``x`` (N, T, I) and ``delta_x`` (N, T, G), the delta of the input
    projection x_t w_x + b (G gate pre-activations); ``h_prev`` (N, T, H), h_{t−1} (h0 at
    t = 1), and ``delta_h`` (N, T, G), the delta of the recurrent projection h_{t−1} w_h
    (+ b_h) — the same array as ``delta_x`` for the RNN and the LSTM, where both projections
    enter one sum; ``d_states``: ∂C/∂h0 (and ∂C/∂c0 for the LSTM), each (N, H). So
    ∂C/∂w_x = Σ_{n,t} x_t δ_x,tᵀ and ∂C/∂w_h = Σ_{n,t} h_{t−1} δ_h,tᵀ."""

    x: Any
    delta_x: Any
    h_prev: Any
    delta_h: Any
    d_states: tuple[Any, ...]


def _shared_weight_grads(d: RecurrentDeltas, w_x: Any):
    """dx = δ_x w_xᵀ;  dw_x = Σ_{n,t} x ⊗ δ_x;  dw_h = Σ_{n,t} h_{t−1} ⊗ δ_h."""
    dx = jnp.einsum("ntg,ig->nti", d.delta_x, w_x)
    dw_x = jnp.einsum("nti,ntg->ig", d.x, d.delta_x)
    dw_h = jnp.einsum("ntk,ntg->kg", d.h_prev, d.delta_h)
    return dx, dw_x, dw_h


# ---- Elman RNN -------------------------------------------------------------------------------


class RNNResiduals(NamedTuple):
    """What the backward of :func:`rnn` reads: x (N, T, I), h0 (N, H), the weights w_x (I, H)
    and w_h (H, H), and hs (N, T, H)."""

    x: Any
    h0: Any
    w_x: Any
    w_h: Any
    hs: Any


def _rnn_fwd(x, h0, w_x, w_h, b):
    """h_t = tanh(x_t w_x + h_{t−1} w_h + b), t = 1..T, from h0; out hs[n, t, h] = h_t.

    Shapes: x (N, T, I), h0 (N, H), w_x (I, H), w_h (H, H), b (H,). Residuals
    (:class:`RNNResiduals`): x, h0, the weights and hs (tanh' comes from h_t itself).
    """
    _check_cell("rnn", 1, x, {"h0": h0}, w_x=w_x, w_h=w_h, b=b)
    u = _input_projection(x, w_x, b)

    def step(h, u_t):
        h = jnp.tanh(u_t + h @ w_h)
        return h, h

    _, hs = lax.scan(step, h0, u)
    hs = _time_major(hs)
    return hs, RNNResiduals(x, h0, w_x, w_h, hs)


def rnn_projection_deltas(res: RNNResiduals, g: Any) -> RecurrentDeltas:
    """Backpropagation through time of :func:`rnn` for the cotangent g (N, T, H) of hs:
    δ_t = (g_t + δ_{t+1} w_hᵀ) ⊙ (1 − h_t²) (the delta of both projections), dh0 = δ_1 w_hᵀ."""
    w_h = res.w_h

    def step(dh, inputs):
        g_t, h_t = inputs
        delta = (g_t + dh) * (1 - h_t * h_t)
        return delta @ w_h.T, delta

    dh0, deltas = lax.scan(
        step, jnp.zeros_like(res.h0), (_time_major(g), _time_major(res.hs)), reverse=True
    )
    deltas = _time_major(deltas)
    return RecurrentDeltas(res.x, deltas, _previous(res.h0, res.hs), deltas, (dh0,))


def _rnn_bwd(res, g):
    """δ_t = (g_t + δ_{t+1} w_hᵀ) ⊙ (1 − h_t²);  dh0 = δ_1 w_hᵀ;  dW = Σ_t a_tᵀ δ_t."""
    d = rnn_projection_deltas(res, g)
    dx, dw_x, dw_h = _shared_weight_grads(d, res.w_x)
    return dx, *d.d_states, dw_x, dw_h, jnp.sum(d.delta_x, axis=(0, 1))


def _rnn_jvp(res, dx, dh0, dw_x, dw_h, db):
    """ḣ_t = (1 − h_t²) ⊙ (ẋ_t w_x + x_t ẇ_x + ḃ + h_{t−1} ẇ_h + ḣ_{t−1} w_h), from ḣ_0 = dh0."""
    h_prev = _previous(res.h0, res.hs)
    du = _input_projection(dx, res.w_x, db) + _time_major(
        jnp.einsum("nti,ig->ntg", res.x, dw_x) + jnp.einsum("ntk,kg->ntg", h_prev, dw_h)
    )

    def step(dh, inputs):
        du_t, h_t = inputs
        dh = (1 - h_t * h_t) * (du_t + dh @ res.w_h)
        return dh, dh

    _, dhs = lax.scan(step, dh0, (du, _time_major(res.hs)))
    return _time_major(dhs)


rnn = register("rnn", _rnn_fwd, _rnn_bwd, _rnn_jvp)


# ---- LSTM ------------------------------------------------------------------------------------


class LSTMResiduals(NamedTuple):
    """What the backward of :func:`lstm` reads: x (N, T, I), h0 and c0 (N, H), the weights
    w_x (I, 4H) and w_h (H, 4H), and, time-major, cs (T, N, H) and the gate activations
    acts = [i, f, g, o] (T, N, 4H)."""

    x: Any
    h0: Any
    c0: Any
    w_x: Any
    w_h: Any
    cs: Any
    acts: Any


def _lstm_fwd(x, h0, c0, w_x, w_h, b):
    """Gates in the order i, f, g, o along the last axis of a_t = x_t w_x + h_{t−1} w_h + b:

    i = σ(a_i), f = σ(a_f), g = tanh(a_g), o = σ(a_o);  c_t = f ⊙ c_{t−1} + i ⊙ g;
    h_t = o ⊙ tanh(c_t). Shapes: x (N, T, I), h0 and c0 (N, H), w_x (I, 4H), w_h (H, 4H),
    b (4H,). The output is hs (N, T, H) alone; the final cell state c_T is not an output (its
    cotangent is zero). Residuals (:class:`LSTMResiduals`): x, h0, c0, the weights, and,
    time-major as the scan writes them, cs (T, N, H) and the four gate activations
    (T, N, 4H); the backward recomputes tanh(c_t) and h_t = o ⊙ tanh(c_t) from them. The input
    projection x w_x + b runs for all steps as one (T·N, I) × (I, 4H) product before the scan.
    """
    hidden = _check_cell("lstm", 4, x, {"h0": h0, "c0": c0}, w_x=w_x, w_h=w_h, b=b)
    xt = _time_major(x)
    u = jnp.reshape(_rows(xt) @ w_x + jnp.reshape(b, (1, -1)), (*xt.shape[:2], w_x.shape[1]))

    def step(carry, u_t):
        h, c = carry
        a = u_t + h @ w_h
        i, f, o = (lax.logistic(a[:, k * hidden : (k + 1) * hidden]) for k in (0, 1, 3))
        gg = jnp.tanh(a[:, 2 * hidden : 3 * hidden])
        c = f * c + i * gg
        h = o * jnp.tanh(c)
        return (h, c), (h, c, jnp.concatenate([i, f, gg, o], axis=1))

    _, (hs, cs, acts) = lax.scan(step, (h0, c0), u)
    return _time_major(hs), LSTMResiduals(x, h0, c0, w_x, w_h, cs, acts)


def lstm_projection_deltas(res: LSTMResiduals, g: Any) -> RecurrentDeltas:
    """Backpropagation through time of :func:`lstm` for the cotangent g (N, T, H) of hs. With
    dh = g_t + ∂C/∂h_t from t+1 and dc = ∂C/∂c_t from t+1: dc ← dc + dh ⊙ o ⊙ (1 − tanh²c_t);
    δ = [dc⊙g, dc⊙c_{t−1}, dc⊙i, dh⊙tanh c_t] ⊙ [i(1−i), f(1−f), 1−g², o(1−o)] (the delta of
    both projections); ∂C/∂h_{t−1} = δ w_hᵀ;  ∂C/∂c_{t−1} = dc ⊙ f."""
    h0, c0, w_h, cs, acts = res.h0, res.c0, res.w_h, res.cs, res.acts
    hidden = h0.shape[1]
    tcs = jnp.tanh(cs)
    column = lax.broadcasted_iota(jnp.int32, (1, 4 * hidden), 1)
    is_g = (column >= 2 * hidden) & (column < 3 * hidden)

    def step(carry, inputs):
        dh_next, dc_next = carry
        g_t, c_prev, tc, act = inputs
        i, f, gg, o = (act[:, k * hidden : (k + 1) * hidden] for k in range(4))
        dh = g_t + dh_next
        dc = dc_next + dh * o * (1 - tc * tc)
        slope = jnp.where(is_g, 1 - act * act, act * (1 - act))  # σ' or tanh' per gate
        delta = jnp.concatenate([dc * gg, dc * c_prev, dc * i, dh * tc], axis=1) * slope
        return (delta @ w_h.T, dc * f), delta

    c_prev = jnp.concatenate([jnp.expand_dims(c0, 0), cs[:-1]], axis=0)
    zeros = (jnp.zeros_like(h0), jnp.zeros_like(c0))
    (dh0, dc0), deltas = lax.scan(step, zeros, (_time_major(g), c_prev, tcs, acts), reverse=True)
    hs = acts[..., 3 * hidden :] * tcs  # h_t = o ⊙ tanh(c_t), as in the forward
    deltas = _time_major(deltas)
    return RecurrentDeltas(res.x, deltas, _previous(h0, _time_major(hs)), deltas, (dh0, dc0))


def _lstm_bwd(res, g):
    """The deltas δ_t of :func:`lstm_projection_deltas`, then, over all steps at once:
    ∂C/∂x = δ w_xᵀ, ∂C/∂w_x = Σ x_tᵀ δ_t, ∂C/∂w_h = Σ h_{t−1}ᵀ δ_t, ∂C/∂b = Σ δ_t.
    """
    d = lstm_projection_deltas(res, g)
    dx, dw_x, dw_h = _shared_weight_grads(d, res.w_x)
    return dx, *d.d_states, dw_x, dw_h, jnp.sum(d.delta_x, axis=(0, 1))


def _lstm_jvp(res, dx, dh0, dc0, dw_x, dw_h, db):
    """ȧ = ẋ w_x + x ẇ_x + ḃ + h_{t−1} ẇ_h + ḣ_{t−1} w_h;  [i̇, ḟ, ġ, ȯ] = slope ⊙ ȧ;
    ċ_t = ḟ c_{t−1} + f ċ_{t−1} + i̇ g + i ġ;  ḣ_t = ȯ tanh c_t + o (1 − tanh²c_t) ċ_t.
    """
    h0, c0, w_h, cs, acts = res.h0, res.c0, res.w_h, res.cs, res.acts
    hidden = h0.shape[1]
    tcs = jnp.tanh(cs)
    column = lax.broadcasted_iota(jnp.int32, (1, 4 * hidden), 1)
    is_g = (column >= 2 * hidden) & (column < 3 * hidden)
    hs = acts[..., 3 * hidden :] * tcs
    h_prev = jnp.concatenate([jnp.expand_dims(h0, 0), hs[:-1]], axis=0)
    c_prev = jnp.concatenate([jnp.expand_dims(c0, 0), cs[:-1]], axis=0)
    xt, dxt = _time_major(res.x), _time_major(dx)
    da = jnp.reshape(
        _rows(dxt) @ res.w_x + _rows(xt) @ dw_x + _rows(h_prev) @ dw_h + jnp.reshape(db, (1, -1)),
        acts.shape,
    )

    def step(carry, inputs):
        dh, dc = carry
        da_t, c_p, tc, act = inputs
        slope = jnp.where(is_g, 1 - act * act, act * (1 - act))
        d = (da_t + dh @ w_h) * slope
        di, df, dg, do = (d[:, k * hidden : (k + 1) * hidden] for k in range(4))
        i, f, gg, o = (act[:, k * hidden : (k + 1) * hidden] for k in range(4))
        dc = df * c_p + f * dc + di * gg + i * dg
        dh = do * tc + o * (1 - tc * tc) * dc
        return (dh, dc), dh

    _, dhs = lax.scan(step, (dh0, dc0), (da, c_prev, tcs, acts))
    return _time_major(dhs)


lstm = register("lstm", _lstm_fwd, _lstm_bwd, _lstm_jvp)


# ---- GRU -------------------------------------------------------------------------------------


class GRUResiduals(NamedTuple):
    """What the backward of :func:`gru` reads: x (N, T, I), h0 (N, H), the weights w_x (I, 3H)
    and w_h (H, 3H), hs (N, T, H), the gate activations acts = [r, z, n] (N, T, 3H) and
    v_ns (N, T, H), the reset gate's recurrent term v_n = (h_{t−1} w_h + b_h)_n."""

    x: Any
    h0: Any
    w_x: Any
    w_h: Any
    hs: Any
    acts: Any
    v_ns: Any


def _gru_fwd(x, h0, w_x, w_h, b_x, b_h):
    """The PyTorch / cuDNN GRU, gates in the order r, z, n along the last axis:

    with u = x_t w_x + b_x and v = h_{t−1} w_h + b_h (each split into r, z, n thirds),
    r = σ(u_r + v_r), z = σ(u_z + v_z), n = tanh(u_n + r ⊙ v_n) — the reset gate multiplies
    v_n *after* the recurrent product and its bias —, h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}.
    Shapes: x (N, T, I), h0 (N, H), w_x (I, 3H), w_h (H, 3H), b_x and b_h (3H,).
    Residuals (:class:`GRUResiduals`): x, h0, the weights, hs, the gate activations r, z, n
    (N, T, 3H) and v_n (N, T, H), the one pre-activation piece the backward needs
    (∂n/∂r = (1 − n²) ⊙ v_n).
    """
    hidden = _check_cell("gru", 3, x, {"h0": h0}, w_x=w_x, w_h=w_h, b_x=b_x, b_h=b_h)
    u = _input_projection(x, w_x, b_x)
    b_h_row = jnp.reshape(b_h, (1, 3 * hidden))

    def step(h, u_t):
        v = h @ w_h + b_h_row
        rz = lax.logistic(u_t[:, : 2 * hidden] + v[:, : 2 * hidden])
        r, z = rz[:, :hidden], rz[:, hidden:]
        v_n = v[:, 2 * hidden :]
        n = jnp.tanh(u_t[:, 2 * hidden :] + r * v_n)
        h = (1 - z) * n + z * h
        return h, (h, jnp.concatenate([rz, n], axis=1), v_n)

    _, (hs, acts, v_ns) = lax.scan(step, h0, u)
    hs, acts, v_ns = (_time_major(a) for a in (hs, acts, v_ns))
    return hs, GRUResiduals(x, h0, w_x, w_h, hs, acts, v_ns)


def gru_projection_deltas(res: GRUResiduals, g: Any) -> RecurrentDeltas:
    """Backpropagation through time of :func:`gru` for the cotangent g (N, T, H) of hs. With
    dh = g_t + ∂C/∂h_t from t+1: δ_n = dh(1−z)(1−n²), δ_z = dh(h_{t−1}−n)z(1−z),
    δ_r = δ_n v_n r(1−r); the input projection u = x_t w_x + b_x gets δ_u = [δ_r, δ_z, δ_n],
    the recurrent one v = h_{t−1} w_h + b_h gets δ_v = [δ_r, δ_z, δ_n ⊙ r] (the reset gate
    multiplies v_n); ∂C/∂h_{t−1} = dh ⊙ z + δ_v w_hᵀ."""
    h0, w_h = res.h0, res.w_h
    hidden = h0.shape[1]

    def step(dh_next, inputs):
        g_t, h_prev, act, v_n = inputs
        r, z, n = (act[:, k * hidden : (k + 1) * hidden] for k in range(3))
        dh = g_t + dh_next
        d_n = dh * (1 - z) * (1 - n * n)
        d_z = dh * (h_prev - n) * z * (1 - z)
        d_r = d_n * v_n * r * (1 - r)
        d_u = jnp.concatenate([d_r, d_z, d_n], axis=1)
        d_v = jnp.concatenate([d_r, d_z, d_n * r], axis=1)
        return dh * z + d_v @ w_h.T, (d_u, d_v)

    h_prev = _previous(h0, res.hs)
    inputs = tuple(_time_major(a) for a in (g, h_prev, res.acts, res.v_ns))
    dh0, (d_u, d_v) = lax.scan(step, jnp.zeros_like(h0), inputs, reverse=True)
    return RecurrentDeltas(res.x, _time_major(d_u), h_prev, _time_major(d_v), (dh0,))


def _gru_bwd(res, g):
    """The deltas δ_u, δ_v of :func:`gru_projection_deltas`, then dx = δ_u w_xᵀ,
    dw_x = Σ xᵀδ_u, dw_h = Σ h_{t−1}ᵀδ_v, db_x = Σ δ_u, db_h = Σ δ_v.
    """
    d = gru_projection_deltas(res, g)
    dx, dw_x, dw_h = _shared_weight_grads(d, res.w_x)
    sums = (jnp.sum(a, axis=(0, 1)) for a in (d.delta_x, d.delta_h))
    return dx, *d.d_states, dw_x, dw_h, *sums


def _gru_jvp(res, dx, dh0, dw_x, dw_h, db_x, db_h):
    """u̇ = ẋ w_x + x ẇ_x + ḃ_x, v̇ = h_{t−1} ẇ_h + ḃ_h + ḣ_{t−1} w_h;  ṙ, ż = σ' (u̇ + v̇);
    ṅ = (1 − n²)(u̇_n + ṙ v_n + r v̇_n);  ḣ_t = (1 − z) ṅ + ż (h_{t−1} − n) + z ḣ_{t−1}.
    """
    h0, w_h = res.h0, res.w_h
    hidden = h0.shape[1]
    h_prev = _previous(h0, res.hs)
    du = _input_projection(dx, res.w_x, db_x) + _time_major(jnp.einsum("nti,ig->ntg", res.x, dw_x))
    dv = _input_projection(h_prev, dw_h, db_h)

    def step(dh, inputs):
        du_t, dv_t, h_p, act, v_n = inputs
        r, z, n = (act[:, k * hidden : (k + 1) * hidden] for k in range(3))
        dv_t = dv_t + dh @ w_h
        drz = act[:, : 2 * hidden] * (1 - act[:, : 2 * hidden]) * (du_t + dv_t)[:, : 2 * hidden]
        dr, dz = drz[:, :hidden], drz[:, hidden:]
        dn = (1 - n * n) * (du_t[:, 2 * hidden :] + dr * v_n + r * dv_t[:, 2 * hidden :])
        dh = (1 - z) * dn + dz * (h_p - n) + z * dh
        return dh, dh

    inputs = (du, dv, *(_time_major(a) for a in (h_prev, res.acts, res.v_ns)))
    _, dhs = lax.scan(step, dh0, inputs)
    return _time_major(dhs)


gru = register("gru", _gru_fwd, _gru_bwd, _gru_jvp)


# ---- selecting the last step -----------------------------------------------------------------


def _last_step_fwd(x):
    """y[..., f] = x[..., T−1, f]: the last time step of a (..., T, F) sequence.

    The residual is x's shape alone.
    """
    require_float("last_step", "x", x)
    require_ndim("last_step", "x", x, at_least=2)
    if x.shape[-2] < 1:
        raise ValueError(f"last_step: x must have at least one time step, got {tuple(x.shape)}")
    return x[..., -1, :], (tuple(x.shape),)


def _last_step_bwd(res, g):
    """dx[..., t, f] = g[..., f] if t = T−1 else 0 (g scattered into zeros)."""
    (shape,) = res
    return (jnp.zeros(shape, g.dtype).at[..., -1, :].set(g),)


def _last_step_jvp(res, dx):
    """dy[..., f] = dx[..., T−1, f]: selecting a step is linear."""
    return dx[..., -1, :]


last_step = register("last_step", _last_step_fwd, _last_step_bwd, _last_step_jvp)

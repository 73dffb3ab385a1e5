"""Recurrent networks: whole classifiers against the reference, the learned initial states'
gradients, and the gate conventions of the LSTM (i, f, g, o) and the GRU (PyTorch / cuDNN).

The rules themselves (``rnn``, ``lstm``, ``gru``, ``last_step``) are checked row by row in
``test_rules.py`` from the audit table.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from _compare import assert_close, assert_matches_reference, random_cotangent, rng_for
from manual_bp import RULES, check_network, nn, value_grad_and_deltas

N, T, I, H, CLASSES = 3, 5, 4, 6, 3
LOSS = "softmax_cross_entropy"

CLASSIFIERS = {
    "lstm": lambda: nn.LSTMClassifier(H, CLASSES),
    "gru": lambda: nn.GRUClassifier(H, CLASSES),
}


@functools.cache
def _fns(name):
    """The network and its jitted manual and reference (C, grads, deltas), shared by tests."""
    net = CLASSIFIERS[name]()
    manual = jax.jit(value_grad_and_deltas(net, LOSS))
    ref = jax.jit(reference.value_grad_and_deltas(net, LOSS))
    return net, manual, ref


def _perturbed(params, rng, dtype, scale=0.1):
    """Move every parameter (zero biases and initial states included) off its initial value."""
    return jax.tree.map(
        lambda p: p + jnp.asarray(scale * rng.standard_normal(p.shape), dtype), params
    )


def _data(name, dtype):
    net = CLASSIFIERS[name]()
    rng = rng_for("recurrent", name, np.dtype(dtype).name)
    x = jnp.asarray(rng.standard_normal((N, T, I)), dtype)
    params = _perturbed(net.init(jax.random.key(7), x.shape, dtype), rng, dtype)
    y = jnp.asarray(rng.integers(0, CLASSES, size=(N,)), jnp.int32)
    return params, x, y


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_classifier_grads_and_deltas_match_reference(name, dtype):
    _, manual, ref = _fns(name)
    params, x, y = _data(name, dtype)
    got = manual(params, x, y)
    assert_matches_reference(name, got, ref(params, x, y), dtype)
    deltas = got[2]
    rnn_layer = f"{name}_0"
    assert set(deltas) == {rnn_layer, "last_step_1", "dense_2"}
    # only the last step reaches the head: the recurrent layer's delta is zero before it
    assert not np.any(np.asarray(deltas[rnn_layer][:, :-1]))
    chex.assert_shape(deltas[rnn_layer], (N, T, H))


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_check_network_passes(name):
    net, _, _ = _fns(name)
    params, x, y = _data(name, jnp.float64)
    report = check_network(net, LOSS, params, x, y)
    assert report.ok, str(report)
    assert report.first_divergent is None


# ---- the learned initial states -----------------------------------------------------------

LAYERS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
STATES = {"rnn": ("h0",), "lstm": ("h0", "c0"), "gru": ("h0",)}


@functools.cache
def _layer_fns(kind):
    """Jitted ⟨dy, forward⟩, and the layer's handwritten gradients next to the rule's own
    per-example cotangents of the (N, H) initial states, for a random dy."""
    layer, rule = LAYERS[kind](H), RULES[kind]
    biases = ("b_x", "b_h") if kind == "gru" else ("b",)

    def objective(params, x, dy):
        return jnp.vdot(dy, layer.forward(params, x)[0])

    def manual(params, x, dy):
        _, tape = layer.forward(params, x)
        grads, deltas, dx = layer.backward(params, tape, dy)
        initial = [jnp.broadcast_to(params[s][None, :], (N, H)) for s in STATES[kind]]
        primals = (x, *initial, params["w_x"], params["w_h"], *(params[b] for b in biases))
        _, res = rule.fwd(*primals)
        per_example = rule.bwd(res, dy)[1 : 1 + len(initial)]
        return grads, deltas, dx, per_example

    return layer, jax.jit(objective), jax.jit(manual)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_initial_state_gradient_is_summed_over_the_batch(kind):
    """∂C/∂h0 (and ∂C/∂c0) of the (H,) learned state: the layer's value against float64
    central differences along random directions, and against the batch sum of the rule's
    per-example (N, H) cotangent."""
    layer, objective, manual = _layer_fns(kind)
    rng = rng_for("initial-state", kind)
    x = jnp.asarray(rng.standard_normal((N, T, I)))
    params = _perturbed(layer.init(jax.random.key(3), x.shape, jnp.float64), rng, jnp.float64)
    dy = random_cotangent(rng, jax.ShapeDtypeStruct((N, T, H), jnp.float64))
    grads, deltas, dx, per_example = manual(params, x, dy)
    assert deltas == {}
    chex.assert_equal_shape((dx, x))
    eps = 1e-6
    for state in STATES[kind]:
        g = grads[state]
        chex.assert_shape(g, (H,))
        chex.assert_type(g, jnp.float64)
        assert np.all(np.asarray(g) != 0), f"{kind}: ∂C/∂{state} has zeros"
        for _ in range(3):
            v = jnp.asarray(rng.standard_normal(H))
            plus = {**params, state: params[state] + eps * v}
            minus = {**params, state: params[state] - eps * v}
            fd = (objective(plus, x, dy) - objective(minus, x, dy)) / (2 * eps)
            assert float(jnp.vdot(g, v)) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)

    # the rule's own per-example cotangent, summed over the batch, is the layer's gradient
    for state, ct in zip(STATES[kind], per_example, strict=True):
        chex.assert_shape(ct, (N, H))
        assert_close(grads[state], jnp.sum(ct, axis=0), jnp.float64, f"{kind} {state}")


def test_rnn_h0_gradient_one_step_by_hand():
    """T = 1: h_1 = tanh(x w_x + h0 w_h + b), so ∂C/∂h0 = (g ⊙ (1 − h_1²)) w_hᵀ."""
    rng = rng_for("rnn-one-step")
    x, h0 = rng.standard_normal((N, 1, I)), rng.standard_normal((N, H))
    w_x, w_h, b = rng.standard_normal((I, H)), rng.standard_normal((H, H)), rng.standard_normal(H)
    g = rng.standard_normal((N, 1, H))
    h1 = np.tanh(x[:, 0] @ w_x + h0 @ w_h + b)
    expected_dh0 = (g[:, 0] * (1 - h1**2)) @ w_h.T
    primals = tuple(jnp.asarray(a) for a in (x, h0, w_x, w_h, b))
    hs, res = RULES["rnn"].fwd(*primals)
    _, dh0, _, dw_h, _ = RULES["rnn"].bwd(res, jnp.asarray(g))
    assert_close(hs[:, 0], h1, jnp.float64, "h_1")
    assert_close(dh0, expected_dh0, jnp.float64, "∂C/∂h0")
    assert_close(dw_h, h0.T @ (g[:, 0] * (1 - h1**2)), jnp.float64, "∂C/∂w_h = h0ᵀ δ")


# ---- gate conventions, written out in numpy -----------------------------------------------


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def test_lstm_gate_order_is_i_f_g_o():
    """Columns [0:H] are the input gate, [H:2H] forget, [2H:3H] the candidate g, [3H:4H] the
    output gate; the output is hs alone."""
    rng = rng_for("lstm-gates")
    n, t, i, h = 2, 3, 3, 2
    x, h0, c0 = rng.standard_normal((n, t, i)), rng.standard_normal((n, h)), rng.normal(size=(n, h))
    w_x, w_h = 0.5 * rng.standard_normal((i, 4 * h)), 0.5 * rng.standard_normal((h, 4 * h))
    b = rng.standard_normal(4 * h)
    hh, cc, expected = h0, c0, []
    for s in range(t):
        a = x[:, s] @ w_x + hh @ w_h + b
        gate_i, gate_f = _sigmoid(a[:, :h]), _sigmoid(a[:, h : 2 * h])
        gate_g, gate_o = np.tanh(a[:, 2 * h : 3 * h]), _sigmoid(a[:, 3 * h :])
        cc = gate_f * cc + gate_i * gate_g
        hh = gate_o * np.tanh(cc)
        expected.append(hh)
    hs = RULES["lstm"](*(jnp.asarray(a) for a in (x, h0, c0, w_x, w_h, b)))
    chex.assert_shape(hs, (n, t, h))
    assert_close(hs, np.stack(expected, axis=1), jnp.float64, "lstm i, f, g, o")


def test_gru_follows_the_pytorch_convention():
    """n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h' = (1 − z) n + z h, with torch's weight
    layout (weight_ih stacked r, z, n, as rows: w_x = weight_ihᵀ) — not r applied to h
    before the product."""
    rng = rng_for("gru-gates")
    n, t, i, h = 2, 3, 3, 2
    x, h0 = rng.standard_normal((n, t, i)), rng.standard_normal((n, h))
    weight_ih, weight_hh = rng.standard_normal((3 * h, i)), rng.standard_normal((3 * h, h))
    bias_ih, bias_hh = rng.standard_normal(3 * h), rng.standard_normal(3 * h)
    w_ir, w_iz, w_in = np.split(weight_ih, 3)
    w_hr, w_hz, w_hn = np.split(weight_hh, 3)
    b_ir, b_iz, b_in = np.split(bias_ih, 3)
    b_hr, b_hz, b_hn = np.split(bias_hh, 3)
    hh, expected = h0, []
    for s in range(t):
        xt = x[:, s]
        r = _sigmoid(xt @ w_ir.T + b_ir + hh @ w_hr.T + b_hr)
        z = _sigmoid(xt @ w_iz.T + b_iz + hh @ w_hz.T + b_hz)
        cand = np.tanh(xt @ w_in.T + b_in + r * (hh @ w_hn.T + b_hn))
        hh = (1 - z) * cand + z * hh
        expected.append(hh)
    primals = (x, h0, weight_ih.T, weight_hh.T, bias_ih, bias_hh)
    hs = RULES["gru"](*(jnp.asarray(a) for a in primals))
    assert_close(hs, np.stack(expected, axis=1), jnp.float64, "gru (PyTorch convention)")


def test_last_step_scatters_the_cotangent_into_zeros():
    x = jnp.asarray(np.arange(2 * 4 * 3, dtype=np.float64).reshape(2, 4, 3))
    y, res = RULES["last_step"].fwd(x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x)[:, -1])
    g = jnp.asarray(rng_for("last-step").standard_normal((2, 3)))
    (dx,) = RULES["last_step"].bwd(res, g)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(dx[:, -1]), np.asarray(g))
    assert not np.any(np.asarray(dx[:, :-1]))


def test_long_sequence_stays_finite_and_gradients_vanish_with_small_weights():
    """With ‖w_h‖ small, ∂C/∂h0 shrinks geometrically in T; everything stays finite."""
    rng = rng_for("vanishing")
    t = 40
    x = jnp.asarray(rng.standard_normal((2, t, 3)))
    h0 = jnp.asarray(rng.standard_normal((2, 4)))
    w_x, b = jnp.asarray(rng.standard_normal((3, 4))), jnp.zeros((4,), jnp.float64)
    w_h = jnp.asarray(0.1 * rng.standard_normal((4, 4)))
    g = jnp.zeros((2, t, 4), jnp.float64).at[:, -1].set(1.0)
    _, res = RULES["rnn"].fwd(x, h0, w_x, w_h, b)
    _, dh0, _, _, _ = RULES["rnn"].bwd(res, g)
    assert bool(jnp.all(jnp.isfinite(dh0)))
    assert float(jnp.max(jnp.abs(dh0))) < 1e-20


# ---- descriptions and errors --------------------------------------------------------------


def test_layer_descriptions():
    net = nn.GRUClassifier(5, 2)
    assert [c.kind for c in net.children] == ["gru", "last_step", "dense"]
    assert net.children[0].config == {"hidden": 5}
    params = jax.eval_shape(lambda k: net.init(k, (3, 4, 2)), jax.random.key(0))
    assert {k: v.shape for k, v in params["gru_0"].items()} == {
        "w_x": (2, 15),
        "w_h": (5, 15),
        "b_x": (15,),
        "b_h": (15,),
        "h0": (5,),
    }
    assert net.output_shape((3, 4, 2)) == (3, 2)
    lstm = nn.LSTM(4, w_init=lambda key, shape, dtype: jnp.ones(shape, dtype))
    params = lstm.init(jax.random.key(0), (1, 2, 3))
    assert set(params) == {"w_x", "w_h", "b", "h0", "c0"}
    for k in ("b", "h0", "c0"):
        assert not np.any(np.asarray(params[k])), f"{k} must start at zero"
    assert lstm.output_shape((1, 2, 3)) == (1, 2, 4)


def test_bad_inputs_name_the_op_and_shapes():
    z = functools.partial(jnp.zeros, dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"rnn: w_h must have shape \(4, 4\), got \(3, 4\)"):
        RULES["rnn"](z((2, 3, 5)), z((2, 4)), z((5, 4)), z((3, 4)), z((4,)))
    with pytest.raises(ValueError, match=r"lstm: c0 must have shape \(2, 4\), got \(3, 4\)"):
        RULES["lstm"](z((2, 3, 5)), z((2, 4)), z((3, 4)), z((5, 16)), z((4, 16)), z((16,)))
    with pytest.raises(ValueError, match=r"gru: w_x must have shape \(5, 12\), got \(5, 4\)"):
        RULES["gru"](z((2, 3, 5)), z((2, 4)), z((5, 4)), z((4, 12)), z((12,)), z((12,)))
    with pytest.raises(ValueError, match=r"rnn: x must have rank 3, got rank 2"):
        RULES["rnn"](z((3, 5)), z((2, 4)), z((5, 4)), z((4, 4)), z((4,)))
    with pytest.raises(TypeError, match=r"gru: all inputs must share one dtype"):
        RULES["gru"](
            z((2, 3, 5)), z((2, 4)), z((5, 12)), z((4, 12)), z((12,)), jnp.zeros(12, jnp.float64)
        )
    with pytest.raises(ValueError, match=r"last_step: x must have rank >= 2"):
        RULES["last_step"](z((3,)))
    with pytest.raises(ValueError, match=r"GRU: hidden must be a positive int"):
        nn.GRU(0)

"""Credit assignment: feedback alignment, sign symmetry, Kolen–Pollack and direct feedback
alignment on every weighted layer kind, the exact "backprop" variant, and alignment angles.

The substitution of B for W is checked without trusting it: with B = W (a copy) every
variant must reproduce backprop bit for bit, and with a random B the error sent to the
input must change while, for dense and conv layers, the weight gradient (aᵀδ) does not.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import manual_bp
from _compare import random_cotangent, rng_for
from manual_bp import nn
from manual_bp.credit import TRANSPORT, alignment, as_backprop, direct_feedback, feedback
from manual_bp.data import load_digits
from manual_bp.train import fit

F64 = jnp.float64

LAYERS = {
    "dense": (lambda: nn.Dense(4), (5, 3)),
    "conv2d": (lambda: nn.Conv2D(3, (3, 3)), (2, 5, 5, 2)),
    "rnn": (lambda: nn.RNN(4), (2, 3, 3)),
    "lstm": (lambda: nn.LSTM(4), (2, 3, 3)),
    "gru": (lambda: nn.GRU(4), (2, 3, 3)),
    "multi_head_attention": (lambda: nn.MultiHeadAttention(2, causal=True), (2, 3, 4)),
}


def test_every_transport_kind_is_covered():
    assert set(LAYERS) == set(TRANSPORT)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_transport_names_the_weights_where_the_layer_keeps_them(kind):
    """Each weight TRANSPORT names is a parameter of the layer or, for a layer whose backward
    reads it from the tape, a field of the residual NamedTuple its forward returns, holding an
    array of that parameter's shape."""
    make, shape = LAYERS[kind]
    layer, transport = make(), TRANSPORT[kind]
    params = jax.eval_shape(lambda k: layer.init(k, shape, F64), jax.random.key(0))
    _, tape = jax.eval_shape(layer.forward, params, jax.ShapeDtypeStruct(shape, F64))
    assert set(transport.weights) <= set(params), (kind, transport.weights, sorted(params))
    if transport.residuals is None:
        return
    assert type(tape) is transport.residuals, (kind, type(tape).__name__)
    assert set(transport.weights) <= set(tape._fields), (kind, transport.weights, tape._fields)
    for n in transport.weights:
        assert getattr(tape, n).shape == params[n].shape, (kind, n)


def _equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(la, lb, strict=True)
    )


@functools.cache
def _layer_run(kind):
    """One jitted function per kind: the plain layer's backward and every variant's, on the
    same forward input and the same random dy."""
    make, shape = LAYERS[kind]
    plain = make()
    variants = {v: feedback(make(), v) for v in ("backprop", "fa", "sign", "kp")}
    names = TRANSPORT[kind][0]

    def run(params, x, dy, b):
        """b: the feedback matrices to use for fa and kp, by weight name."""
        out = {}
        y, tape = plain.forward(params, x)
        out["plain"] = (y, plain.backward(params, tape, dy))
        for v, layer in variants.items():
            p = {**params, "feedback": b} if v == "kp" else params
            state = {"feedback": b} if v == "fa" else {}
            y, tape = layer.forward(p, x, nn.Context(train=True, state=state))
            out[v] = (y, layer.backward(p, tape, dy))
        out["sign_as_fa"] = None
        y, tape = variants["fa"].forward(
            params,
            x,
            nn.Context(train=True, state={"feedback": {n: jnp.sign(params[n]) for n in names}}),
        )
        out["sign_as_fa"] = (y, variants["fa"].backward(params, tape, dy))
        return out

    return plain, names, shape, jax.jit(run)


def _inputs(kind):
    plain, names, shape, _ = _layer_run(kind)
    rng = rng_for("credit", kind)
    x = jnp.asarray(rng.standard_normal(shape), F64)
    params = plain.init(jax.random.key(0), shape, F64)
    params = jax.tree.map(
        lambda p: p + jnp.asarray(0.1 * rng.standard_normal(p.shape), F64), params
    )
    y, _ = plain.forward(params, x)
    dy = random_cotangent(rng, y)
    random_b = {n: jnp.asarray(rng.standard_normal(params[n].shape), F64) for n in names}
    return params, x, dy, random_b


@pytest.mark.parametrize("kind", list(LAYERS))
def test_variants_equal_backprop_when_b_is_w_and_differ_otherwise(kind):
    _, names, _, run = _layer_run(kind)
    params, x, dy, random_b = _inputs(kind)
    same = run(params, x, dy, {n: params[n] for n in names})
    bp = same["plain"]
    for v in ("backprop", "fa", "kp"):  # B = W: exactly backprop
        y, (grads, deltas, dx) = same[v]
        assert _equal(y, bp[0]) and _equal(dx, bp[1][2]) and _equal(deltas, bp[1][1]), v
        core = {k: g for k, g in grads.items() if k != "feedback"}
        assert _equal(core, bp[1][0]), v
    kp_grads = same["kp"][1][0]
    assert _equal(kp_grads["feedback"], {n: kp_grads[n] for n in names})  # B learns W's update
    assert _equal(same["sign"][1], same["sign_as_fa"][1])  # sign symmetry is FA with sign(W)

    other = run(params, x, dy, random_b)
    for v in ("fa", "kp"):
        y, (grads, _, dx) = other[v]
        assert _equal(y, bp[0]), v  # the forward pass is untouched
        assert not np.allclose(dx, bp[1][2]), f"{kind} {v}: a random B must change dx"
        if kind in ("dense", "conv2d"):  # aᵀδ for the δ this layer received: unchanged
            assert _equal({k: grads[k] for k in ("w", "b")}, bp[1][0]), v
    assert not np.allclose(other["sign"][1][2], bp[1][2])


def test_direct_feedback_equals_backprop_when_b_is_the_transposed_output_weight():
    """One hidden layer: backprop sends e W₂ᵀ to the hidden layer, DFA sends e B; with
    B = W₂ᵀ the two are the same network."""
    rng = rng_for("dfa-exact")
    x = jnp.asarray(rng.standard_normal((6, 5)), F64)
    y = jnp.asarray(rng.integers(0, 3, 6), jnp.int32)
    net = direct_feedback(nn.Dense(4), nn.Tanh(), nn.Dense(3))
    params = net.init(jax.random.key(0), x.shape, F64)
    state = net.init_state(jax.random.key(0), x.shape, F64)
    assert set(state["_feedback"]) == {"dense_2"} and state["_feedback"]["dense_2"].shape == (3, 4)
    f = jax.jit(manual_bp.value_grad_and_deltas(net, "softmax_cross_entropy", has_state=True))
    bp = jax.jit(manual_bp.value_grad_and_deltas(nn.serial(nn.Dense(4), nn.Tanh(), nn.Dense(3)),
                                                 "softmax_cross_entropy"))  # fmt: skip
    exact = {**state, "_feedback": {"dense_2": params["dense_2"]["w"].T}}
    (c, _), grads, deltas = f(params, exact, x, y)
    c_bp, grads_bp, deltas_bp = bp(params, x, y)
    np.testing.assert_allclose(c, c_bp, rtol=1e-14)
    for a, b in zip(
        jax.tree.leaves((grads, deltas)), jax.tree.leaves((grads_bp, deltas_bp)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    (_, _), grads_dfa, _ = f(params, state, x, y)
    assert not np.allclose(grads_dfa["dense_0"]["w"], grads_bp["dense_0"]["w"])
    np.testing.assert_allclose(grads_dfa["dense_2"]["w"], grads_bp["dense_2"]["w"], rtol=1e-12)


def test_direct_feedback_reaches_conv_layers_and_alignment_is_zero_for_backprop():
    rng = rng_for("dfa-conv")
    x = jnp.asarray(rng.standard_normal((4, 6, 6, 1)), F64)
    y = jnp.asarray(rng.integers(0, 3, 4), jnp.int32)
    layers = (nn.Conv2D(2), nn.Relu(), nn.Conv2D(3), nn.Tanh(), nn.Flatten(), nn.Dense(3))
    net = direct_feedback(*layers)
    params = net.init(jax.random.key(0), x.shape, F64)
    state = net.init_state(jax.random.key(0), x.shape, F64)
    assert {k: v.shape for k, v in state["_feedback"].items()} == {
        "conv2d_2": (3, 6 * 6 * 2),
        "dense_5": (3, 6 * 6 * 3),
    }
    angles = jax.jit(alignment(net, "softmax_cross_entropy"))(params, state, x, y)
    assert float(angles["grads"]["dense_5"]) < 1e-5  # the output layer gets the true error
    assert 1.0 < float(angles["grads"]["conv2d_0"]) < 179.0
    bp = nn.serial(*layers)
    angles_bp = jax.jit(alignment(bp, "softmax_cross_entropy"))(
        params, {k: {} for k in params}, x, y
    )
    assert max(float(v) for v in jax.tree.leaves(angles_bp)) < 1e-5


@pytest.mark.parametrize("target", ["lstm", "multi_head_attention"])
def test_direct_feedback_reaches_recurrent_and_attention_layers(target):
    """e (N, C) projected to a sequence input (N, T, D) through B (C, T·D), under jit."""
    rng = rng_for("dfa-seq", target)
    x = jnp.asarray(rng.standard_normal((3, 4, 5)), F64)
    y = jnp.asarray(rng.integers(0, 2, 3), jnp.int32)
    middle = nn.LSTM(4) if target == "lstm" else nn.MultiHeadAttention(2)
    layers = (nn.Dense(4), middle, nn.LastStep(), nn.Dense(2))
    net = direct_feedback(*layers)
    params = net.init(jax.random.key(0), x.shape, F64)
    state = net.init_state(jax.random.key(0), x.shape, F64)
    assert {k: v.shape for k, v in state["_feedback"].items()} == {
        f"{target}_1": (2, 4 * 4),
        "dense_3": (2, 4),
    }
    f = jax.jit(manual_bp.value_grad_and_deltas(net, "softmax_cross_entropy", has_state=True))
    (_, _), grads, deltas = f(params, state, x, y)
    _, bp_grads, _ = manual_bp.value_grad_and_deltas(nn.serial(*layers), "softmax_cross_entropy")(
        params, x, y
    )
    np.testing.assert_allclose(grads["dense_3"]["w"], bp_grads["dense_3"]["w"], rtol=1e-12)
    e = np.asarray(deltas["dense_3"])  # the output error
    b = np.asarray(state["_feedback"][f"{target}_1"])
    np.testing.assert_allclose(deltas["dense_0"], np.reshape(e @ b, (3, 4, 4)), rtol=1e-12)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


def test_as_backprop_keeps_structure_and_restores_the_true_backward():
    rng = rng_for("twin")
    x = jnp.asarray(rng.standard_normal((6, 5)), F64)
    y = jnp.asarray(rng.integers(0, 3, 6), jnp.int32)
    net = nn.serial(
        feedback(nn.Dense(4), "fa"),
        nn.Tanh(),
        nn.residual(nn.serial(feedback(nn.Dense(4), "kp"), nn.Tanh())),
        feedback(nn.Dense(3), "sign"),
    )
    plain = nn.serial(
        nn.Dense(4), nn.Tanh(), nn.residual(nn.serial(nn.Dense(4), nn.Tanh())), nn.Dense(3)
    )
    params = net.init(jax.random.key(0), x.shape, F64)
    state = net.init_state(jax.random.key(0), x.shape, F64)
    twin = as_backprop(net)
    loss = "softmax_cross_entropy"
    (_, _), g_twin, d_twin = manual_bp.value_grad_and_deltas(twin, loss, has_state=True)(
        params, state, x, y
    )
    plain_params = jax.tree.map(lambda a: a, params)
    del plain_params["residual_2"]["serial_0"]["dense_0"]["feedback"]
    _, g_plain, d_plain = manual_bp.value_grad_and_deltas(plain, loss)(plain_params, x, y)
    assert _equal(d_twin, d_plain)
    kp = g_twin["residual_2"]["serial_0"]["dense_0"].pop("feedback")
    assert _equal(kp, {"w": g_plain["residual_2"]["serial_0"]["dense_0"]["w"]})
    assert _equal(g_twin, g_plain)


def test_kolen_pollack_feedback_converges_to_the_weights_with_weight_decay():
    """B gets W's gradient, so under adamw both receive the same Adam step and B − W only
    shrinks by the decoupled decay: ‖B − W‖ = (1 − ηλ)^k ‖B₀ − W₀‖ after k steps."""
    rng = rng_for("kp")
    x = jnp.asarray(rng.standard_normal((16, 5)), F64)
    y = jnp.asarray(rng.integers(0, 3, 16), jnp.int32)
    net = nn.serial(feedback(nn.Dense(6), "kp"), nn.Tanh(), feedback(nn.Dense(3), "kp"))
    params = net.init(jax.random.key(0), x.shape, F64)
    f = manual_bp.value_and_grad(net, "softmax_cross_entropy")
    opt = optax.adamw(1e-2, weight_decay=0.5)

    def step(carry, _):
        p, s = carry
        _, g = f(p, x, y)
        with jax.numpy_dtype_promotion("standard"):
            u, s = opt.update(g, s, p)
            p = optax.apply_updates(p, u)
        return (p, s), None

    (final, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), length=20))(params)
    for layer in ("dense_0", "dense_2"):
        gap0 = np.linalg.norm(params[layer]["w"] - params[layer]["feedback"]["w"])
        gap = np.linalg.norm(final[layer]["w"] - final[layer]["feedback"]["w"])
        np.testing.assert_allclose(gap, (1 - 1e-2 * 0.5) ** 20 * gap0, rtol=1e-6)
        assert not np.allclose(final[layer]["w"], params[layer]["w"])


def test_feedback_alignment_learns_digits_and_its_updates_align():
    data = load_digits(seed=0)
    net = nn.serial(feedback(nn.Dense(64), "fa"), nn.Tanh(), feedback(nn.Dense(10), "fa"))
    params = net.init(jax.random.key(0), (64, 64), jnp.float32)
    result = fit(
        net,
        "softmax_cross_entropy",
        params,
        data,
        optimizer=optax.adam(3e-3),
        epochs=5,
        batch_size=64,
        key=jax.random.key(1),
    )
    assert result.history[-1]["test_accuracy"] > 0.85
    x, y = jnp.asarray(data.x_train[:256]), jnp.asarray(data.y_train[:256])
    angles = alignment(net, "softmax_cross_entropy")(result.params, result.state, x, y)
    assert float(angles["grads"]["dense_0"]) < 80.0  # FA's updates fall within 90° of BP's


BAD = [
    (lambda: feedback(nn.Relu(), "fa"), ValueError, r"feedback: layer kind 'relu' has no weights"),
    (lambda: feedback(nn.Dense(3), "dfa"), ValueError, r"feedback: variant must be one of"),
    (
        lambda: feedback(nn.LSTM(3), "fa", weights=("w_q",)),
        ValueError,
        r"subset of \('w_x', 'w_h'\) for a lstm layer, got \('w_q',\)",
    ),
    (lambda: feedback(feedback(nn.Dense(3)), "fa"), ValueError, r"already wrapped"),
    (lambda: feedback("dense", "fa"), TypeError, r"feedback: layer must be a manual_bp.nn.Layer"),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD)
def test_bad_settings_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_feedback_alignment_without_state_says_how_to_pass_it():
    net = nn.serial(feedback(nn.Dense(3), "fa"), nn.Tanh(), nn.Dense(2))
    x = jnp.ones((4, 5), F64)
    params = net.init(jax.random.key(0), x.shape, F64)
    _, tape = net.forward(params, x)
    with pytest.raises(
        ValueError, match=r"feedback 'fa' on a dense layer.*Context\(state=\.\.\.\)"
    ):
        net.backward(params, tape, jnp.ones((4, 2), F64))
    with pytest.raises(ValueError, match=r"dense_0: feedback 'fa' on a dense layer: training mode"):
        net.forward(params, x, nn.Context(train=True))

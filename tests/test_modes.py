"""Training and evaluation modes: batch norm's statistics and state, dropout's masks and keys,
and the errors that guard them.

Every rule (batch_norm, batch_norm_inference, dropout) is also checked row by row in
``tests/test_rules.py``; whole networks with both layers in ``tests/test_conv.py`` and by the
audit's ``batch-norm-dropout`` network. Here: the conventions those checks take for granted.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import manual_bp
import reference
from _compare import assert_close, assert_trees_close, random_cotangent, rng_for
from manual_bp import nn
from manual_bp.rules.normalization import batch_norm
from manual_bp.rules.stochastic import dropout

F64, F32 = jnp.float64, jnp.float32


def _bn_net():
    return nn.serial(nn.Dense(4), nn.BatchNorm(momentum=0.2), nn.Tanh(), nn.Dense(3))


def test_batch_norm_state_update_follows_the_documented_rule():
    """new mean = (1 − m)·mean + m·μ_B; new var = (1 − m)·var + m·M/(M − 1)·σ²_B (numpy)."""
    rng = rng_for("bn-state")
    layer = nn.BatchNorm(momentum=0.2)
    x = jnp.asarray(rng.standard_normal((6, 2, 3)) * 2 + 1, F64)
    params = {"gamma": jnp.asarray(rng.uniform(0.5, 2, 3), F64), "beta": jnp.zeros(3, F64)}
    state = {"mean": jnp.asarray(rng.standard_normal(3), F64), "var": jnp.ones(3, F64) * 2}
    before = jax.tree.map(np.array, state)
    _, tape = layer.forward(params, x, nn.Context(train=True, state=state))
    new = layer.state_of(tape)
    flat = np.asarray(x).reshape(-1, 3)
    np.testing.assert_allclose(new["mean"], 0.8 * before["mean"] + 0.2 * flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(new["var"], 0.8 * 2 + 0.2 * flat.var(0, ddof=1), rtol=1e-12)
    chex.assert_trees_all_equal(state, before)  # the old state is untouched


def test_batch_norm_evaluation_uses_the_running_statistics():
    rng = rng_for("bn-eval")
    layer = nn.BatchNorm(eps=1e-3)
    x = jnp.asarray(rng.standard_normal((5, 3)), F64)
    params = {"gamma": jnp.asarray(rng.uniform(0.5, 2, 3), F64), "beta": jnp.ones(3, F64)}
    state = {"mean": jnp.asarray([0.5, -1.0, 0.0], F64), "var": jnp.asarray([4.0, 0.25, 1.0], F64)}
    y, tape = layer.forward(params, x, nn.Context(train=False, state=state))
    s = jax.tree.map(np.asarray, state)
    expected = (np.asarray(x) - s["mean"]) / np.sqrt(s["var"] + 1e-3)
    np.testing.assert_allclose(y, expected * np.asarray(params["gamma"]) + 1.0, rtol=1e-12)
    assert layer.state_of(tape) is state


def test_batch_norm_backward_goes_through_the_statistics():
    """With the statistics in the backward, dx is orthogonal to 1 and to x̂ in every feature
    column (shifting or scaling a column does not change x̂); the simplified backward that
    treats μ and σ as constants is not, and differs from the rule."""
    rng = rng_for("bn-stats")
    x = jnp.asarray(rng.standard_normal((7, 4)) * 3 + 2, F64)
    gamma = jnp.asarray(rng.uniform(0.5, 2, 4), F64)
    beta = jnp.asarray(rng.standard_normal(4), F64)
    y, res = batch_norm.fwd(x, gamma, beta, eps=1e-12)  # ε breaks the invariance by ε/σ²
    g = random_cotangent(rng, y)
    dx, _, _ = batch_norm.bwd(res, g, eps=1e-12)
    xhat = res[0]
    np.testing.assert_allclose(np.sum(dx, 0), 0, atol=1e-10)
    np.testing.assert_allclose(np.sum(np.asarray(dx) * np.asarray(xhat), 0), 0, atol=1e-10)
    simplified = np.asarray(g) * np.asarray(gamma) * np.asarray(res[1])
    assert np.max(np.abs(simplified - dx)) > 0.1 * np.max(np.abs(dx))


def test_dropout_masks_follow_the_key():
    rng = rng_for("dropout-key")
    x = jnp.asarray(rng.standard_normal((200, 50)), F32)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    y1, (s1,) = dropout.fwd(x, k1, rate=0.3)
    y1b, _ = dropout.fwd(x, k1, rate=0.3)
    y2, _ = dropout.fwd(x, k2, rate=0.3)
    np.testing.assert_array_equal(y1, y1b)
    assert np.any(np.asarray(y1) != np.asarray(y2))
    kept = np.asarray(s1) != 0
    assert abs(kept.mean() - 0.7) < 0.02  # 10,000 draws: 4.6 standard deviations
    np.testing.assert_allclose(np.asarray(s1)[kept], 1 / 0.7, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(y1)[kept], np.asarray(x)[kept] / 0.7, rtol=1e-6)
    assert np.all(np.asarray(y1)[~kept] == 0)
    g = random_cotangent(rng, y1)
    dx, dkey = dropout.bwd((s1,), g, rate=0.3)
    assert dkey is None
    np.testing.assert_array_equal(np.asarray(dx)[~kept], 0)
    np.testing.assert_allclose(np.asarray(dx)[kept], np.asarray(g)[kept] / 0.7, rtol=1e-6)
    # a raw uint32 key works the same way as a typed one
    y_raw, _ = dropout.fwd(x, jax.random.key_data(k1), rate=0.3)
    np.testing.assert_array_equal(y_raw, y1)


def test_dropout_layer_modes_and_the_position_convention():
    """Evaluation mode and rate 0 are the identity; in a network, child i draws its mask from
    fold_in(key, i), so two dropout layers differ and each is reproducible from the key."""
    x = jnp.asarray(rng_for("dropout-layer").standard_normal((8, 6)), F64)
    net = nn.serial(nn.Dropout(0.5), nn.Dropout(0.5))
    params = net.init(jax.random.key(0), x.shape, F64)
    key = jax.random.key(5)
    y_eval, _ = net.forward(params, x)
    np.testing.assert_array_equal(y_eval, x)
    y_zero, _ = nn.Dropout(0.0).forward({}, x, nn.Context(train=True, key=key))
    np.testing.assert_array_equal(y_zero, x)
    y, tape = net.forward(params, x, nn.Context(train=True, key=key))
    s0 = dropout.fwd(x, jax.random.fold_in(key, 0), rate=0.5)[1][0]
    s1 = dropout.fwd(x, jax.random.fold_in(key, 1), rate=0.5)[1][0]
    np.testing.assert_array_equal(tape[0]["scale"], s0)
    np.testing.assert_array_equal(tape[1]["scale"], s1)
    assert np.any(np.asarray(s0) != np.asarray(s1))
    np.testing.assert_allclose(y, np.asarray(x) * np.asarray(s0) * np.asarray(s1), rtol=1e-14)


@pytest.mark.parametrize("dtype", [F64, F32], ids=lambda d: np.dtype(d).name)
def test_mlp_with_dropout_matches_reference_without_state(dtype):
    """A stateless network with dropout: f(params, x, y, key) on both sides, jitted."""
    net = nn.serial(nn.Dense(8), nn.Relu(), nn.Dropout(0.4), nn.Dense(3))
    rng = rng_for("dropout-mlp", np.dtype(dtype).name)
    x = jnp.asarray(rng.standard_normal((6, 5)), dtype)
    y = jnp.asarray(rng.integers(0, 3, 6), jnp.int32)
    params = net.init(jax.random.key(0), x.shape, dtype)
    key = jax.random.key(11)
    c, grads = jax.jit(manual_bp.value_and_grad(net, "softmax_cross_entropy"))(params, x, y, key)
    rc, rgrads = jax.jit(reference.value_and_grad(net, "softmax_cross_entropy"))(params, x, y, key)
    tol = 1e-10 if dtype == F64 else 1e-4
    assert_close(c, rc, dtype, "loss", tol=tol)
    assert_trees_close(grads, rgrads, dtype, "grad", tol=tol)
    # evaluation mode: no key needed, and the loss is that of the plain network
    c_eval, _ = manual_bp.value_and_grad(net, "softmax_cross_entropy", train=False)(params, x, y)
    rc_eval, _ = reference.value_and_grad(net, "softmax_cross_entropy", train=False)(params, x, y)
    assert_close(c_eval, rc_eval, dtype, "eval loss", tol=tol)


def test_batch_norm_network_trains_its_state_under_jit_and_scan():
    """Three steps of a scan carrying (params, state): the state after them equals the
    reference's, step by step."""
    net = _bn_net()
    rng = rng_for("bn-scan")
    x = jnp.asarray(rng.standard_normal((3, 8, 5)), F64)
    y = jnp.asarray(rng.integers(0, 3, (3, 8)), jnp.int32)
    params = net.init(jax.random.key(0), x.shape[1:], F64)
    state = net.init_state(jax.random.key(0), x.shape[1:], F64)

    def run(f):
        def step(carry, batch):
            p, s = carry
            (c, s), g = f(p, s, *batch)
            p = jax.tree.map(lambda a, b: a - 0.1 * b, p, g)
            return (p, s), c

        return jax.jit(lambda p, s: jax.lax.scan(step, (p, s), (x, y)))(params, state)

    (p, s), cs = run(manual_bp.value_and_grad(net, "softmax_cross_entropy", has_state=True))
    (rp, rs), rcs = run(reference.value_and_grad(net, "softmax_cross_entropy", has_state=True))
    assert_close(cs, rcs, F64, "losses", tol=1e-10)
    # scale_floor: dense_0's bias feeds the batch norm, which cancels it: ∂C/∂b ≈ 0
    assert_trees_close(
        (p, s), (rp, rs), F64, "params and state after 3 steps", tol=1e-10, scale_floor=1.0
    )
    assert not np.allclose(s["batch_norm_1"]["mean"], 0)


def test_has_state_and_init_state_describe_the_network():
    assert nn.has_state(_bn_net())
    assert nn.has_state(nn.serial(nn.residual(nn.serial(nn.BatchNorm(), nn.Relu()))))
    assert not nn.has_state(nn.serial(nn.Dense(3), nn.Dropout(0.5)))
    assert not nn.has_state(nn.LeNet(batch_norm=False))
    state = _bn_net().init_state(jax.random.key(0), (4, 5))
    assert set(state) == {"dense_0", "batch_norm_1", "tanh_2", "dense_3"}
    assert state["dense_0"] == {} and set(state["batch_norm_1"]) == {"mean", "var"}


BAD = [
    (
        "value_and_grad without has_state",
        lambda net, p, s, x, y: manual_bp.value_and_grad(net, "mse"),
        ValueError,
        r"keeps state \(batch-norm statistics or feedback matrices\).*has_state=True",
    ),
    (
        "eval forward without state",
        lambda net, p, s, x, y: net.forward(p, x),
        ValueError,
        r"batch_norm_1: BatchNorm: evaluation mode needs the layer's state",
    ),
    (
        "train step with a batch of one",
        lambda net, p, s, x, y: manual_bp.value_and_grad(net, "mse", has_state=True)(
            p, s, x[:1], y[:1]
        ),
        ValueError,
        r"BatchNorm: training mode needs at least 2 values per feature.*\(1, 4\)",
    ),
    (
        "state of the wrong shape",
        lambda net, p, s, x, y: manual_bp.value_and_grad(net, "mse", has_state=True)(
            p, {**s, "batch_norm_1": {"mean": jnp.zeros(5), "var": jnp.ones(4)}}, x, y
        ),
        ValueError,
        r"state\['batch_norm_1'\]\['mean'\]: expected shape \(4,\).*got \(5,\)",
    ),
    (
        "state missing a layer",
        lambda net, p, s, x, y: manual_bp.value_and_grad(net, "mse", has_state=True)(
            p, {"dense_0": {}}, x, y
        ),
        ValueError,
        r"state: keys do not match the network: missing \['batch_norm_1', 'dense_3', 'tanh_2'\]",
    ),
    (
        "dropout without a key",
        lambda net, p, s, x, y: manual_bp.value_and_grad(
            nn.serial(nn.Dense(4), nn.Dropout(0.5)), "mse"
        )({"dense_0": p["dense_0"], "dropout_1": {}}, x, y),
        ValueError,
        r"dropout_1: Dropout: training mode needs a PRNG key",
    ),
    (
        "dropout rate 1",
        lambda *a: nn.Dropout(1.0),
        ValueError,
        r"Dropout: rate must be in \[0, 1\)",
    ),
    ("dropout rate str", lambda *a: nn.Dropout("0.5"), TypeError, r"Dropout: rate must be"),
    ("momentum", lambda *a: nn.BatchNorm(momentum=1.5), ValueError, r"BatchNorm: momentum"),
    (
        "eps",
        lambda *a: nn.BatchNorm(eps=0),
        ValueError,
        r"BatchNorm: eps must be a positive Python number",
    ),
    (
        "dropout rule key",
        lambda net, p, s, x, y: dropout.fwd(x, jnp.zeros((2,), jnp.int32), rate=0.5),
        TypeError,
        r"dropout: key must be a PRNG key.*shape \(2,\) and dtype int32",
    ),
    (
        "batch_norm gamma",
        lambda net, p, s, x, y: batch_norm.fwd(x, jnp.ones(3), jnp.zeros(4)),
        ValueError,
        r"batch_norm: gamma \(one per feature of x \(6, 4\)\) must have shape \(4,\), got \(3,\)",
    ),
]


@pytest.mark.parametrize(("what", "call", "error", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_the_layer_expected_and_actual(what, call, error, message):
    net = nn.serial(nn.Dense(4), nn.BatchNorm(), nn.Tanh(), nn.Dense(4))
    x = jnp.asarray(rng_for("bn-bad").standard_normal((6, 4)), F64)
    params = net.init(jax.random.key(0), x.shape, F64)
    state = net.init_state(jax.random.key(0), x.shape, F64)
    with pytest.raises(error, match=message):
        call(net, params, state, x, x)

"""Diagonal-GGN preconditioning: steps against the float64 reference GGN, and a short digits run.

The reference diagonal is diag Σₙ Jₙᵀ Hₙ Jₙ from ``jax.jacobian`` of ``reference.forward`` and
``jax.hessian`` of the reference loss; the expected update g / (d̄ + λ) is formed from it here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import reference
from _compare import assert_trees_close, random_cotangent, rng_for
from manual_bp import curvature, value_and_grad
from manual_bp import nn as mnn
from manual_bp.data import load_digits

F64 = jnp.float64
LOSS = "softmax_cross_entropy"
NETS = {
    "mlp": lambda: mnn.mlp([4], 3, "tanh"),
    "batch_norm": lambda: mnn.serial(mnn.Dense(4), mnn.BatchNorm(), mnn.Tanh(), mnn.Dense(3)),
}


def reference_diagonal(net, params, x, y, state):
    """diag Σₙ Jₙᵀ Hₙ Jₙ per parameter array, from the reference network and loss."""
    fwd = lambda p: reference.forward(net, p, x, state=state, train=True)  # noqa: E731
    out = fwd(params)
    m = out.size
    hess = jax.hessian(lambda o: reference.FORWARD[LOSS](o, y))(out).reshape(m, m)

    def diag(j):
        jf = j.reshape(m, -1)
        return jnp.einsum("ai,ab,bi->i", jf, hess, jf).reshape(j.shape[out.ndim :])

    return jax.tree.map(diag, jax.jacobian(fwd)(params))


def _problem(name, rng):
    net = NETS[name]()
    x = jnp.asarray(rng.standard_normal((3, 3)), F64)
    params = net.init(jax.random.key(1), x.shape, F64)
    params = jax.tree.map(
        lambda p: p + 0.3 * jnp.asarray(rng.standard_normal(p.shape), F64), params
    )
    state = net.init_state(jax.random.key(2), x.shape, F64) if mnn.has_state(net) else None
    return net, params, x, state


@pytest.mark.parametrize("name", list(NETS))
def test_two_steps_equal_the_formula_on_the_reference_diagonal(name):
    """Step 1: u = g₁ / (d₁ + λ); step 2: u = g₂ / (ρ d₁ + (1 − ρ) d₂ + λ), the moving average
    of the reference diagonals of two different batches; random directions g (not ones)."""
    rng = rng_for("diag ggn preconditioner", name)
    net, params, x1, state = _problem(name, rng)
    x2 = jnp.asarray(rng.standard_normal(x1.shape), F64)
    y1, y2 = (jnp.asarray(rng.integers(0, 3, (3,))) for _ in range(2))
    g1, g2 = (jax.tree.map(lambda p: random_cotangent(rng, p), params) for _ in range(2))
    damping, decay = 0.05, 0.7
    opt = curvature.diag_ggn_preconditioner(
        net, LOSS, damping=damping, decay=decay, mc_samples=None
    )
    update = jax.jit(lambda g, s, x, y: opt.update(g, s, params, x=x, y=y, net_state=state))
    u1, s1 = update(g1, opt.init(params), x1, y1)
    u2, s2 = update(g2, s1, x2, y2)

    ref = jax.jit(lambda x, y: reference_diagonal(net, params, x, y, state))
    d1, d2 = ref(x1, y1), ref(x2, y2)
    avg = jax.tree.map(lambda a, b: decay * a + (1 - decay) * b, d1, d2)
    precondition = lambda g, d: jax.tree.map(lambda gi, di: gi / (di + damping), g, d)  # noqa: E731
    # Rounding sits on the scale of the whole GGN: the bias before a batch norm has an
    # identically zero GGN, computed as a difference of O(1) terms.
    floor = max(float(jnp.max(jnp.abs(d))) for d in jax.tree.leaves(d1))
    for got, expected, what in ((s1.diagonal, d1, "first diagonal"), (s2.diagonal, avg, "average")):
        assert_trees_close(got, expected, F64, f"{name}: {what}", kind="network", scale_floor=floor)
    assert_trees_close(u1, precondition(g1, d1), F64, f"{name}: step 1", kind="network")
    assert_trees_close(u2, precondition(g2, avg), F64, f"{name}: step 2", kind="network")
    assert int(s1.count) == 1 and int(s2.count) == 2


def test_monte_carlo_diagonal_trains_the_digits_mlp():
    """With one sampled label per example (the default) and optax.sgd, 60 jitted steps of 64
    examples bring an MLP well above chance (0.1) on the held-out digits."""
    data = load_digits(seed=0)
    x_tr, y_tr = jnp.asarray(data.x_train, jnp.float32), jnp.asarray(data.y_train)
    net = mnn.mlp([32], 10, "tanh")
    params = net.init(jax.random.key(0), x_tr[:64].shape)
    opt = optax.chain(curvature.diag_ggn_preconditioner(net, LOSS, damping=0.1), optax.sgd(0.1))
    grad_fn = value_and_grad(net, LOSS)

    @jax.jit
    def step(params, state, xb, yb, key):
        _, grads = grad_fn(params, xb, yb)
        with jax.numpy_dtype_promotion("standard"):  # optax's step counts meet Python floats
            updates, state = opt.update(grads, state, params, x=xb, y=yb, key=key)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    rng = np.random.default_rng(0)
    for i in range(60):
        idx = rng.choice(x_tr.shape[0], 64, replace=False)
        params, state = step(params, state, x_tr[idx], y_tr[idx], jax.random.key(i))
    logits, _ = net.forward(params, jnp.asarray(data.x_test, jnp.float32))
    acc = float(np.mean(np.asarray(jnp.argmax(logits, -1)) == data.y_test))
    assert acc > 0.8, f"test accuracy {acc:.3f} after 60 diagonal-GGN steps (chance 0.1)"


def test_bad_input_names_the_op():
    op = "diag_ggn_preconditioner"
    net = mnn.mlp([3], 2)
    make = curvature.diag_ggn_preconditioner
    with pytest.raises(TypeError, match=rf"{op}: expected a manual_bp.nn.Layer"):
        make("mlp", "mse")
    with pytest.raises(ValueError, match=rf"{op}: damping must be > 0, got 0.0"):
        make(net, "mse", damping=0.0)
    with pytest.raises(TypeError, match=rf"{op}: damping must be a number, got '1'"):
        make(net, "mse", damping="1")
    with pytest.raises(ValueError, match=rf"{op}: decay must be in \[0, 1\), got 1.0"):
        make(net, "mse", decay=1.0)
    with pytest.raises(ValueError, match=rf"{op}: mc_samples must be a positive int"):
        make(net, "mse", mc_samples=0)
    with pytest.raises(ValueError, match=rf"{op}: no Hessian factor for the loss 'tanh'"):
        make(net, "tanh")
    opt = make(net, "mse")
    params = net.init(jax.random.key(0), (2, 2))
    x, y = jnp.zeros((2, 2)), jnp.zeros((2, 2))
    with pytest.raises(ValueError, match=rf"{op}: update needs params and the batch"):
        opt.update(params, opt.init(params), params)
    with pytest.raises(ValueError, match=rf"{op}: the Monte-Carlo diagonal .* needs key="):
        opt.update(params, opt.init(params), params, x=x, y=y)
    with pytest.raises(ValueError, match=rf"{op}: the gradients' tree"):
        opt.update({"dense_0": params["dense_0"]}, opt.init(params), params, x=x, y=y, key=x)
    with pytest.raises(ValueError, match=r"params\['dense_0'\]\['w'\]: expected shape \(3, 3\)"):
        opt.update(
            params, opt.init(params), params, x=jnp.zeros((2, 3)), y=y, key=jax.random.key(0)
        )

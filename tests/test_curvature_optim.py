"""The K-FAC preconditioner: one exact step on a linear model, and short digits runs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from _compare import assert_close, rng_for
from manual_bp import curvature, value_and_grad
from manual_bp import nn as mnn
from manual_bp.data import load_digits
from manual_bp.verify import tolerance_for

F64 = jnp.float64


def test_first_step_is_the_damped_kronecker_inverse_times_the_gradient():
    rng = rng_for("kfac step")
    net = mnn.serial(mnn.Dense(3))
    x = jnp.asarray(rng.standard_normal((1, 2)), F64)
    y = jnp.asarray(rng.integers(0, 3, (1,)))
    params = net.init(jax.random.key(0), x.shape, F64)
    _, grads = value_and_grad(net, "softmax_cross_entropy")(params, x, y)
    opt = curvature.kfac(net, "softmax_cross_entropy", kind="kflr", damping=1e-2)
    updates, state = opt.update(grads, opt.init(params), params, x=x, y=y)
    k = curvature.kfac_factors(net, "softmax_cross_entropy", kind="kflr")(params, x, y)["dense_0"]
    eye = lambda m: jnp.eye(m.shape[0], dtype=F64)  # noqa: E731
    big = jnp.kron(k.a + 0.1 * eye(k.a), k.g + 0.1 * eye(k.g))
    g = jnp.concatenate([grads["dense_0"]["w"], grads["dense_0"]["b"][None]]).reshape(-1)
    expected = jnp.linalg.solve(big, g).reshape(3, 3)
    got = jnp.concatenate([updates["dense_0"]["w"], updates["dense_0"]["b"][None]])
    assert_close(got, expected, F64, "K-FAC step", tol=tolerance_for(F64, "network"))
    assert int(state.count) == 1


def _train(net, x_shape_fn, steps=60):
    data = load_digits(seed=0)
    x_tr = jnp.asarray(x_shape_fn(data.x_train), jnp.float32)
    y_tr = jnp.asarray(data.y_train)
    x_te = jnp.asarray(x_shape_fn(data.x_test), jnp.float32)
    params = net.init(jax.random.key(0), x_tr[:64].shape)
    opt = optax.chain(
        curvature.kfac(net, "softmax_cross_entropy", damping=0.1, inverse_every=5),
        optax.sgd(0.1),
    )
    grad_fn = value_and_grad(net, "softmax_cross_entropy", train=False)

    @jax.jit
    def step(params, state, xb, yb, key):
        _, grads = grad_fn(params, xb, yb)
        updates, state = opt.update(grads, state, params, x=xb, y=yb, key=key)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    rng = np.random.default_rng(0)
    for i in range(steps):
        idx = rng.choice(x_tr.shape[0], 64, replace=False)
        params, state = step(params, state, x_tr[idx], y_tr[idx], jax.random.key(i))
    logits, _ = net.forward(params, x_te)
    return float(np.mean(np.asarray(jnp.argmax(logits, -1)) == data.y_test))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "lenet"])
def test_kfac_trains_digits(model):
    if model == "mlp":
        acc = _train(mnn.mlp([32], 10, "tanh"), lambda x: x.reshape(x.shape[0], -1))
    else:
        net = mnn.LeNet(10, channels=(4, 8), hidden=32, batch_norm=False)
        acc = _train(net, lambda x: x.reshape(x.shape[0], 8, 8, 1))
    assert acc > 0.8, f"{model}: test accuracy {acc:.3f} after 60 K-FAC steps (chance 0.1)"


def test_kfac_errors():
    net = mnn.mlp([3], 2)
    with pytest.raises(ValueError, match=r"kfac: damping must be > 0"):
        curvature.kfac(net, "mse", damping=0.0)
    with pytest.raises(ValueError, match=r"kfac: decay must be in \[0, 1\)"):
        curvature.kfac(net, "mse", decay=1.0)
    with pytest.raises(ValueError, match="kfac: inverse_every must be a positive int"):
        curvature.kfac(net, "mse", inverse_every=0)
    opt = curvature.kfac(net, "mse")
    params = net.init(jax.random.key(0), (2, 2))
    with pytest.raises(ValueError, match="kfac: update needs params and the batch"):
        opt.update(params, opt.init(params), params)

"""manual_bp.curvature: loss Hessian factors and the diagonal GGN against the float64 reference.

The exact GGN Σₙ Jₙᵀ Hₙ Jₙ is built from ``jax.jacobian`` of the reference network and
``jax.hessian`` of the reference loss; every layer kind the curvature supports has a small
network here. One jit per network (exact and Monte-Carlo share it through ``mc_samples``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from _compare import assert_close, assert_trees_close, rng_for
from manual_bp import curvature
from manual_bp import nn as mnn

F64 = jnp.float64
LOSSES = ("softmax_cross_entropy", "mse", "sigmoid_binary_cross_entropy")


def _targets(loss, rng, out_shape):
    if loss == "softmax_cross_entropy":
        return jnp.asarray(rng.integers(0, out_shape[-1], out_shape[:-1]))
    if loss == "mse":
        return jnp.asarray(rng.standard_normal(out_shape), F64)
    return jnp.asarray(rng.uniform(size=out_shape), F64)


# ---- 1. loss Hessian factors ------------------------------------------------------------


@pytest.mark.parametrize("loss", [*LOSSES, "soft_targets"])
def test_factor_reproduces_the_loss_hessian(loss):
    rng = rng_for("factor", loss)
    out = jnp.asarray(3 * rng.standard_normal((3, 2, 4)), F64)
    if loss == "soft_targets":
        y = jnp.asarray(rng.dirichlet(np.ones(4), (3, 2)) * 1.5, F64)  # mass τ = 1.5
        loss = "softmax_cross_entropy"
    else:
        y = _targets(loss, rng, out.shape)
    hess = jax.hessian(lambda o: reference.FORWARD[loss](o, y))(out)  # (3,2,4, 3,2,4)
    blocks = jnp.einsum("nlknlj->nlkj", hess)
    factor = curvature.hessian_factor(loss, out, y)
    assert factor.shape == (3, 2, 4, 4)
    assert_close(curvature.loss_hessian(factor), blocks, F64, f"{loss}: S Sᵀ")
    off_block = hess.reshape(24, 24) - jax.scipy.linalg.block_diag(*blocks.reshape(6, 4, 4))
    assert float(jnp.max(jnp.abs(off_block))) == 0.0, "the Hessian is block-diagonal"


@pytest.mark.parametrize("loss", LOSSES)
def test_mc_factor_converges_to_the_hessian(loss):
    rng = rng_for("mc factor", loss)
    out = jnp.asarray(rng.standard_normal((2, 3)), F64)
    y = _targets(loss, rng, out.shape)
    samples = 20_000
    mc = curvature.mc_hessian_factor(loss, out, y, jax.random.key(0), samples)
    assert mc.shape == (2, 3, samples)
    exact = curvature.loss_hessian(curvature.hessian_factor(loss, out, y))
    estimate = curvature.loss_hessian(mc)
    # Each entry is a mean of `samples` terms; its standard error is below
    # max(H)·κ/√samples with κ the terms' relative spread (≤ 3 for these distributions).
    bound = 6 * 3 * float(jnp.max(jnp.abs(exact))) / math.sqrt(samples)
    assert float(jnp.max(jnp.abs(estimate - exact))) < bound


def test_factor_errors_name_the_op():
    out = jnp.zeros((2, 3), F64)
    with pytest.raises(ValueError, match="hessian_factor: no Hessian factor for the loss 'tanh'"):
        curvature.hessian_factor("tanh", out, out)
    with pytest.raises(ValueError, match=r"hessian_factor: targets must have the output's shape"):
        curvature.hessian_factor("mse", out, jnp.zeros((2, 4), F64))
    with pytest.raises(ValueError, match=r"integer labels must have shape \(2,\)"):
        curvature.hessian_factor("softmax_cross_entropy", out, jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="hessian_factor: out must have rank"):
        curvature.hessian_factor("mse", jnp.zeros((2,), F64), jnp.zeros((2,), F64))
    with pytest.raises(ValueError, match="mc_hessian_factor: samples must be a positive int"):
        curvature.mc_hessian_factor("mse", out, out, jax.random.key(0), 0)


# ---- 2. diagonal GGN on every layer kind ------------------------------------------------


def exact_ggn(net, loss, params, x, y, state=None):
    """Σₙ Jₙᵀ Hₙ Jₙ per parameter array (its diagonal), from the reference: jax.jacobian of
    the network and jax.hessian of the loss."""
    fwd = lambda p: reference.forward(net, p, x, state=state, train=True)  # noqa: E731
    out = fwd(params)
    jac = jax.jacobian(fwd)(params)
    m = out.size
    hess = jax.hessian(lambda o: reference.FORWARD[loss](o, y))(out).reshape(m, m)

    def diag(j):
        jf = j.reshape(m, -1)
        return jnp.einsum("ai,ab,bi->i", jf, hess, jf).reshape(j.shape[out.ndim :])

    return jax.tree.map(diag, jac)


def _image(rng, n):
    return jnp.asarray(rng.standard_normal((n, 5, 5, 2)), F64)


def _sequence(rng, n):
    return jnp.asarray(rng.standard_normal((n, 3, 2)), F64)


NETWORKS = {
    "mlp": (
        lambda: mnn.mlp([4], 3, "tanh"),
        lambda r, n: jnp.asarray(r.standard_normal((n, 3)), F64),
    ),
    "conv_pool": (
        lambda: mnn.serial(
            mnn.Conv2D(3, (2, 2), strides=(1, 1), padding="VALID"),
            mnn.Tanh(),
            mnn.MaxPool2D((2, 2), (2, 2)),
            mnn.Flatten(),
            mnn.Dense(3),
        ),
        _image,
    ),
    "batch_norm": (
        lambda: mnn.serial(mnn.Dense(4), mnn.BatchNorm(), mnn.Tanh(), mnn.Dense(3)),
        lambda r, n: jnp.asarray(r.standard_normal((n, 3)), F64),
    ),
    "layer_rms_norm": (
        lambda: mnn.serial(
            mnn.Dense(4), mnn.LayerNorm(), mnn.Tanh(), mnn.Dense(4), mnn.RMSNorm(), mnn.Dense(3)
        ),
        lambda r, n: jnp.asarray(r.standard_normal((n, 3)), F64),
    ),
    "embedding_rnn": (
        lambda: mnn.serial(mnn.Embedding(5, 2), mnn.RNN(3), mnn.LastStep(), mnn.Dense(3)),
        lambda r, n: jnp.asarray(r.integers(0, 5, (n, 3))),
    ),
    "lstm": (lambda: mnn.serial(mnn.LSTM(2), mnn.LastStep(), mnn.Dense(3)), _sequence),
    "gru": (lambda: mnn.serial(mnn.GRU(2), mnn.LastStep(), mnn.Dense(3)), _sequence),
    "attention": (
        lambda: mnn.serial(mnn.Dense(4), mnn.MultiHeadAttention(2), mnn.Dense(3)),
        _sequence,
    ),
}
LOSS_OF = {"batch_norm": "mse", "lstm": "sigmoid_binary_cross_entropy"}


def _problem(name, n=3):
    build, inputs = NETWORKS[name]
    net = build()
    rng = rng_for("ggn", name)
    x = inputs(rng, n)
    params = net.init(jax.random.key(1), x.shape, F64)
    params = jax.tree.map(
        lambda p: p + 0.3 * jnp.asarray(rng.standard_normal(p.shape), F64), params
    )
    state = net.init_state(jax.random.key(2), x.shape, F64) if mnn.has_state(net) else None
    loss = LOSS_OF.get(name, "softmax_cross_entropy")
    out_shape = net.output_shape(x.shape)
    y = _targets(loss, rng, out_shape)
    return net, loss, params, x, y, state


@pytest.mark.parametrize("name", list(NETWORKS))
def test_diag_ggn_equals_the_reference_ggn(name):
    net, loss, params, x, y, state = _problem(name)
    expected = jax.jit(lambda *a: exact_ggn(net, loss, *a))(params, x, y, state)
    f = jax.jit(curvature.diag_ggn(net, loss))
    got = f(params, x, y, None, state)
    # Rounding sits on the scale of the whole GGN: the bias before a batch norm has an
    # identically zero GGN, computed as a difference of O(1) terms.
    floor = max(float(jnp.max(jnp.abs(e))) for e in jax.tree.leaves(expected))
    assert_trees_close(got, expected, F64, f"{name}: diag GGN", kind="network", scale_floor=floor)
    if name in ("mlp", "attention"):
        # Dense's cheap route gives the same numbers without per-example gradients.
        cheap = jax.jit(curvature.dense_diag_ggn(net, loss))(params, x, y)
        assert set(cheap) == {p for p in mnn.by_layer(params) if p.startswith("dense")}
        for path, d in cheap.items():
            assert_trees_close(d, got[path], F64, f"{name}: {path} cheap route", kind="network")


def test_mc_diag_ggn_converges_to_the_exact_one():
    """R independent one-sample estimates: their mean is within 5 standard errors (from their
    own spread, over √R) of the exact diagonal; one R-sample estimate is within the same bound."""
    net, loss, params, x, y, _ = _problem("mlp")
    exact = jax.jit(curvature.diag_ggn(net, loss))(params, x, y)
    one = curvature.diag_ggn(net, loss, mc_samples=1)
    draws = 1000
    keys = jax.random.split(jax.random.key(3), draws)
    samples = jax.jit(jax.vmap(lambda k: one(params, x, y, k)))(keys)
    pooled = jax.jit(curvature.diag_ggn(net, loss, mc_samples=draws))(
        params, x, y, jax.random.key(4)
    )
    for path, e in mnn.by_layer(exact).items():
        for leaf in e:
            s = mnn.by_layer(samples)[path][leaf]
            err = 5 * jnp.std(s, axis=0) / math.sqrt(draws) + 1e-12
            assert bool(jnp.all(jnp.abs(jnp.mean(s, axis=0) - e[leaf]) <= err)), (path, leaf)
            p = mnn.by_layer(pooled)[path][leaf]
            assert bool(jnp.all(jnp.abs(p - e[leaf]) <= err)), (path, leaf)


def test_diag_ggn_errors_name_the_op_and_shapes():
    net, loss, params, x, y, _ = _problem("mlp")
    f = curvature.diag_ggn(net, loss)
    with pytest.raises(ValueError, match=r"params\['dense_0'\]\['w'\]: expected shape \(5, 4\)"):
        f(params, jnp.zeros((3, 5), F64), y)
    with pytest.raises(ValueError, match=r"integer labels must have shape \(3,\), got \(4,\)"):
        f(params, x, jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match=r"diag_ggn: the Monte-Carlo estimate .* needs a key"):
        curvature.diag_ggn(net, loss, mc_samples=2)(params, x, y)
    with pytest.raises(ValueError, match="diag_ggn: mc_samples must be a positive int"):
        curvature.diag_ggn(net, loss, mc_samples=0)
    bn, _, p_bn, x_bn, y_bn, _ = _problem("batch_norm")
    with pytest.raises(ValueError, match=r"diag_ggn: the network .* keeps state .* pass state="):
        curvature.diag_ggn(bn, "mse")(p_bn, x_bn, y_bn)
    with pytest.raises(ValueError, match=r"dense_diag_ggn: the network .* keeps batch statistics"):
        curvature.dense_diag_ggn(bn, "mse")


@pytest.mark.parametrize("name", ["conv_pool", "attention"])
def test_ggn_vector_product_equals_the_reference(name):
    """G v against Jᵀ H J v from jax.jacobian of the reference network and jax.hessian of the
    reference loss, for a random direction v."""
    net, loss, params, x, y, _state = _problem(name)
    rng = rng_for("ggn vp", name)
    v = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), F64), params)

    @jax.jit
    def reference_gv(params, v):
        fwd = lambda p: reference.forward(net, p, x, train=True)  # noqa: E731
        out = fwd(params)
        _, jv = jax.jvp(fwd, (params,), (v,))
        hess = jax.hessian(lambda o: reference.FORWARD[loss](o, y))(out)
        hjv = jnp.tensordot(hess, jv, axes=out.ndim)
        _, vjp = jax.vjp(fwd, params)
        return vjp(hjv)[0]

    expected = reference_gv(params, v)
    got = jax.jit(curvature.ggn_vector_product(net, loss))(params, x, y, v)
    floor = max(float(jnp.max(jnp.abs(e))) for e in jax.tree.leaves(expected))
    assert_trees_close(got, expected, F64, f"{name}: G v", kind="network", scale_floor=floor)

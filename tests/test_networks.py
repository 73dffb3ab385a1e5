"""Whole networks: manual gradients and per-layer deltas equal the reference's jax.grad.

Several depths, every activation, every loss, nested networks and extra batch dims; float64
tight and float32 within tolerance; jitted and not.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from _compare import assert_close, assert_matches_reference, rng_for
from manual_bp import nn, value_and_grad, value_grad_and_deltas

ACTIVATIONS = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.Relu,
    "leaky_relu": lambda: nn.LeakyRelu(0.1),
    "elu": lambda: nn.Elu(0.7),
    "gelu": nn.Gelu,
    "gelu_tanh": lambda: nn.Gelu(approximate=True),
    "softplus": nn.Softplus,
    "silu": nn.Silu,
}


def mlp(widths, act, out):
    layers = []
    for w in widths:
        layers += [nn.Dense(w), ACTIVATIONS[act]()]
    return nn.serial(*layers, nn.Dense(out))


def _targets(loss, rng, batch_shape, out, dtype):
    if loss == "softmax_cross_entropy":
        return jnp.asarray(rng.integers(0, out, size=batch_shape), jnp.int32)
    if loss == "softmax_cross_entropy_prob":
        t = rng.uniform(size=(*batch_shape, out))
        return jnp.asarray(t / t.sum(-1, keepdims=True), dtype)
    if loss == "sigmoid_binary_cross_entropy":
        return jnp.asarray(rng.uniform(size=(*batch_shape, out)), dtype)
    return jnp.asarray(rng.standard_normal((*batch_shape, out)), dtype)


def _loss_name(loss):
    return "softmax_cross_entropy" if loss == "softmax_cross_entropy_prob" else loss


NETWORKS = {
    # every activation, two hidden layers, integer-label cross entropy
    **{f"act-{a}": (lambda a=a: mlp((6, 5), a, 3), "softmax_cross_entropy") for a in ACTIVATIONS},
    # depths 0 (logistic regression) to 5 hidden layers: the lecture's deep sigmoid network
    **{f"depth-{d}": (lambda d=d: mlp((5,) * d, "sigmoid", 3), "mse") for d in (0, 1, 3, 5)},
    # every loss
    "loss-mse": (lambda: mlp((6,), "tanh", 3), "mse"),
    "loss-ce-prob": (lambda: mlp((6,), "tanh", 3), "softmax_cross_entropy_prob"),
    "loss-bce": (lambda: mlp((6,), "tanh", 3), "sigmoid_binary_cross_entropy"),
    # a log-softmax output layer trained with mse, and a network nested inside a network
    "log-softmax-head": (
        lambda: nn.serial(nn.Dense(5), nn.Elu(), nn.Dense(4), nn.LogSoftmax()),
        "mse",
    ),
    "nested": (
        lambda: nn.serial(
            nn.Dense(6),
            nn.Relu(),
            nn.serial(nn.Dense(5), nn.Tanh(), nn.Dense(5), name="block"),
            nn.Softplus(),
            nn.Dense(3),
        ),
        "softmax_cross_entropy",
    ),
}


@functools.cache
def _fns(name, jit):
    make, loss = NETWORKS[name]
    net = make()
    manual = value_grad_and_deltas(net, _loss_name(loss))
    ref = reference.value_grad_and_deltas(net, _loss_name(loss))
    if jit:
        manual, ref = jax.jit(manual), jax.jit(ref)
    return net, loss, manual, ref


def _data(name, dtype, batch_shape=(8,), features=4):
    net, loss, _, _ = _fns(name, False)
    rng = rng_for("net", name, np.dtype(dtype).name, batch_shape)
    x = jnp.asarray(rng.standard_normal((*batch_shape, features)), dtype)
    params = net.init(jax.random.key(len(name)), x.shape, dtype)
    # move biases off zero so every term of the backward pass is exercised
    params = jax.tree.map(
        lambda p: p + jnp.asarray(0.1 * rng.standard_normal(p.shape), dtype), params
    )
    out = net.output_shape(x.shape)[-1]
    return params, x, _targets(loss, rng, batch_shape, out, dtype)


CASES = [
    pytest.param(name, dtype, jit, id=f"{name}-{np.dtype(dtype).name}-{'jit' if jit else 'eager'}")
    for name in NETWORKS
    for dtype, jit in ((jnp.float64, False), (jnp.float64, True), (jnp.float32, True))
]


@pytest.mark.parametrize(("name", "dtype", "jit"), CASES)
def test_grads_and_deltas_match_reference(name, dtype, jit):
    _, _, manual, ref = _fns(name, jit)
    params, x, y = _data(name, dtype)
    assert_matches_reference(name, manual(params, x, y), ref(params, x, y), dtype)


def test_extra_leading_batch_dims():
    params, x, y = _data("nested", jnp.float64, batch_shape=(2, 3))
    _, _, manual, ref = _fns("nested", False)
    (c, g, d), (rc, rg, rd) = manual(params, x, y), ref(params, x, y)
    assert_close(c, rc, jnp.float64, "loss")
    for a, b in zip(jax.tree.leaves((g, d)), jax.tree.leaves((rg, rd)), strict=True):
        assert_close(a, b, jnp.float64, "grads and deltas over (2, 3) batch dims")


def test_value_and_grad_is_a_drop_in_for_jax_value_and_grad():
    net, loss, _, _ = _fns("act-tanh", False)
    params, x, y = _data("act-tanh", jnp.float64)
    c, grads = value_and_grad(net, loss)(params, x, y)
    rc, rgrads = reference.value_and_grad(net, loss)(params, x, y)
    assert jax.tree.structure((c, grads)) == jax.tree.structure((rc, rgrads))
    for a, b in zip(jax.tree.leaves((c, grads)), jax.tree.leaves((rc, rgrads)), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert_close(a, b, jnp.float64, "value_and_grad")


def test_dense_delta_is_sigma_prime_times_weighted_sum_of_next_deltas():
    """The lecture's recurrence, read straight off the deltas: δ = σ'(z) · W δ'."""
    net, _, manual, _ = _fns("depth-3", False)
    params, x, y = _data("depth-3", jnp.float64)
    _, _, deltas = manual(params, x, y)
    out, _ = net.forward(params, x)
    z = x @ params["dense_0"]["w"] + params["dense_0"]["b"][None, :]
    s = jax.nn.sigmoid(z)
    expected = s * (1 - s) * (deltas["dense_2"] @ params["dense_2"]["w"].T)
    assert_close(deltas["dense_0"], expected, jnp.float64, "δ = σ'(z) Wᵀδ'")
    del out

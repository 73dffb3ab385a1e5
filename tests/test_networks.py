"""Whole networks: manual gradients and per-layer deltas equal the reference's jax.grad.

Several depths, every activation, every loss, nested networks and extra batch dims; float64
tight and float32 within tolerance; jitted and not.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

import reference
from _compare import assert_close, assert_matches_reference, assert_trees_close, rng_for
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
def _fns(name):
    """The network, its loss, manual_bp's ``(C, grads, deltas)`` and the reference's, jitted."""
    make, loss = NETWORKS[name]
    net = make()
    manual = value_grad_and_deltas(net, _loss_name(loss))
    ref = jax.jit(reference.value_grad_and_deltas(net, _loss_name(loss)))
    return net, loss, manual, ref


def _data(name, dtype, batch_shape=(8,), features=4):
    net, loss, _, _ = _fns(name)
    rng = rng_for("net", name, np.dtype(dtype).name, batch_shape)
    x = jnp.asarray(rng.standard_normal((*batch_shape, features)), dtype)
    params = net.init(jax.random.key(len(name)), x.shape, dtype)
    # move biases off zero so every term of the backward pass is exercised
    params = jax.tree.map(
        lambda p: p + jnp.asarray(0.1 * rng.standard_normal(p.shape), dtype), params
    )
    out = net.output_shape(x.shape)[-1]
    return params, x, _targets(loss, rng, batch_shape, out, dtype)


NAMED = [(name, name) for name in NETWORKS]


class GradsAndDeltasMatchReference(chex.TestCase):
    """Every network: float64 with and without jit, float32 under jit."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*NAMED)
    def test_float64(self, name):
        self._check(name, jnp.float64)

    @chex.variants(with_jit=True)
    @parameterized.named_parameters(*NAMED)
    def test_float32(self, name):
        self._check(name, jnp.float32)

    def _check(self, name, dtype):
        _, _, manual, ref = _fns(name)
        params, x, y = _data(name, dtype)
        got = self.variant(manual)(params, x, y)
        assert_matches_reference(name, got, ref(params, x, y), dtype)


def test_extra_leading_batch_dims():
    params, x, y = _data("nested", jnp.float64, batch_shape=(2, 3))
    _, _, manual, ref = _fns("nested")
    (c, g, d), (rc, rg, rd) = manual(params, x, y), ref(params, x, y)
    assert_close(c, rc, jnp.float64, "loss")
    assert_trees_close((g, d), (rg, rd), jnp.float64, "grads and deltas over (2, 3) batch dims")


def test_value_and_grad_is_a_drop_in_for_jax_value_and_grad():
    net, loss, _, _ = _fns("act-tanh")
    params, x, y = _data("act-tanh", jnp.float64)
    got = value_and_grad(net, loss)(params, x, y)
    expected = reference.value_and_grad(net, loss)(params, x, y)
    chex.assert_trees_all_equal_shapes_and_dtypes(got, expected)
    assert_trees_close(got, expected, jnp.float64, "value_and_grad")


def test_dense_delta_is_sigma_prime_times_weighted_sum_of_next_deltas():
    """The lecture's recurrence, read straight off the deltas: δ = σ'(z) · W δ'."""
    net, _, manual, _ = _fns("depth-3")
    params, x, y = _data("depth-3", jnp.float64)
    _, _, deltas = manual(params, x, y)
    out, _ = net.forward(params, x)
    z = x @ params["dense_0"]["w"] + params["dense_0"]["b"][None, :]
    s = jax.nn.sigmoid(z)
    expected = s * (1 - s) * (deltas["dense_2"] @ params["dense_2"]["w"].T)
    assert_close(deltas["dense_0"], expected, jnp.float64, "δ = σ'(z) Wᵀδ'")
    del out

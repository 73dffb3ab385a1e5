"""The Hessian's diagonal and the activations' second derivatives against the float64 reference.

The expected diagonal is ``jnp.diag(jax.hessian(...))`` of the reference loss of the reference
network with respect to all parameters at once (flattened with ``ravel_pytree``); the expected
σ'' is ``jax.grad(jax.grad(·))`` of the reference activation, in float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import reference
from _compare import assert_close, assert_trees_close, rng_for
from manual_bp import curvature, rules
from manual_bp import nn as mnn

F64 = jnp.float64

NETS = {
    "tanh mlp, cross-entropy": (
        lambda: mnn.mlp([4, 5], 3, "tanh"),
        (6, 4),
        "softmax_cross_entropy",
    ),
    "gelu(tanh) and silu, mse": (
        lambda: mnn.serial(
            mnn.Dense(4), mnn.Gelu(approximate=True), mnn.Dense(4), mnn.Silu(), mnn.Dense(3)
        ),
        (6, 4),
        "mse",
    ),
    "sigmoid, softplus, gelu, sigmoid cross-entropy": (
        lambda: mnn.serial(
            mnn.Dense(4), mnn.Sigmoid(), mnn.Dense(4), mnn.Softplus(), mnn.Gelu(), mnn.Dense(3)
        ),
        (5, 3),
        "sigmoid_binary_cross_entropy",
    ),
    "relu and leaky relu": (
        lambda: mnn.serial(
            mnn.Dense(5), mnn.Relu(), mnn.Dense(4), mnn.LeakyRelu(0.1), mnn.Dense(3)
        ),
        (6, 4),
        "softmax_cross_entropy",
    ),
    "conv, pooling, elu, nested serial": (
        lambda: mnn.serial(
            mnn.Conv2D(3, (3, 3)),
            mnn.Sigmoid(),
            mnn.MaxPool2D(),
            mnn.serial(mnn.Conv2D(2, (2, 2), padding="SAME"), mnn.Elu(0.7)),
            mnn.AvgPool2D(),
            mnn.Flatten(),
            mnn.Dense(3),
        ),
        (2, 9, 9, 2),
        "softmax_cross_entropy",
    ),
}


def _problem(name):
    make, shape, loss = NETS[name]
    rng = rng_for("hessian", name)
    net = make()
    x = jnp.asarray(rng.standard_normal(shape), F64)
    params = net.init(jax.random.key(0), x.shape, F64)
    params = jax.tree.map(
        lambda p: p + 0.3 * jnp.asarray(rng.standard_normal(p.shape), F64), params
    )
    if loss == "softmax_cross_entropy":
        y = jnp.asarray(rng.integers(0, 3, shape[0]))
    elif loss == "mse":
        y = jnp.asarray(rng.standard_normal((shape[0], 3)), F64)
    else:
        y = jnp.asarray(rng.integers(0, 2, (shape[0], 3)), F64)
    return net, loss, params, x, y


def reference_hessian_diag(net, loss, params, x, y):
    flat, unravel = ravel_pytree(params)
    c = lambda f: reference.FORWARD[loss](reference.forward(net, unravel(f), x), y)  # noqa: E731
    return unravel(jnp.diag(jax.hessian(c)(flat)))


@pytest.mark.parametrize("name", list(NETS))
def test_hessian_diag_is_the_reference_hessians_diagonal(name):
    """Every parameter's entry equals the diagonal of jax.hessian of the reference loss; the
    curved activations make it differ from the GGN's diagonal (their σ'' terms), and the relus
    make them equal."""
    net, loss, params, x, y = _problem(name)
    got = jax.jit(curvature.hessian_diag(net, loss))(params, x, y)
    want = jax.jit(lambda *a: reference_hessian_diag(net, loss, *a))(params, x, y)
    scale = max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(want))
    assert_trees_close(got, want, F64, f"{name}: diag H", kind="network", scale_floor=scale)
    ggn = jax.jit(curvature.diag_ggn(net, loss))(params, x, y)
    gap = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(*map(jax.tree.leaves, (got, ggn)), strict=True)
    )
    if name == "relu and leaky relu":
        assert gap <= 1e-12 * scale, f"{name}: the piecewise-linear net's H and GGN differ"
    else:
        assert gap > 1e-3 * scale, f"{name}: the σ'' terms left no trace ({gap:.2g})"


# settings of the activations that have them
SETTINGS = {"leaky_relu": {"negative_slope": 0.2}, "elu": {"alpha": 0.7}}
VARIANTS = [(n, {}) for n in rules.SECOND_DERIVATIVES] + [
    ("gelu", {"approximate": True}),
    *SETTINGS.items(),
]


@pytest.mark.parametrize("dtype", [jnp.float32, F64])
@pytest.mark.parametrize(("name", "static"), VARIANTS)
def test_second_derivative_beside_each_activation(name, static, dtype):
    """σ'' from the rule's residuals against jax.grad(jax.grad(reference)) in float64, at
    moderate inputs and at |z| ≈ 1e3 (finite there, and equal to the reference's limit)."""
    rng = rng_for("second derivative", name, str(static), np.dtype(dtype).name)
    z = np.concatenate([3 * rng.standard_normal(64), [1e3, -1e3, 987.5, -1001.25]])
    z = jnp.asarray(z, dtype)
    _, res = rules.get_rule(name).fwd(z, **static)
    got = jax.jit(lambda r: rules.SECOND_DERIVATIVES[name](r, **static))(res)
    f = lambda v: reference.FORWARD[name](v, **static)  # noqa: E731
    want = jax.vmap(jax.grad(jax.grad(f)))(jnp.asarray(z, F64))
    assert bool(jnp.all(jnp.isfinite(got))), f"{name}: σ'' not finite"
    # leaky relu's residual is a bool mask: its zeros are weakly typed and take the dtype of
    # the delta they multiply
    assert got.dtype == dtype or (name == "leaky_relu" and got.weak_type)
    assert_close(got, want, dtype, f"{name} {static} σ''")


def test_second_derivative_table_covers_every_activation_layer():
    """Each elementwise activation layer of manual_bp.nn has its σ'' (softmax and log-softmax
    are not elementwise)."""
    kinds = {
        mnn.Sigmoid().kind,
        mnn.Tanh().kind,
        mnn.Relu().kind,
        mnn.LeakyRelu().kind,
        mnn.Elu().kind,
        mnn.Gelu().kind,
        mnn.Softplus().kind,
        mnn.Silu().kind,
    }
    assert kinds == set(rules.SECOND_DERIVATIVES)
    assert set(curvature.HESSIAN_KINDS) >= kinds | {"dense", "conv2d", "max_pool2d", "flatten"}


def test_hessian_diag_errors_name_the_layer():
    op = "hessian_diag"
    with pytest.raises(TypeError, match=rf"{op}: expected a manual_bp\.nn\.Layer"):
        curvature.hessian_diag("mlp", "mse")
    with pytest.raises(ValueError, match=rf"{op}: layer 'layer_norm_1' of kind 'layer_norm'"):
        curvature.hessian_diag(mnn.serial(mnn.Dense(3), mnn.LayerNorm()), "mse")
    with pytest.raises(ValueError, match=rf"{op}: the network .* keeps batch statistics"):
        curvature.hessian_diag(mnn.serial(mnn.Dense(3), mnn.BatchNorm()), "mse")
    with pytest.raises(ValueError, match=rf"{op}: no Hessian factor for the loss 'tanh'"):
        curvature.hessian_diag(mnn.mlp([3], 2), "tanh")
    net = mnn.mlp([3], 2)
    params = net.init(jax.random.key(0), (4, 5), F64)
    with pytest.raises(ValueError, match=r"params\['dense_0'\]\['w'\]: expected shape \(6, 3\)"):
        curvature.hessian_diag(net, "mse")(params, jnp.zeros((4, 6), F64), jnp.zeros((4, 2), F64))

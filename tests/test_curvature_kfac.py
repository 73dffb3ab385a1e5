"""KFAC and KFLR factors against the exact GGN block from the float64 reference.

Each test states a case where the Kronecker product is exact (one example; the expand and
reduce identities of Eschenhagen et al. 2023) and compares kron(A, G) with the GGN block of
vec([W; b]) built from ``jax.jacobian`` of the reference network and ``jax.hessian`` of the
reference loss.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest

import reference
from _compare import assert_close, rng_for
from manual_bp import curvature
from manual_bp import nn as mnn
from manual_bp.verify import tolerance_for

F64 = jnp.float64
NET_TOL = tolerance_for(F64, "network")


def ggn_block(net, loss, params, x, y, path, w="w", b="b"):
    """The exact GGN block of vec([W; b]) of weight ``w`` (and its bias ``b``, where the layer
    has it) of the layer at ``path`` (row-major, bias last), in one jitted program."""
    return jax.jit(lambda p, x, y: _ggn_block(net, loss, p, x, y, path, w, b))(params, x, y)


def _ggn_block(net, loss, params, x, y, path, w, b):
    out = reference.forward(net, params, x)
    m = out.size
    hess = jax.hessian(lambda o: reference.FORWARD[loss](o, y))(out).reshape(m, m)
    keys = path.split("/") if path else []
    leaf = params
    for k in keys:
        leaf = leaf[k]
    with_bias = b in leaf

    def fwd(wv, bv):
        p = jax.tree.map(lambda v: v, params)
        entry = p
        for k in keys:
            entry = entry[k]
        entry[w] = wv
        if with_bias:
            entry[b] = bv
        return reference.forward(net, p, x)

    bias = leaf[b] if with_bias else jnp.zeros((leaf[w].shape[-1],), leaf[w].dtype)
    jw, jb = jax.jacobian(fwd, argnums=(0, 1))(leaf[w], bias)
    o = leaf[w].shape[-1]
    joint = jnp.reshape(jw, (m, -1, o))
    if with_bias:
        joint = jnp.concatenate([joint, jnp.reshape(jb, (m, 1, o))], axis=1)
    joint = jnp.reshape(joint, (m, -1))
    return joint.T @ hess @ joint


def _init(net, x, rng):
    params = net.init(jax.random.key(0), x.shape, F64)
    return jax.tree.map(lambda p: p + 0.3 * jnp.asarray(rng.standard_normal(p.shape), F64), params)


def _kron(k):
    return jnp.kron(k.a, k.g)


def _labels(loss, rng, shape):
    if loss == "softmax_cross_entropy":
        return jnp.asarray(rng.integers(0, shape[-1], shape[:-1]))
    return jnp.asarray(rng.standard_normal(shape), F64)


def test_conv_patches_reproduce_the_layer():
    rng = rng_for("patches")
    layer = mnn.Conv2D(3, (2, 3), strides=(2, 1), padding="SAME", dilation=(1, 2))._replace(
        name="c"
    )
    x = jnp.asarray(rng.standard_normal((2, 5, 6, 2)), F64)
    p = _init(layer, x, rng)
    z, _ = layer.forward(p, x)
    patches = curvature.conv_patches(layer, x)
    w = jnp.reshape(p["w"], (-1, p["w"].shape[-1]))
    assert_close(patches @ w + p["b"][None, None, None], z, F64, "patches @ w + b")


@pytest.mark.parametrize("setting", curvature.SETTINGS)
def test_one_example_kflr_equals_the_ggn_block(setting):
    """N = P = 1: A ⊗ G is the exact GGN block, for every Dense layer of an MLP and for a
    Conv2D layer whose kernel covers the image (one output position)."""
    rng = rng_for("one example", setting)
    mlp = mnn.mlp([4], 3, "tanh")
    conv = mnn.serial(
        mnn.Conv2D(2, (3, 3), padding="VALID"), mnn.Tanh(), mnn.Flatten(), mnn.Dense(3)
    )
    for net, x in (
        (mlp, jnp.asarray(rng.standard_normal((1, 3)), F64)),
        (conv, jnp.asarray(rng.standard_normal((1, 3, 3, 2)), F64)),
    ):
        params = _init(net, x, rng)
        y = _labels("softmax_cross_entropy", rng, net.output_shape(x.shape))
        factors = curvature.kfac_factors(net, "softmax_cross_entropy", kind="kflr", setting=setting)
        got = jax.jit(factors)(params, x, y)
        assert set(got) == {p for p in mnn.by_layer(params) if not p.startswith("tanh")}
        for path, k in got.items():
            expected = ggn_block(net, "softmax_cross_entropy", params, x, y, path)
            assert_close(_kron(k), expected, F64, f"{path} {setting}", tol=NET_TOL)


def test_expand_is_exact_for_a_shared_linear_layer_with_mse():
    """A Dense layer over T positions and a Conv2D layer over pixels, as the output layer with
    the mean squared error: KFAC-expand (KFLR) is the exact block for N = 2 examples; reduce
    is not."""
    rng = rng_for("expand")
    cases = (
        (mnn.serial(mnn.Dense(3)), jnp.asarray(rng.standard_normal((2, 4, 2)), F64)),
        (
            mnn.serial(mnn.Conv2D(2, (2, 2), padding="VALID")),
            jnp.asarray(rng.standard_normal((2, 3, 3, 1)), F64),
        ),
    )
    for net, x in cases:
        params = _init(net, x, rng)
        y = _labels("mse", rng, net.output_shape(x.shape))
        (path,) = mnn.by_layer(params)
        expected = ggn_block(net, "mse", params, x, y, path)
        expand = jax.jit(curvature.kfac_factors(net, "mse", kind="kflr"))(params, x, y)
        assert_close(_kron(expand[path]), expected, F64, f"{path} expand", tol=NET_TOL)
        reduce = curvature.kfac_factors(net, "mse", kind="kflr", setting="reduce")(params, x, y)
        assert float(jnp.max(jnp.abs(_kron(reduce[path]) - expected))) > 1e-3


def test_reduce_is_exact_for_a_layer_averaged_over_its_positions():
    """Conv2D, then a mean over every pixel (global average pooling), then the mean squared
    error: KFAC-reduce (KFLR) is the exact block for N = 2; expand is not."""
    rng = rng_for("reduce")
    net = mnn.serial(
        mnn.Conv2D(2, (2, 2), padding="VALID"), mnn.AvgPool2D((3, 3), (3, 3)), mnn.Flatten()
    )
    x = jnp.asarray(rng.standard_normal((2, 4, 4, 1)), F64)
    params = _init(net, x, rng)
    y = _labels("mse", rng, net.output_shape(x.shape))
    path = "conv2d_0"
    expected = ggn_block(net, "mse", params, x, y, path)
    reduce = jax.jit(curvature.kfac_factors(net, "mse", kind="kflr", setting="reduce"))(
        params, x, y
    )
    assert_close(_kron(reduce[path]), expected, F64, "reduce", tol=NET_TOL)
    expand = curvature.kfac_factors(net, "mse", kind="kflr")(params, x, y)
    assert float(jnp.max(jnp.abs(_kron(expand[path]) - expected))) > 1e-3


def test_mc_kfac_converges_to_kflr():
    """G from sampled labels: the mean of R one-sample estimates is within 5 standard errors
    (their own spread over √R) of KFLR's G; A does not depend on the labels."""
    rng = rng_for("mc kfac")
    net = mnn.mlp([3], 3, "tanh")
    x = jnp.asarray(rng.standard_normal((4, 2)), F64)
    params = _init(net, x, rng)
    y = _labels("softmax_cross_entropy", rng, (4, 3))
    exact = curvature.kfac_factors(net, "softmax_cross_entropy", kind="kflr")(params, x, y)
    one = curvature.kfac_factors(net, "softmax_cross_entropy")
    draws = 2000
    keys = jax.random.split(jax.random.key(5), draws)
    est = jax.jit(jax.vmap(lambda k: one(params, x, y, k)))(keys)
    for path, k in exact.items():
        g = est[path].g
        bound = 5 * jnp.std(g, axis=0) / math.sqrt(draws) + 1e-12
        assert bool(jnp.all(jnp.abs(jnp.mean(g, axis=0) - k.g) <= bound)), path
        assert_close(est[path].a[0], k.a, F64, f"{path}: A", tol=NET_TOL)


def test_kfac_errors_name_the_op():
    net = mnn.mlp([3], 3)
    with pytest.raises(ValueError, match=r"kfac_factors: kind must be one of \('kfac', 'kflr'\)"):
        curvature.kfac_factors(net, "mse", kind="kfra")
    with pytest.raises(ValueError, match=r"kfac_factors: setting must be one of"):
        curvature.kfac_factors(net, "mse", setting="sum")
    bn = mnn.serial(mnn.Dense(3), mnn.BatchNorm())
    with pytest.raises(ValueError, match=r"kfac_factors: the network .* keeps batch statistics"):
        curvature.kfac_factors(bn, "mse")
    x = jnp.zeros((2, 2), F64)
    params = net.init(jax.random.key(0), x.shape, F64)
    with pytest.raises(ValueError, match=r"kfac_factors: the Monte-Carlo estimate .* needs a key"):
        curvature.kfac_factors(net, "mse")(params, x, jnp.zeros((2, 3), F64))
    grouped = mnn.Conv2D(2, (1, 1), groups=2)._replace(name="g")
    with pytest.raises(ValueError, match="conv_patches: layer 'g' has groups=2"):
        curvature.conv_patches(grouped, jnp.zeros((1, 2, 2, 2), F64))

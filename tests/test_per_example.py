"""Per-example gradients from the handwritten rules under vmap, against jax.grad of the
reference example by example; the statistics built on them; DP-SGD clipping."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from _compare import assert_close, assert_trees_close, rng_for
from manual_bp import nn, value_and_grad
from manual_bp.per_example import clip_per_example, gradient_statistics, per_example_grads

F64 = jnp.float64
LOSS = "softmax_cross_entropy"


@functools.cache
def _setup():
    net = nn.serial(nn.Dense(6), nn.Tanh(), nn.Dropout(0.3), nn.Dense(3))
    rng = rng_for("per-example")
    x = jnp.asarray(rng.standard_normal((7, 4)), F64)
    y = jnp.asarray(rng.integers(0, 3, 7), jnp.int32)
    params = net.init(jax.random.key(0), x.shape, F64)
    return net, params, x, y


def test_per_example_grads_match_the_reference_one_example_at_a_time():
    net, params, x, y = _setup()
    key = jax.random.key(4)
    losses, grads = jax.jit(per_example_grads(net, LOSS))(params, x, y, key)
    ref = reference.value_and_grad(net, LOSS)
    for n in range(x.shape[0]):
        c, g = ref(params, x[n : n + 1], y[n : n + 1], jax.random.fold_in(key, n))
        assert_close(losses[n], c, F64, f"loss {n}", tol=1e-12)
        mine = jax.tree.map(lambda a, n=n: a[n], grads)
        assert_trees_close(mine, g, F64, f"grad of example {n}", tol=1e-10)


def test_statistics_mean_is_the_batch_gradient_and_variance_is_nonnegative():
    net, params, x, y = _setup()
    stats = jax.jit(gradient_statistics(net, LOSS, train=False))(params, x, y)
    c, batch = value_and_grad(net, LOSS, train=False)(params, x, y)
    assert_close(stats["loss"], c, F64, "loss", tol=1e-12)
    assert_trees_close(stats["mean"], batch, F64, "mean of per-example grads", tol=1e-10)
    _, grads = per_example_grads(net, LOSS, train=False)(params, x, y)
    g = np.asarray(grads["dense_0"]["w"])
    np.testing.assert_allclose(stats["variance"]["dense_0"]["w"], g.var(axis=0), rtol=1e-10)
    np.testing.assert_allclose(stats["second_moment"]["dense_0"]["w"], (g**2).mean(0), rtol=1e-10)
    flat = np.concatenate([np.reshape(a, (7, -1)) for a in jax.tree.leaves(grads)], axis=1)
    np.testing.assert_allclose(stats["norms"], np.linalg.norm(flat, axis=1), rtol=1e-10)
    assert np.all(np.asarray(stats["variance"]["dense_3"]["w"]) > 0)


def test_clipping_bounds_every_example_and_leaves_small_ones_alone():
    net, params, x, y = _setup()
    _, grads = per_example_grads(net, LOSS, train=False)(params, x, y)
    _, norms = clip_per_example(grads, 1e9)
    limit = float(np.median(norms))
    clipped, norms2 = clip_per_example(grads, limit)
    np.testing.assert_array_equal(norms, norms2)
    scale = np.minimum(1.0, limit / np.asarray(norms))
    expected = np.mean(np.asarray(grads["dense_3"]["w"]) * scale[:, None, None], axis=0)
    np.testing.assert_allclose(clipped["dense_3"]["w"], expected, rtol=1e-12)
    assert np.any(scale < 1) and np.any(scale == 1)


def test_batch_norm_networks_and_bad_input_are_refused():
    with pytest.raises(ValueError, match=r"batch statistics.*no per-example gradient"):
        per_example_grads(nn.serial(nn.Dense(3), nn.BatchNorm()), LOSS)
    net, params, x, y = _setup()
    with pytest.raises(
        ValueError, match=r"y must have one entry per example \(7\), got shape \(6,\)"
    ):
        per_example_grads(net, LOSS, train=False)(params, x, y[:6])
    with pytest.raises(ValueError, match="max_norm must be a positive number"):
        clip_per_example({}, 0.0)

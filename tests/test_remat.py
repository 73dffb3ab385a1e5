"""Tape policies: nn.remat and nn.remat_serial give the gradients and deltas of the full tape
(dropout masks and batch-norm state included) and keep the layer's description."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from _compare import assert_matches_reference, rng_for
from manual_bp import nn, value_and_grad, value_grad_and_deltas

LOSS = "softmax_cross_entropy"


def _stack():
    layers = []
    for i in range(6):
        layers += [nn.Dense(8, name=f"d{i}"), nn.Tanh(name=f"t{i}")]
    return layers


def test_remat_gives_the_full_tapes_gradients_and_deltas_with_dropout_and_batch_norm():
    body = nn.serial(nn.Dense(8), nn.BatchNorm(), nn.Dropout(0.5), nn.Tanh(), nn.Dense(3))
    full = nn.serial(body)
    light = nn.serial(nn.remat(body))
    assert light.children[0].kind == body.kind and light.children[0].children == body.children
    rng = rng_for("remat")
    x = jnp.asarray(rng.standard_normal((5, 4)), jnp.float64)
    y = jnp.asarray(rng.integers(0, 3, size=(5,)), jnp.int32)
    params = full.init(jax.random.key(0), x.shape, jnp.float64)
    state = full.init_state(jax.random.key(0), x.shape, jnp.float64)
    key = jax.random.key(7)
    # op by op (no jit: XLA may fuse two different programs differently), bit for bit
    got = [
        value_and_grad(net, LOSS, has_state=True)(params, state, x, y, key) for net in (full, light)
    ]
    jax.tree.map(np.testing.assert_array_equal, got[0], got[1])


def test_remat_serial_matches_the_full_tape_and_the_reference():
    full = nn.serial(*_stack())
    light = nn.remat_serial(*_stack(), every=3)
    rng = rng_for("remat-serial")
    x = jnp.asarray(rng.standard_normal((4, 8)), jnp.float64)
    y = jnp.asarray(rng.integers(0, 8, size=(4,)), jnp.int32)
    params = light.init(jax.random.key(1), x.shape, jnp.float64)
    got = jax.jit(value_grad_and_deltas(light, LOSS))(params, x, y)
    want = jax.jit(reference.value_grad_and_deltas(light, LOSS))(params, x, y)
    assert_matches_reference("remat_serial", got, want, jnp.float64)
    flat = {k: v for g in params.values() for k, v in g.items()}
    # op by op (no jit: XLA may fuse two different programs differently), bit for bit
    got = value_and_grad(light, LOSS)(params, x, y)
    c_full, g_full = value_and_grad(full, LOSS)(flat, x, y)
    np.testing.assert_array_equal(got[0], c_full)
    for group in params:
        for k in params[group]:
            jax.tree.map(np.testing.assert_array_equal, got[1][group][k], g_full[k])


def test_remat_rejects_bad_input():
    with pytest.raises(TypeError, match=r"remat: expected a manual_bp.nn.Layer, got str"):
        nn.remat("dense")
    with pytest.raises(ValueError, match=r"remat_serial: every must be a positive"):
        nn.remat_serial(nn.Tanh(), every=0)

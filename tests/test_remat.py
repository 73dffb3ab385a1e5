"""Tape policies: nn.remat and nn.remat_serial give the gradients and deltas of the full tape
(dropout masks and batch-norm state included) and keep the layer's description."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from _compare import assert_matches_reference, assert_trees_close, rng_for
from manual_bp import nn, value_and_grad, value_and_jvp, value_grad_and_deltas

LOSS = "softmax_cross_entropy"


def _stack(n=6, width=8):
    layers = []
    for i in range(n):
        layers += [nn.Dense(width, name=f"d{i}"), nn.Tanh(name=f"t{i}")]
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
    # op by op (no jit, the recomputation's conditional included: XLA may fuse two different
    # programs differently), bit for bit
    with jax.disable_jit():
        got = [
            value_and_grad(net, LOSS, has_state=True)(params, state, x, y, key)
            for net in (full, light)
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
    # op by op (no jit, the recomputation's conditional included), bit for bit
    with jax.disable_jit():
        got = value_and_grad(light, LOSS)(params, x, y)
        c_full, g_full = value_and_grad(full, LOSS)(flat, x, y)
    np.testing.assert_array_equal(got[0], c_full)
    for group in params:
        for k in params[group]:
            jax.tree.map(np.testing.assert_array_equal, got[1][group][k], g_full[k])


def test_compiled_remat_recomputes_instead_of_keeping_the_tape():
    """Under jit the recomputation survives XLA's optimizations (an optimization barrier alone
    is expanded before CSE on XLA:CPU, which merges the recomputation back into the forward):
    a 16-layer tanh stack of 2048 × 64 activations in groups of 4 needs under 75 % of the full
    tape's temporary memory, with the gradients and the directional derivative of the full
    tape, jitted, to float32 rounding."""
    full = nn.serial(*_stack(16, 64))
    light = nn.remat_serial(*_stack(16, 64), every=4)
    rng = rng_for("remat-compiled")
    x = jnp.asarray(rng.standard_normal((2048, 64)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 64, size=(2048,)), jnp.int32)
    params = light.init(jax.random.key(2), x.shape)
    flat = {k: v for g in params.values() for k, v in g.items()}
    fn_light, fn_full = jax.jit(value_and_grad(light, LOSS)), jax.jit(value_and_grad(full, LOSS))

    def temp(fn, p):
        return fn.lower(p, x, y).compile().memory_analysis().temp_size_in_bytes

    t_light, t_full = temp(fn_light, params), temp(fn_full, flat)
    assert t_light < 0.75 * t_full, (t_light, t_full)
    c, grads = fn_light(params, x, y)
    c_full, g_full = fn_full(flat, x, y)
    regrouped = {group: {k: g_full[k] for k in params[group]} for group in params}
    assert_trees_close(
        (c, grads), (c_full, regrouped), jnp.float32, "remat_serial grads", kind="network"
    )
    dparams = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    dflat = {k: v for g in dparams.values() for k, v in g.items()}
    got = jax.jit(value_and_jvp(light, LOSS))(params, x, y, dparams)
    want = jax.jit(value_and_jvp(full, LOSS))(flat, x, y, dflat)
    assert_trees_close(got, want, jnp.float32, "remat_serial jvp", kind="network")


def test_remat_rejects_bad_input():
    with pytest.raises(TypeError, match=r"remat: expected a manual_bp.nn.Layer, got str"):
        nn.remat("dense")
    with pytest.raises(ValueError, match=r"remat_serial: every must be a positive"):
        nn.remat_serial(nn.Tanh(), every=0)

"""Conventions at non-differentiable points and behaviour at ties, masks and extremes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import reference
from _compare import assert_close, random_cotangent, rng_for
from manual_bp import RULES

DTYPES = (jnp.float64, jnp.float32)


def _bwd(name, z, g, **static):
    out, res = RULES[name].fwd(z, **static)
    return out, RULES[name].bwd(res, g, **static)[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("name", "static", "slope_at_zero"),
    [
        ("relu", {}, 0.0),
        ("leaky_relu", {"negative_slope": 0.2}, 0.2),
        ("elu", {"alpha": 0.5}, 0.5),
        ("gelu", {}, 0.5),
        ("gelu", {"approximate": True}, 0.5),
        ("silu", {}, 0.5),
        ("softplus", {}, 0.5),
        ("sigmoid", {}, 0.25),
        ("tanh", {}, 1.0),
    ],
)
def test_derivative_at_zero(name, static, slope_at_zero, dtype):
    """relu'(0) = 0; leaky_relu'(0) = s and elu'(0) = α (the left side); smooth ones exact."""
    z = jnp.asarray([-2.0, 0.0, 3.0], dtype)
    g = random_cotangent(rng_for("kink", name), z)
    out, dz = _bwd(name, z, g, **static)
    assert float(out[1]) == pytest.approx(float(RULES[name](jnp.zeros((), dtype), **static)))
    assert float(dz[1]) == pytest.approx(slope_at_zero * float(g[1]), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_kink_is_between_one_sided_differences(dtype):
    z = jnp.zeros((3,), dtype)
    g = jnp.abs(random_cotangent(rng_for("relu0"), z)) + 0.5
    _, dz = _bwd("relu", z, g)
    # the one-sided derivatives of g·max(z, 0) at 0 are 0 and g
    assert np.all((np.asarray(dz) >= 0.0) & (np.asarray(dz) <= np.asarray(g)))
    assert np.all(np.asarray(dz) == 0.0), "convention relu'(0) = 0"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_tied_maxima(name, dtype):
    """Tied maxima (a constant row) are smooth points: the rule equals jax.vjp and float64
    finite differences there."""
    z = jnp.asarray([[1.5, 1.5, 1.5, 1.5], [2.0, 2.0, -1.0, 0.5]], dtype)
    out, res = RULES[name].fwd(z)
    g = random_cotangent(rng_for("tie", name), out)
    (dz,) = RULES[name].bwd(res, g)
    _, vjp = jax.vjp(reference.FORWARD[name], z)
    assert_close(dz, vjp(g)[0], dtype, f"{name} at tied maxima", scale_floor=1.0)
    if name == "softmax":
        assert_close(out[0], jnp.full((4,), 0.25, dtype), dtype, "uniform at a tie")
    if dtype == jnp.float64:
        jax.test_util.check_vjp(
            RULES[name],
            lambda z: (RULES[name](z), lambda g: RULES[name].bwd(res, g)),
            (z,),
            atol=1e-7,
            rtol=1e-7,
            eps=1e-6,
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_logits_get_zero_probability_and_finite_gradients(dtype):
    z = jnp.asarray([[0.3, -jnp.inf, 1.2, -jnp.inf], [-jnp.inf, 2.0, -jnp.inf, -jnp.inf]], dtype)
    g = random_cotangent(rng_for("mask"), z)
    p, dp = _bwd("softmax", z, g)
    assert np.all(np.asarray(p)[np.isinf(np.asarray(z))] == 0)
    assert float(p[1, 1]) == 1.0
    assert np.all(np.isfinite(np.asarray(dp)))
    y, dy = _bwd("log_softmax", z, g)
    assert np.all(np.isfinite(np.asarray(dy)))
    # log_softmax passes the cotangent straight through at a masked entry (its softmax is 0)
    mask = np.isinf(np.asarray(z))
    np.testing.assert_array_equal(np.asarray(dy)[mask], np.asarray(g)[mask])
    del y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "softplus", "silu", "gelu", "elu"])
def test_saturation_at_1e3(name, dtype):
    """At ±1e3 the derivative is exactly its limit (0 or 1), never NaN."""
    z = jnp.asarray([-1e3, 1e3], dtype)
    out, dz = _bwd(name, z, jnp.asarray([0.7, 0.7], dtype))
    assert np.all(np.isfinite(np.asarray(out))) and np.all(np.isfinite(np.asarray(dz)))
    limits = {
        "sigmoid": (0, 0),
        "tanh": (0, 0),
        "softplus": (0, 1),
        "silu": (0, 1),
        "gelu": (0, 1),
        "elu": (0, 1),
    }[name]
    np.testing.assert_allclose(np.asarray(dz, np.float64), 0.7 * np.asarray(limits), atol=1e-30)


def test_cross_entropy_with_an_out_of_range_label_is_nan_not_garbage():
    logits = jnp.zeros((2, 3), jnp.float32)
    c = RULES["softmax_cross_entropy"](logits, jnp.asarray([0, 3], jnp.int32))
    assert np.isnan(float(c))


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_stay_finite_at_1e3_logits(dtype):
    logits = jnp.asarray([[1e3, -1e3, 0.0], [-1e3, 1e3, 5.0]], dtype)
    for name, labels in (
        ("softmax_cross_entropy", jnp.asarray([1, 0], jnp.int32)),
        ("sigmoid_binary_cross_entropy", jnp.asarray([[1, 0, 1], [1, 0, 0]], dtype)),
    ):
        c, res = RULES[name].fwd(logits, labels)
        dz = RULES[name].bwd(res, jnp.asarray(0.9, dtype))[0]
        assert np.isfinite(float(c)) and float(c) > 100, f"{name}: wrong loss {c}"
        assert np.all(np.isfinite(np.asarray(dz)))

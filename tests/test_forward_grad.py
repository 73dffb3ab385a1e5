"""Forward gradients are unbiased: the mean over many draws is the true gradient.

Float64, fixed seeds, under jit. The tolerance comes from the sample count: every entry of the
mean must lie within 5 standard errors (the draws' own standard deviation / √S) of the
gradient from the handwritten backward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import manual_bp
from _compare import rng_for
from manual_bp import forward_grad, nn

F64 = jnp.float64
SAMPLES = 4000


def _setup():
    rng = rng_for("forward-grad")
    net = nn.serial(nn.Dense(3), nn.Tanh(), nn.Dense(2))
    x = jnp.asarray(rng.standard_normal((5, 3)), F64)
    y = jnp.asarray(rng.standard_normal((5, 2)), F64)
    params = net.init(jax.random.PRNGKey(3), x.shape, F64)
    return net, params, x, y


@pytest.mark.parametrize("estimator", ["weight_perturbed", "activity_perturbed"])
def test_forward_gradient_is_unbiased(estimator):
    net, params, x, y = _setup()
    _, true = manual_bp.value_and_grad(net, "mse")(params, x, y)
    f = getattr(forward_grad, estimator)(net, "mse")
    keys = jax.random.split(jax.random.PRNGKey(0), SAMPLES)
    cs, draws = jax.jit(jax.vmap(lambda k: f(params, x, y, k)))(keys)
    assert np.allclose(np.asarray(cs), float(manual_bp.value_and_grad(net, "mse")(params, x, y)[0]))
    for (path, d), g in zip(
        jax.tree_util.tree_leaves_with_path(draws), jax.tree.leaves(true), strict=True
    ):
        d, g = np.asarray(d), np.asarray(g)
        mean, err = d.mean(0), d.std(0, ddof=1) / np.sqrt(SAMPLES)
        assert np.all(err > 0), f"{jax.tree_util.keystr(path)}: no spread, nothing estimated"
        z = np.abs(mean - g) / err
        assert np.all(z < 5), f"{estimator}{jax.tree_util.keystr(path)}: z-scores {z.max():.1f}"


def test_activity_perturbed_needs_a_serial_network():
    with pytest.raises(TypeError, match=r"activity_perturbed: expected a manual_bp\.nn\.serial"):
        forward_grad.activity_perturbed(nn.Dense(3), "mse")

"""Verify a layer of your own: a PReLU with a learned slope, from a rule, inside a network.

PReLU is y = x for x > 0 and y = α x otherwise, with one learned slope α per feature. Its
backward by hand: dx = g · (1 if x > 0 else α), and dα = Σ_batch g · x over the entries with
x <= 0 only — forgetting that mask is the bug planted here.

1. ``nn.from_rule`` makes a layer of the rule (α is its parameter, drawn by our ``init``);
2. ``check_network`` checks it inside ``serial(Dense, PReLU, Dense)``: the reference has no
   PReLU, so the layer's own forward, differentiated by ``jax.vjp``, and float64 finite
   differences of the loss stand in for it — the planted bug is named by layer and parameter;
3. the fixed rule passes;
4. the same rule is audited as ``manual-bp verify --module examples/custom_layer.py`` does: this
   file's ``RULES`` and ``ROWS`` in every dtype, on ordinary inputs and at |x| ≈ 1e3.

Run it with ``python examples/custom_layer.py``.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import manual_bp
from manual_bp import nn
from manual_bp.verify import Row
from manual_bp.verify.audit import audit_module
from manual_bp.verify.table import F32, F64, unary


def _feature(alpha, ndim):
    """α (D,) laid along the last axis of an ndim-array, the broadcast written out."""
    return jnp.reshape(alpha, (1,) * (ndim - 1) + alpha.shape)


def prelu_fwd(x, alpha):
    """y = x if x > 0 else α x; the residuals are x and α."""
    return jnp.where(x > 0, x, _feature(alpha, x.ndim) * x), (x, alpha)


def prelu_bwd(res, g):
    """dx = g (1 if x > 0 else α); dα = Σ_batch g x [x <= 0]."""
    x, alpha = res
    dx = g * jnp.where(x > 0, 1.0, _feature(alpha, x.ndim))
    return dx, jnp.sum(jnp.where(x > 0, 0.0, g * x), axis=tuple(range(x.ndim - 1)))


def prelu_bwd_unmasked(res, g):
    """The planted bug: dα summed over every entry, not only where x <= 0."""
    x, alpha = res
    dx = g * jnp.where(x > 0, 1.0, _feature(alpha, x.ndim))
    return dx, jnp.sum(g * x, axis=tuple(range(x.ndim - 1)))


def init_slope(key, input_shape, dtype):
    """α starts at 0.25 for every feature (He et al. 2015)."""
    del key
    return {"alpha": jnp.full(input_shape[-1:], 0.25, dtype)}


def prelu_args(rng, shape, dtype, domain):
    """The audit's inputs: x of ``shape`` and a slope per feature in [0.05, 0.5]."""
    (x,) = unary(rng, shape, dtype, domain)
    return x, jnp.asarray(rng.uniform(0.05, 0.5, size=shape[-1:]), dtype)


RULES = {"prelu": manual_bp.Rule("prelu", prelu_fwd, prelu_bwd)}
"""The rules ``manual-bp verify --module`` audits, by name."""

ROWS = (Row("prelu", prelu_args, ((6, 4), (2, 3, 5)), diff=(0, 1), dtypes=(F64, F32)),)
"""How to call them: x and α drawn per shape, both differentiable, in float64 and float32."""


def check(bwd) -> manual_bp.NetworkReport:
    rule = manual_bp.Rule("prelu", prelu_fwd, bwd)
    net = nn.serial(
        nn.Dense(8), nn.from_rule(rule, params=("alpha",), init=init_slope), nn.Dense(3)
    )
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, 4)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 16), jnp.int32)
    params = net.init(jax.random.key(0), x.shape)
    return manual_bp.check_network(net, "softmax_cross_entropy", params, x, y)


def main() -> int:
    failures = 0
    planted = check(prelu_bwd_unmasked)
    print(f"--- planted bug: dα without the x <= 0 mask ---\n{planted}\n")
    if planted.ok or (planted.culprit, planted.parameter) != ("prelu_1", "alpha"):
        print("the planted bug was not named by layer and parameter", file=sys.stderr)
        failures += 1
    fixed = check(prelu_bwd)
    print(f"--- fixed ---\n{fixed}\n")
    failures += not fixed.ok
    print("--- manual-bp verify --module examples/custom_layer.py ---")
    for r in audit_module(sys.modules[__name__], shapes=None):
        print(
            f"{r['name']:<8} {r['dtype']:<8} {r['checks']} checks  max rel {r['max_rel']:.3g}  "
            + ("ok" if r["ok"] else "FAIL")
        )
        failures += not r["ok"]
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

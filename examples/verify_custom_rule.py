"""Verify a backward rule of your own: a correct one passes, wrong ones are diagnosed.

The rule here is log-cosh, C(z) = log cosh z, a smooth absolute value used as a robust loss.
Its forward is written stably as |z| + log1p(e^{−2|z|}) − log 2 (cosh overflows for |z| > 89
in float32); its derivative is tanh z.

``manual_bp.check_rule`` compares the backward with ``jax.vjp`` of the forward and with float64
finite differences, on seeded random cotangents, and names what kind of error a wrong backward
makes. Run it with ``python examples/verify_custom_rule.py``.
"""

from __future__ import annotations

import math
import sys

import jax.numpy as jnp
import numpy as np

import manual_bp


def log_cosh_fwd(z):
    """y = log cosh z = |z| + log1p(e^{−2|z|}) − log 2; the residual is z."""
    a = jnp.abs(z)
    return a + jnp.log1p(jnp.exp(-2 * a)) - math.log(2.0), (z,)


def log_cosh_bwd(res, g):
    """dz = g · tanh z."""
    (z,) = res
    return (g * jnp.tanh(z),)


def sinh_over_cosh_bwd(res, g):
    """tanh written as sinh/cosh: both overflow to inf in float32 for |z| > 89."""
    (z,) = res
    return (g * jnp.sinh(z) / jnp.cosh(z),)


def flipped_bwd(res, g):
    """The derivative of −log cosh: a sign lost on paper."""
    (z,) = res
    return (-g * jnp.tanh(z),)


def main() -> int:
    z = jnp.asarray(np.random.default_rng(0).normal(scale=40.0, size=(4, 6)), jnp.float32)
    cases = [
        ("correct", log_cosh_bwd, None),
        ("sinh/cosh", sinh_over_cosh_bwd, "precision-only"),
        ("sign lost", flipped_bwd, "sign flip"),
    ]
    failures = 0
    for label, bwd, expected in cases:
        rule = manual_bp.Rule("log_cosh", log_cosh_fwd, bwd)
        report = manual_bp.check_rule(rule, z)
        print(f"--- {label} ---\n{report}\n")
        diagnosed = expected is None and report.ok
        diagnosed = diagnosed or (expected and any(expected in d for d in report.diagnoses))
        if not diagnosed:
            print(f"unexpected result for {label!r}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

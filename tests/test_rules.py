"""Every registered rule, every row of the table, every dtype, shape and input domain.

For each case:
* ``bwd`` equals ``jax.vjp`` of the rule's own ``fwd`` with a random cotangent;
* ``fwd`` equals the reference forward, and ``bwd`` equals ``jax.vjp`` of the reference;
* in float64, central finite differences agree (``jax.test_util.check_vjp``);
* outputs and cotangents keep the primals' dtypes and shapes; non-differentiable primals get None;
* everything above runs under ``jax.jit``; eager calls agree with it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import reference
from _compare import assert_close, random_cotangent, rng_for
from manual_bp import RULES
from rule_table import BF16, F64, ROWS

CASES = [
    pytest.param(row, dtype, shape, domain, id=f"{row.id}-{np.dtype(dtype).name}-{shape}-{domain}")
    for row in ROWS
    for dtype in row.dtypes
    for shape in row.shapes
    for domain in row.domains()
    if not (domain == "extreme" and dtype == BF16)
]


def _primals(row, dtype, shape, domain):
    return row.make(rng_for(row.id, shape, np.dtype(dtype).name, domain), shape, dtype, domain)


def _vjp_of(fn, row, primals, ct):
    """Cotangents of the differentiable primals of ``fn(*primals, **row.static)`` by jax.vjp."""

    def f(*diff):
        full = list(primals)
        for i, d in zip(row.diff, diff, strict=True):
            full[i] = d
        return fn(*full, **row.static)

    out, vjp = jax.vjp(f, *(primals[i] for i in row.diff))
    return out, vjp(ct)


@functools.cache
def _checker(row):
    """One jitted computation per row: the rule's fwd/bwd, jax.vjp of its fwd and of the
    reference. Compiled once per shape and dtype and shared by the input domains."""
    rule = RULES[row.rule]

    @jax.jit
    def run(primals, ct):
        out, res = rule.fwd(*primals, **row.static)
        cts = rule.bwd(res, ct, **row.static)
        own = _vjp_of(lambda *a, **k: rule.fwd(*a, **k)[0], row, primals, ct)
        ref = _vjp_of(reference.FORWARD[row.rule], row, primals, ct)
        return out, cts, own, ref

    return run


def _all_results(row, primals, ct):
    return _checker(row)(primals, ct)


@pytest.mark.parametrize(("row", "dtype", "shape", "domain"), CASES)
def test_bwd_matches_vjp_and_reference(row, dtype, shape, domain):
    primals = _primals(row, dtype, shape, domain)
    out_struct = jax.eval_shape(lambda *p: RULES[row.rule].fwd(*p, **row.static)[0], *primals)
    ct = random_cotangent(rng_for("ct", row.id, shape, domain), out_struct)
    out, cts, (own_out, own_cts), (ref_out, ref_cts) = _all_results(row, primals, ct)
    g = float(jnp.max(jnp.abs(ct.astype(jnp.float32))))
    assert out.dtype == dtype, f"{row.id}: output dtype {out.dtype}, expected {np.dtype(dtype)}"

    assert isinstance(cts, tuple) and len(cts) == len(primals), (
        f"{row.id}: bwd must return one cotangent per primal ({len(primals)}), got {cts!r}"
    )
    for i, (c, p) in enumerate(zip(cts, primals, strict=True)):
        if i not in row.diff:
            assert c is None, f"{row.id}: non-differentiable primal {i} must get None"
            continue
        assert c.shape == p.shape and c.dtype == p.dtype, (
            f"{row.id}: cotangent {i} is {c.shape} {c.dtype}, primal is {p.shape} {p.dtype}"
        )
    if domain in ("extreme", "masked"):
        # |x| ~ 1e3 keeps everything finite; -inf logits keep every cotangent finite.
        for c in (out, *cts) if domain == "extreme" else cts:
            if c is not None:
                assert bool(jnp.all(jnp.isfinite(c))), f"{row.id}: non-finite in {domain} domain"

    # (1) against jax.vjp of the rule's own forward
    assert_close(out, own_out, dtype, f"{row.id} fwd (vjp trace)")
    for i, expected in zip(row.diff, own_cts, strict=True):
        if domain == "normal":
            assert np.any(np.asarray(expected, np.float64) != 0), f"{row.id}: vacuous zero"
        assert_close(
            cts[i], expected, dtype, f"{row.id} d/primal{i} vs jax.vjp(fwd)", scale_floor=g
        )

    # (2) against the independent reference forward and jax.vjp of it
    assert_close(out, ref_out, dtype, f"{row.id} fwd vs reference")
    for i, expected in zip(row.diff, ref_cts, strict=True):
        assert_close(
            cts[i], expected, dtype, f"{row.id} d/primal{i} vs jax.vjp(reference)", scale_floor=g
        )


FD_CASES = [
    pytest.param(row, shape, id=f"{row.id}-{shape}") for row in ROWS for shape in row.shapes
]


@pytest.mark.parametrize(("row", "shape"), FD_CASES)
def test_finite_differences_float64(row, shape):
    rule = RULES[row.rule]
    primals = _primals(row, F64, shape, "normal")

    def f(*diff):
        full = list(primals)
        for i, d in zip(row.diff, diff, strict=True):
            full[i] = d
        return rule.fwd(*full, **row.static)[0]

    def f_vjp(*diff):
        full = list(primals)
        for i, d in zip(row.diff, diff, strict=True):
            full[i] = d
        out, res = rule.fwd(*full, **row.static)
        return out, lambda g: tuple(rule.bwd(res, g, **row.static)[i] for i in row.diff)

    jax.test_util.check_vjp(
        f,
        f_vjp,
        tuple(primals[i] for i in row.diff),
        atol=1e-6,
        rtol=1e-6,
        eps=1e-5,
        err_msg=row.id,
    )


EAGER_CASES = [pytest.param(row, id=row.id) for row in ROWS]


@pytest.mark.parametrize("row", EAGER_CASES)
def test_eager_matches_jit(row):
    """The table runs under jit; the same rule called eagerly (op by op) gives the same."""
    rule = RULES[row.rule]
    primals = _primals(row, jnp.float32, row.shapes[-1], "normal")
    out, res = rule.fwd(*primals, **row.static)
    ct = random_cotangent(rng_for("eager", row.id), out)
    cts = rule.bwd(res, ct, **row.static)
    jit_out, jit_cts, _, _ = _all_results(row, primals, ct)
    assert_close(out, jit_out, jnp.float32, f"{row.id} eager fwd")
    for i in row.diff:
        assert_close(cts[i], jit_cts[i], jnp.float32, f"{row.id} eager d/primal{i}")

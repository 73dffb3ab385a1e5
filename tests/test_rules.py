"""Every registered rule, every row of the table, every dtype, shape and input domain.

For each case:
* ``bwd`` equals ``jax.vjp`` of the rule's own ``fwd`` with a random cotangent;
* ``fwd`` equals the reference forward, and ``bwd`` equals ``jax.vjp`` of the reference;
* in float64, central finite differences agree (``jax.test_util.check_vjp``);
* outputs and cotangents keep the primals' dtypes and shapes; non-differentiable primals get None;
* everything above runs under ``jax.jit``; eager calls agree with it.

In forward mode, along seeded random tangents t (in the same jitted evaluation of the row):
* ``jvp`` equals ``jax.jvp`` of the rule's own ``fwd`` and of the reference forward;
* the adjoint identity ⟨jvp(t), c⟩ = ⟨t, bwd(c)⟩ holds (the two handwritten halves against
  each other, no autodiff involved);
* in float64, central differences of ``fwd`` along t agree (kink-aware).
A rule without a ``jvp`` (reverse-only) skips these.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from _compare import as_f64, assert_close
from manual_bp import RULES
from manual_bp.verify import tolerance_for
from manual_bp.verify.forward_mode import adjoint_comparison, jvp_floor
from manual_bp.verify.oracles import finite_difference_comparison
from rule_table import (
    F32,
    F64,
    ROWS,
    TANGENTS,
    case_inputs,
    cases,
    out_struct,
    primals_for,
    row_evaluator,
    row_results,
    with_diff,
)


def _grouped(row, *values, id):
    """A case of ``row``, run next to the row's other cases (tests/conftest.py), so that an
    xdist worker handed one of them mostly gets them all and compiles the row's program once."""
    return pytest.param(row, *values, id=id, marks=pytest.mark.together(row.id))


CASES = [
    _grouped(row, dtype, shape, domain, id=f"{row.id}-{np.dtype(dtype).name}-{shape}-{domain}")
    for row in ROWS
    for dtype, shape, domain in cases(row)
]


@pytest.mark.parametrize(("row", "dtype", "shape", "domain"), CASES)
def test_bwd_matches_vjp_and_reference(row, dtype, shape, domain):
    primals, ct = case_inputs(row, dtype, shape, domain)
    out, cts, own_out, own_cts, ref_out, ref_cts = row_results(row)[dtype, shape, domain][:6]
    g = float(np.max(np.abs(as_f64(ct))))
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
                assert np.all(np.isfinite(as_f64(c))), f"{row.id}: non-finite in {domain} domain"

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


def _stacked(x):
    return None if x is None else jnp.broadcast_to(x, (TANGENTS, *x.shape))


@pytest.mark.parametrize(("row", "dtype", "shape", "domain"), CASES)
def test_jvp_matches_jvp_reference_and_bwd(row, dtype, shape, domain):
    """The jvp against ``jax.jvp`` of the rule's own fwd and of the reference, and against its
    own bwd through the adjoint identity (the same jitted evaluation as the test above)."""
    if RULES[row.rule].jvp is None:
        pytest.skip(f"{row.rule} has no jvp (reverse-only)")
    _, ct = case_inputs(row, dtype, shape, domain)
    r = row_results(row)[dtype, shape, domain]
    assert r.jvp.shape == (TANGENTS, *r.out.shape) and r.jvp.dtype == r.out.dtype, (
        f"{row.id}: jvp is {r.jvp.shape} {r.jvp.dtype}, expected {(TANGENTS, *r.out.shape)} "
        f"{r.out.dtype}"
    )
    if domain in ("extreme", "masked"):
        assert np.all(np.isfinite(as_f64(r.jvp))), f"{row.id}: non-finite jvp in {domain} domain"
    tol = tolerance_for(dtype)
    t = jvp_floor(r.tangents, r.own_jvp, r.ref_jvp, tol)
    assert_close(r.jvp, r.own_jvp, dtype, f"{row.id} jvp vs jax.jvp(fwd)", scale_floor=t)
    assert_close(r.jvp, r.ref_jvp, dtype, f"{row.id} jvp vs jax.jvp(reference)", scale_floor=t)
    bwd = [_stacked(r.cts[i]) for i in row.diff]
    g = [float(np.max(np.abs(as_f64(ct))))] * len(row.diff)
    adjoint = adjoint_comparison(r.jvp, _stacked(ct), r.tangents, bwd, dtype, tol, 0.0, t, g)
    assert adjoint.ok, f"{row.id}: adjoint identity ⟨jvp(t), c⟩ = ⟨t, bwd(c)⟩ fails: {adjoint}"


FD_CASES = [_grouped(row, shape, id=f"{row.id}-{shape}") for row in ROWS for shape in row.shapes]


@pytest.mark.parametrize(("row", "shape"), FD_CASES)
def test_finite_differences_float64(row, shape):
    """``check_vjp`` of the rule's fwd and bwd, both evaluated by the row's one jitted program."""
    primals = primals_for(row, F64, shape, "normal")
    run = row_evaluator(row, F64, shape)
    zero = jnp.zeros(out_struct(row, primals).shape, F64)

    def f(*diff):
        return run(with_diff(row, primals, diff), zero).out

    def f_vjp(*diff):
        full = with_diff(row, primals, diff)
        return run(full, zero).out, lambda g: tuple(run(full, g).cts[i] for i in row.diff)

    jax.test_util.check_vjp(
        f,
        f_vjp,
        tuple(primals[i] for i in row.diff),
        atol=1e-6,
        rtol=1e-6,
        eps=1e-5,
        err_msg=row.id,
    )


@pytest.mark.parametrize(("row", "shape"), FD_CASES)
def test_jvp_finite_differences_float64(row, shape):
    """Central differences of fwd along each tangent, (f(x + h t) − f(x − h t)) / 2h, against
    the jvp at the table's float64 case, kink-aware (the row's one jitted program evaluates the
    moved points)."""
    if RULES[row.rule].jvp is None:
        pytest.skip(f"{row.rule} has no jvp (reverse-only)")
    primals = primals_for(row, F64, shape, "normal")
    run = row_evaluator(row, F64, shape)
    zero = jnp.zeros(out_struct(row, primals).shape, F64)
    r = row_results(row)[F64, shape, "normal"]
    at = [primals[i] for i in row.diff]
    h = 1e-6 * max(1.0, *(float(np.max(np.abs(as_f64(x)))) for x in at))
    for k in range(TANGENTS):

        def out_at(sign, k=k):
            moved = tuple(x + sign * h * t[k] for x, t in zip(at, r.tangents, strict=True))
            return as_f64(run(with_diff(row, primals, moved), zero).out)

        plus, minus, mid = out_at(1.0), out_at(-1.0), as_f64(r.out)
        raw = (as_f64(r.jvp[k]), (plus - minus) / (2 * h), (mid - minus) / h, (plus - mid) / h)
        comp, _ = finite_difference_comparison(raw, "output", F64, 0.0)
        assert comp.ok, f"{row.id}: jvp along tangent {k} vs finite differences: {comp}"


EAGER_CASES = [_grouped(row, id=row.id) for row in ROWS]


@pytest.mark.parametrize("row", EAGER_CASES)
def test_eager_matches_jit(row):
    """The table runs under jit; the same rule called eagerly (op by op) gives the same."""
    rule = RULES[row.rule]
    dtype = F32 if F32 in row.dtypes else F64
    shape = row.shapes[-1]
    primals, ct = case_inputs(row, dtype, shape, "normal")
    out, res = rule.fwd(*primals, **row.static)
    cts = rule.bwd(res, ct, **row.static)
    jitted = row_results(row)[dtype, shape, "normal"]
    assert_close(out, jitted.out, dtype, f"{row.id} eager fwd")
    for i in row.diff:
        assert_close(cts[i], jitted.cts[i], dtype, f"{row.id} eager d/primal{i}")

"""Check a rule's handwritten ``jvp`` (forward mode), and its ``bwd`` against it.

Along K seeded random tangents t (:func:`~manual_bp.verify.oracles.tangents_for`), the rule's
``jvp(t)`` is compared with

* ``jax.jvp`` of the rule's own ``fwd`` and of the reference forward (when there is one);
* float64 central differences of ``fwd`` along t, kink-aware as the backward's are: where the
  one-sided quotients disagree, ``jvp(t)`` must lie between them;
* the **adjoint identity** ⟨jvp(t), c⟩ = ⟨t, bwd(c)⟩ for each tangent t and random cotangent c,
  which checks the two handwritten halves against each other with no autodiff involved.

Every comparison is judged by :func:`~manual_bp.verify.tolerances.compare` with the rule
tolerance of the dtype. The scale of a jvp comparison is the largest tangent entry (as the
backward's is the largest cotangent entry), ROUNDING_FACTOR × the disagreement of the two
autodiff oracles (``jax.jvp`` of the rule's forward and of the reference: where they differ,
neither is exact, as tanh's ``1 − a²`` at |z| ≈ 1e3 shows) and, below float64,
ROUNDING_FACTOR × the rounding of ``jax.jvp`` itself in that dtype. The scale of the adjoint
identity is the error the elementwise checks allow its two sides, summed:
Σ(|jvp(t)| + F_jvp)·|c| + Σ|t|·(|bwd(c)| + F_bwd) with F the floors of the two comparisons
(a saturated softmax computes a near-zero jvp from terms of size |t|), and, below float64,
ROUNDING_FACTOR × the same sums over autodiff's rounding error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from .diagnosis import diagnose_pattern
from .oracles import Evaluation, finite_difference_comparison, tangents_for
from .tolerances import ROUNDING_FACTOR, Comparison, compare, f64

__all__ = [
    "ADJOINT",
    "adjoint_comparison",
    "jvp_comparisons",
    "jvp_floor",
    "jvp_shape_problem",
]

ADJOINT = "⟨t, bwd(c)⟩ (adjoint)"
"""The ``against`` of the adjoint identity's :class:`~manual_bp.verify.tolerances.Comparison`."""


def jvp_shape_problem(rule: Any, primals: tuple, diff: tuple, static: dict) -> str | None:
    """Why the rule's ``jvp`` cannot be checked (it raises, or its result has not the output's
    shape and dtype), traced abstractly; ``None`` when it can."""
    try:
        out, res = jax.eval_shape(lambda *p: rule.fwd(*p, **static), *primals)
        tangents = jax.eval_shape(lambda: tangents_for(primals, diff, 1, 0))
        padded: list[Any] = [None] * len(primals)
        for i, t in zip(diff, tangents, strict=True):
            padded[i] = jax.ShapeDtypeStruct(t.shape[1:], t.dtype)
        got = jax.eval_shape(lambda r, *ts: rule.jvp(r, *ts, **static), res, *padded)
    except Exception as e:  # the user's jvp is what is being checked: report, don't crash
        return f"output: jvp raised {type(e).__name__}: {e}"
    if not hasattr(got, "shape") or got.shape != out.shape or got.dtype != out.dtype:
        shape = getattr(got, "shape", type(got).__name__)
        return (
            f"output: jvp returned {shape} {getattr(got, 'dtype', '')}, expected the output's "
            f"shape {tuple(out.shape)} and dtype {out.dtype}"
        )
    return None


def jvp_floor(tangents: Sequence[Any], own: Any, ref: Any, tol: float) -> float:
    """The scale of a jvp comparison in any dtype: the largest tangent entry, or ROUNDING_FACTOR
    × the largest disagreement of ``jax.jvp`` of the forward (``own``) and of the reference
    (``ref``, ``None`` without one) over ``tol``, if larger."""
    floor = max(float(np.max(np.abs(f64(t)), initial=0)) for t in tangents)
    if ref is not None and np.shape(own) == np.shape(ref):
        gap = float(np.max(_noise(own, ref), initial=0))
        floor = max(floor, ROUNDING_FACTOR * gap / max(tol, 1e-300))
    return floor


def _noise(a: Any, a64: Any) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        d = np.abs(f64(a) - f64(a64))
    return np.where(np.isfinite(d), d, 0)


def adjoint_comparison(
    jvp_out: Any,
    cts: Any,
    tangents: Sequence[Any],
    bwd: Sequence[Any],
    dtype: Any,
    tol: float,
    rounding: float = 0.0,
    jvp_floor: float = 0.0,
    bwd_floors: Sequence[float] | None = None,
) -> Comparison:
    """⟨jvp(t_k), c_k⟩ against ⟨t_k, bwd(c_k)⟩ for each of K tangents and cotangents, in float64
    arithmetic on the results of the dtype, on the scale of the identity's terms
    Σ(|jvp(t)| + F_jvp)·|c| + Σ|t|·(|bwd(c)| + F_bwd) (or ``rounding``, an absolute floor,
    if larger), F the floors of the elementwise comparisons (``jvp_floor``; ``bwd_floors``, one
    per differentiable primal).

    ``jvp_out`` and ``cts`` are stacked (K, *out); ``tangents`` and ``bwd`` hold one stacked
    (K, *shape) array per differentiable primal, in the same order (a ``bwd`` entry of ``None``
    or of the wrong shape contributes nothing, and fails the vjp checks instead).
    """
    c = f64(cts)
    k = c.shape[0]
    jv = f64(jvp_out)
    lhs = np.sum((jv * c).reshape(k, -1), axis=1)
    size = np.sum(((np.abs(jv) + jvp_floor) * np.abs(c)).reshape(k, -1), axis=1)
    rhs = np.zeros(k)
    floors = [0.0] * len(tangents) if bwd_floors is None else bwd_floors
    for t, b, fb in zip(tangents, bwd, floors, strict=True):
        if b is None or b.shape != t.shape:
            continue
        tv, bv = f64(t), f64(b)
        rhs = rhs + np.sum((tv * bv).reshape(k, -1), axis=1)
        size = size + np.sum((np.abs(tv) * (np.abs(bv) + fb)).reshape(k, -1), axis=1)
    floor = max(float(np.max(np.where(np.isfinite(size), size, 0), initial=0)), rounding)
    return compare(lhs, rhs, dtype, tol, floor, "⟨jvp(t), c⟩", ADJOINT)


def _adjoint(ev, ev64, cts, diff, dtype, tol, jvp_floor, bwd_floors) -> Comparison:
    """The adjoint identity of one evaluation; below float64 its floor is ROUNDING_FACTOR × the
    same sums over autodiff's own rounding error (against float64)."""
    tr = ev.tangent
    bwd = [ev.ours[i] for i in diff]
    rounding = 0.0
    if np.dtype(dtype) != np.float64:
        c = np.abs(f64(cts))
        k = c.shape[0]
        noise = np.sum((_noise(tr.own, ev64.tangent.own) * c).reshape(k, -1), axis=1)
        for t, a, a64 in zip(tr.tangents, ev.theirs, ev64.theirs, strict=True):
            if np.shape(a) == np.shape(t):
                noise = noise + np.sum((np.abs(f64(t)) * _noise(a, a64)).reshape(k, -1), axis=1)
        rounding = ROUNDING_FACTOR * float(np.max(noise, initial=0)) / max(tol, 1e-300)
    return adjoint_comparison(
        tr.ours, cts, tr.tangents, bwd, dtype, tol, rounding, jvp_floor, bwd_floors
    )


def jvp_comparisons(
    ev: Evaluation,
    ev64: Evaluation,
    cts: Any,
    diff: tuple,
    dtype: Any,
    tol: float,
    bwd_ok: bool,
    finite_differences: bool,
    bwd_floors: Sequence[float] | None = None,
) -> tuple[list[Comparison], list[str]]:
    """The forward-mode comparisons of one evaluation (``ev`` in the primals' dtype, ``ev64``
    the same primals, cotangents and tangents in float64) and the diagnoses of any failure.
    ``bwd_ok``: whether ``bwd`` matched ``jax.vjp`` (which half an adjoint failure blames);
    ``bwd_floors``: the floors of its comparisons, one per differentiable primal."""
    tr, tr64 = ev.tangent, ev64.tangent
    ours = f64(tr.ours)
    floor = jvp_floor(tr.tangents, tr.own, tr.ref, tol)
    if np.dtype(dtype) != np.float64:
        noise = max(
            float(np.max(_noise(a, b), initial=0))
            for a, b in ((tr.own, tr64.own), (tr.ref, tr64.ref))
            if a is not None
        )
        floor = max(floor, ROUNDING_FACTOR * noise / max(tol, 1e-300))
    comparisons = [compare(ours, f64(tr.own), dtype, tol, floor, "output", "jax.jvp(fwd)")]
    if tr.ref is not None:
        comparisons.append(
            compare(ours, f64(tr.ref), dtype, tol, floor, "output", "jax.jvp(reference)")
        )
    diagnoses = []
    own = comparisons[0]
    if not own.ok:
        pattern = diagnose_pattern("output", ours[0], f64(tr.own)[0], max(tol, 1e-6))
        diagnoses.append(
            f"jvp {pattern.replace('the true cotangent', 'jax.jvp')}"
            if pattern
            else f"jvp: differs from jax.jvp(fwd) by {own.max_rel:.3g} (relative) at "
            f"tangent/index {own.worst_index}"
        )
    if finite_differences:
        raw = tuple(f64(a) for a in (tr64.ours, tr64.central, tr64.left, tr64.right))
        fd, _ = finite_difference_comparison(raw, "output", dtype, 0.0)
        fd.against = "finite differences along t (f64)"
        comparisons.append(fd)
        if not fd.ok and own.ok:
            diagnoses.append(
                "jvp: matches jax.jvp(fwd) but not the finite differences of fwd along t: "
                "autodiff does not see the forward as it is (a stop_gradient or a custom rule)"
            )
    adjoint = _adjoint(ev, ev64, cts, diff, dtype, tol, floor, bwd_floors)
    comparisons.append(adjoint)
    if not adjoint.ok:
        gap = f"the adjoint identity ⟨jvp(t), c⟩ = ⟨t, bwd(c)⟩ fails by {adjoint.max_rel:.3g}"
        if own.ok and not bwd_ok:
            blame = "jvp matches jax.jvp, so bwd is wrong"
        elif bwd_ok and not own.ok:
            blame = "bwd matches jax.vjp, so jvp is wrong"
        elif not bwd_ok:
            blame = "neither matches autodiff"
        else:
            blame = "both match autodiff within the tolerance, so the gap is rounding"
        diagnoses.append(f"jvp and bwd are not transposes: {gap} (relative); {blame}")
    return comparisons, diagnoses

"""Check a handwritten rule, backward and forward mode, against autodiff, and say what is wrong
when it is not.

:func:`check_rule` compares a rule's ``bwd`` for each differentiable primal against

* ``jax.vjp`` of the rule's own ``fwd`` (several seeded random cotangents),
* ``jax.vjp`` of the independent reference forward, when the rule has one,
* float64 central finite differences of ⟨g, fwd(x)⟩, element by element (kink-aware: where the
  left and right one-sided differences disagree, the rule's value must lie between them),

and reports, per primal and comparison, the max absolute error, the normwise relative error
max|a − e| / max|e|, the error in units in the last place of the primal's dtype, and the index
of the worst element. When a comparison fails it classifies the failure: a constant scale
factor, a sign flip, a transposed result, a missing sum over a broadcast axis, an error
confined to kink points, or a precision-only problem (passes in float64).

A rule with a ``jvp`` also gets its forward mode checked along as many seeded random tangents
t as there are cotangents c (:mod:`~manual_bp.verify.forward_mode`): ``jvp(t)`` against
``jax.jvp`` of its own ``fwd`` and of the reference forward, against float64 finite
differences of ``fwd`` along t, and the adjoint identity ⟨jvp(t), c⟩ = ⟨t, bwd(c)⟩, with a
diagnosis of which half is wrong when ``jvp`` and ``bwd`` are not each other's transpose. A
rule without one (reverse-only) gets a note saying these checks were skipped, not a failure.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import prefix_errors
from ..rules import Rule, get_rule
from .diagnosis import diagnose_pattern, domain_warnings, explain, primal_names
from .forward_mode import jvp_comparisons, jvp_shape_problem
from .oracles import (
    Evaluation,
    difference_quotients,
    evaluator,
    finite_difference_comparison,
    reference_forward,
)
from .tolerances import (
    ROUNDING_FACTOR,
    Comparison,
    check_tolerance,
    compare,
    f64,
    float64_array,
    float64_copies,
    is_float,
    tolerance_for,
)

__all__ = ["RuleReport", "assert_rule_correct", "check_rule", "comparison_floors"]


@dataclasses.dataclass
class RuleReport:
    """What :func:`check_rule` found. ``str(report)`` is a table; ``to_dict``/``to_json``."""

    rule: str
    dtype: str
    primals: dict[str, str]
    static: dict[str, Any]
    cotangents: int
    comparisons: list[Comparison]
    diagnoses: list[str]
    warnings: list[str]
    ok: bool
    notes: list[str] = dataclasses.field(default_factory=list)
    """What was not checked and why (a reverse-only rule's forward mode), not failures."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["static"] = {k: repr(v) for k, v in self.static.items()}
        return d

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        primals = ", ".join(f"{k}: {v}" for k, v in self.primals.items())
        static = f"  static {self.static}" if self.static else ""
        lines = [
            f"check_rule {self.rule!r}  dtype {self.dtype}  ({primals}){static}",
            f"{self.cotangents} random cotangent(s)",
            f"  {'primal':<10} {'against':<28} {'max abs':>10} {'max rel':>10} {'max ulp':>10}"
            f"  {'worst index':<14} ok",
        ]
        for c in self.comparisons:
            lines.append(
                f"  {c.primal:<10} {c.against:<28} {c.max_abs:>10.3g} {c.max_rel:>10.3g} "
                f"{c.max_ulp:>10.3g}  {c.worst_index!s:<14} {'ok' if c.ok else 'FAIL'}"
                + (f"  ({c.note})" if c.note else "")
            )
        lines += [f"diagnosis: {d}" for d in self.diagnoses]
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"note: {n}" for n in self.notes]
        lines.append("result: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


def validate_cotangent(rule: str, ct: Any, out: Any) -> Any:
    ct = jnp.asarray(ct)
    if ct.shape != out.shape or ct.dtype != out.dtype:
        raise ValueError(
            f"check_rule({rule!r}): a cotangent must have the output's shape {tuple(out.shape)} "
            f"and dtype {out.dtype}, got {tuple(ct.shape)} {ct.dtype}"
        )
    g = f64(ct)
    if g.size and np.all(g == 1):
        raise ValueError(
            f"check_rule({rule!r}): refusing a cotangent of all ones: it cannot tell "
            "sum(p·g) from mean(g) or catch a missing weight; pass random cotangents"
        )
    if g.size and np.all(g == 0):
        raise ValueError(f"check_rule({rule!r}): refusing an all-zero cotangent: it checks nothing")
    for axis in range(g.ndim):
        if g.shape[axis] > 1:
            sums = np.abs(g.sum(axis=axis))
            if np.all(sums <= 1e-6 * np.abs(g).sum(axis=axis).max()):
                raise ValueError(
                    f"check_rule({rule!r}): refusing a cotangent that sums to zero along axis "
                    f"{axis}: any term of the backward proportional to that sum (softmax's "
                    "p·Σg) goes unchecked"
                )
    return ct


def check_rule(
    rule: Rule | str,
    *primals: Any,
    cotangents: Sequence[Any] | None = None,
    num_cotangents: int = 3,
    seed: int = 0,
    tolerance: float | None = None,
    finite_differences: bool = True,
    **static: Any,
) -> RuleReport:
    """Check ``rule.bwd`` at ``primals`` against ``jax.vjp``, the reference and float64 finite
    differences, and ``rule.jvp`` against ``jax.jvp``, the reference, finite differences along
    random tangents and the adjoint identity ⟨jvp(t), c⟩ = ⟨t, bwd(c)⟩; explain any failure.

    Args:
      rule: a :class:`~manual_bp.Rule` (registered or not) or a registered rule's name.
      *primals: the rule's inputs. Float primals are checked; others (integer labels, masks)
        must get ``None`` cotangents.
      cotangents: cotangents to use instead of ``num_cotangents`` seeded random ones. All-ones,
        all-zero and cotangents that sum to zero along an axis are refused (ValueError).
      seed: seed of the random cotangents and tangents.
      tolerance: per-element tolerance (default by dtype: :data:`TOLERANCE`).
      finite_differences: also compare against float64 central differences (of ⟨g, fwd⟩ for
        ``bwd``, of ``fwd`` along each tangent for ``jvp``).
      **static: the rule's static keywords.

    Returns:
      a :class:`RuleReport`; ``report.ok`` says whether every comparison passed.
    """
    rule = prefix_errors("check_rule", lambda: get_rule(rule))
    primals = tuple(jnp.asarray(p) if isinstance(p, np.ndarray) else p for p in primals)
    for i, p in enumerate(primals):
        if not hasattr(p, "dtype") or not hasattr(p, "shape"):
            raise TypeError(
                f"check_rule({rule.name!r}): primal {i} must be an array, got {type(p).__name__}"
            )
    diff = tuple(i for i, p in enumerate(primals) if is_float(p))
    if not diff:
        raise TypeError(f"check_rule({rule.name!r}): no floating primal to differentiate")
    names = primal_names(rule, len(primals))
    out = jax.eval_shape(lambda *p: rule.fwd(*p, **static)[0], *primals)
    if not is_float(out):
        raise TypeError(f"check_rule({rule.name!r}): the output must be floating, got {out.dtype}")
    dtype = np.dtype(primals[diff[0]].dtype)
    check_tolerance(f"check_rule({rule.name!r})", tolerance)
    tol = tolerance if tolerance is not None else tolerance_for(dtype)

    if cotangents is None:
        if num_cotangents < 1:
            raise ValueError(f"check_rule: num_cotangents must be >= 1, got {num_cotangents}")
        rng = np.random.default_rng(seed)
        cts = [
            jnp.asarray(rng.standard_normal(out.shape) + 0.1, out.dtype)
            for _ in range(num_cotangents)
        ]
    else:
        if hasattr(cotangents, "shape"):
            cotangents = [cotangents]
        cts = [validate_cotangent(rule.name, g, out) for g in cotangents]
    stacked = jax.device_put(np.stack([np.asarray(g) for g in cts]))

    ref_fn = reference_forward(rule)
    key = tuple(sorted(static.items()))
    notes: list[str] = []
    jvp_problem = None if rule.jvp is None else jvp_shape_problem(rule, primals, diff, static)
    forward = rule.jvp is not None and jvp_problem is None
    if rule.jvp is None:
        notes.append("the rule has no jvp (reverse-only): the forward-mode checks are skipped")
    ev = evaluator(rule, key, diff, ref_fn, forward)(primals, stacked, seed)
    out, ours, theirs, ref_out, ref_cts = ev[:5]
    ev64 = (
        ev
        if dtype == np.float64
        else evaluation64_of(rule, key, diff, ref_fn, forward, primals, stacked, seed)
    )
    floors = comparison_floors(
        rule, key, diff, ref_fn, primals, stacked, theirs, ref_cts, tol, evaluation64=ev64
    )

    if not isinstance(ours, tuple) or len(ours) != len(primals):
        raise TypeError(
            f"check_rule({rule.name!r}): bwd must return a tuple of {len(primals)} cotangents "
            f"(one per primal), got {type(ours).__name__} of length "
            f"{len(ours) if isinstance(ours, tuple) else '?'}"
        )
    comparisons: list[Comparison] = []
    diagnoses: list[str] = []
    warnings: list[str] = []
    for i, c in enumerate(ours):
        if i not in diff and c is not None:
            diagnoses.append(
                f"{names[i]}: non-differentiable ({primals[i].dtype}) but bwd "
                "returned a cotangent; return None"
            )
        if i in diff and c is None:
            diagnoses.append(f"{names[i]}: bwd returned None for a float primal")

    if ref_out is not None:
        comparisons.append(
            compare(f64(out), f64(ref_out), dtype, tol, 0.0, "output", "reference forward")
        )

    kinks: dict[int, np.ndarray] = {}
    fd_results: dict[int, Comparison] = {}
    if finite_differences:
        # the rule's float64 cotangents at the first cotangent, from the float64 evaluation
        a64 = {
            i: f64(ev64.ours[i])[0]
            for i in diff
            if ours[i] is not None and ev64.ours[i] is not None
        }
        raw = difference_quotients(rule, static, primals, cts[0], a64)
        top = max((float(np.max(np.abs(r[1]), initial=0)) for r in raw.values()), default=0.0)
        for i, r in raw.items():
            fd_results[i], kinks[i] = finite_difference_comparison(r, names[i], dtype, top)

    for k, i in enumerate(diff):
        if ours[i] is None:
            continue
        a_all, e_all = f64(ours[i]), f64(theirs[k])
        label = names[i]
        if a_all.shape != e_all.shape:
            comparisons.append(
                Comparison(
                    label,
                    "jax.vjp(fwd)",
                    float("nan"),
                    float("nan"),
                    float("nan"),
                    (),
                    False,
                    "wrong shape",
                )
            )
            diagnoses.append(diagnose_pattern(label, a_all[0], e_all[0], max(tol, 1e-6)))
            continue
        kink = kinks.get(i)
        kink_all = None if kink is None else np.broadcast_to(kink, a_all.shape)
        comp = compare(a_all, e_all, dtype, tol, floors[k], label, "jax.vjp(fwd)", kink_all)
        comp.worst_index = comp.worst_index[1:]
        if kink is not None and kink.any():
            comp.note = f"{int(kink.sum())} kink point(s) checked by one-sided differences"
        comparisons.append(comp)
        if ref_cts is not None:
            rc = compare(
                a_all, f64(ref_cts[k]), dtype, tol, floors[k], label, "jax.vjp(reference)", kink_all
            )
            rc.worst_index = rc.worst_index[1:]
            comparisons.append(rc)
        if i in fd_results:
            comparisons.append(fd_results[i])
        if not np.any(e_all):
            warnings.append(
                f"{label}: the true cotangent is zero everywhere: the inputs are saturated or "
                "dead, so this check is vacuous; choose inputs across the rule's domain"
            )
        failed = not comp.ok or (i in fd_results and not fd_results[i].ok)
        if failed:
            diagnoses.append(
                explain(
                    rule,
                    static,
                    primals,
                    stacked,
                    diff,
                    k,
                    i,
                    label,
                    a_all,
                    e_all,
                    fd_results.get(i),
                    kink,
                    tol,
                    dtype,
                )
            )
    if ev.tangent is not None:
        bwd_ok = all(c.ok for c in comparisons if c.against == "jax.vjp(fwd)")
        forward_comps, forward_diagnoses = jvp_comparisons(
            ev, ev64, stacked, diff, dtype, tol, bwd_ok, finite_differences, floors
        )
        comparisons += forward_comps
        diagnoses += forward_diagnoses
    elif jvp_problem:
        diagnoses.append(jvp_problem)
    warnings += domain_warnings(primals, out, diff, names)
    diagnoses = [d for d in diagnoses if d]
    ok = all(c.ok for c in comparisons) and not diagnoses
    return RuleReport(
        rule=rule.name,
        dtype=dtype.name,
        primals={n: f"{tuple(p.shape)} {p.dtype}" for n, p in zip(names, primals, strict=True)},
        static=dict(static),
        cotangents=len(cts),
        comparisons=comparisons,
        diagnoses=diagnoses,
        warnings=warnings,
        ok=ok,
        notes=notes,
    )


def comparison_floors(
    rule: Rule,
    key: tuple,
    diff: tuple[int, ...],
    ref_fn: Any,
    primals: tuple,
    stacked: Any,
    theirs: tuple,
    ref_cts: tuple | None,
    tol: float,
    evaluation64: Evaluation | None = None,
) -> list[float]:
    """The scale of the computation behind each differentiable primal's cotangent: the largest
    cotangent entry, and below float64 :data:`~manual_bp.verify.tolerances.ROUNDING_FACTOR` ×
    the rounding error of ``jax.vjp`` itself in that dtype (against float64, on the same
    inputs), over ``tol`` — so the bound ``tol · scale`` admits that much rounding.
    ``evaluation64``: the evaluator's result on float64 copies of the primals and cotangents,
    when the caller has it already (:func:`evaluation64_of`)."""
    floor = float(np.max(np.abs(f64(stacked)), initial=0))
    if np.dtype(stacked.dtype) == np.float64:
        return [floor] * len(diff)
    if evaluation64 is None:
        evaluation64 = evaluation64_of(rule, key, diff, ref_fn, True, primals, stacked, 0)
    theirs64, ref64 = evaluation64.theirs, evaluation64.ref_cts
    floors = []
    for k in range(len(diff)):
        pairs = [(theirs[k], theirs64[k])]
        if ref_cts is not None:
            pairs.append((ref_cts[k], ref64[k]))
        with np.errstate(invalid="ignore"):
            noise = max(
                float(np.nanmax(np.abs(f64(a) - f64(b)), initial=0))
                for a, b in pairs
                if np.shape(a) == np.shape(b)
            )
        floors.append(max(floor, ROUNDING_FACTOR * noise / max(tol, 1e-300)))
    return floors


def evaluation64_of(
    rule: Rule,
    key: tuple,
    diff: tuple[int, ...],
    ref_fn: Any,
    forward: bool,
    primals: tuple,
    stacked: Any,
    seed: int,
) -> Evaluation:
    """The evaluator's result on float64 copies of the float primals and the cotangents (the
    tangents drawn from ``seed`` are the same in every dtype)."""
    with jax.enable_x64(True):
        p64, s64 = float64_copies(primals), float64_array(stacked)
        return evaluator(rule, key, diff, ref_fn, forward)(p64, s64, seed)


def assert_rule_correct(rule: Rule | str, *primals: Any, **kwargs: Any) -> RuleReport:
    """:func:`check_rule`, raising AssertionError with the report when it fails."""
    report = check_rule(rule, *primals, **kwargs)
    if not report.ok:
        raise AssertionError("\n" + str(report))
    return report

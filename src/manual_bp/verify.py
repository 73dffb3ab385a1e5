"""Check a handwritten backward rule against autodiff, and say what is wrong when it is not.

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

:func:`check_network` does the same for a whole network and names the first layer, walking
back from the loss, whose delta ∂C/∂(output) diverges from the reference's ``jax.grad``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import prefix_errors
from .rules import Rule, get_rule

__all__ = [
    "Comparison",
    "LayerCheck",
    "NetworkReport",
    "RuleReport",
    "assert_rule_correct",
    "check_network",
    "check_rule",
]

TOLERANCE = {"float64": 1e-9, "float32": 2e-5, "bfloat16": 2e-2, "float16": 5e-3}
"""Default tolerance by dtype: |a − e| <= tol·|e| + tol·max(max|e|, max|g|) per element."""


def _check_tolerance(where: str, tolerance: Any) -> None:
    if tolerance is None:
        return
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, int | float)
        or not math.isfinite(tolerance)
        or tolerance < 0
    ):
        raise ValueError(
            f"{where}: tolerance must be a finite number >= 0 (or None), got {tolerance!r}"
        )


MAX_FD_ELEMENTS = 2048
"""Primals up to this size get element-by-element finite differences; larger ones 16 random
directions (no kink detection)."""


# ---- reports ------------------------------------------------------------------------------


@dataclasses.dataclass
class Comparison:
    """One primal's cotangent against one oracle."""

    primal: str
    against: str
    max_abs: float
    max_rel: float
    max_ulp: float
    worst_index: tuple[int, ...]
    ok: bool
    note: str = ""


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
        lines.append("result: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


# ---- helpers ------------------------------------------------------------------------------


def _f64(x: Any) -> np.ndarray:
    return np.asarray(
        jnp.asarray(x).astype(jnp.float32 if x.dtype == jnp.bfloat16 else x.dtype), dtype=np.float64
    )


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating)


def _primal_names(rule: Rule, n: int) -> list[str]:
    try:
        params = [
            p.name
            for p in inspect.signature(rule.fwd).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"primal{i}" for i in range(n)]


def _ulp(e: np.ndarray, dtype: Any, scale: float) -> np.ndarray:
    """The spacing of ``dtype`` at |e|, floored at 1e-3 of the comparison's scale."""
    fi = jnp.finfo(dtype)
    mag = np.maximum(np.abs(e), max(1e-3 * scale, float(fi.tiny)))
    return float(fi.eps) * np.exp2(np.floor(np.log2(mag)))


def _compare(a, e, dtype, tol, floor, primal, against, exclude=None) -> Comparison:
    """Compare arrays a (got) and e (expected), both float64 numpy of one shape."""
    finite = np.isfinite(e) & np.isfinite(a)
    pattern = (np.isfinite(a) != np.isfinite(e)) | (~np.isfinite(e) & (a != e))
    same_nonfinite = not pattern.any()
    mask = finite if exclude is None else finite & ~exclude
    err = np.where(mask, np.abs(np.where(finite, a, 0) - np.where(finite, e, 0)), 0)
    scale = max(float(np.max(np.abs(np.where(finite, e, 0)), initial=0)), floor, 1e-300)
    bound = tol * np.abs(np.where(finite, e, 0)) + tol * scale
    bad = err > bound
    i = np.unravel_index(int(np.argmax(err - bound)), err.shape) if err.size else ()
    max_abs = float(err.max(initial=0))
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        ulp = err / _ulp(np.where(finite, e, 0), dtype, scale)
    return Comparison(
        primal=primal,
        against=against,
        max_abs=max_abs,
        max_rel=max_abs / scale,
        max_ulp=float(ulp.max(initial=0)),
        worst_index=tuple(int(j) for j in i),
        ok=bool(not bad.any() and same_nonfinite),
        note=""
        if same_nonfinite
        else (
            f"inf/NaN differs at {int(pattern.sum())} element(s), first at "
            f"{tuple(int(j) for j in np.argwhere(pattern)[0])}"
        ),
    )


def _validate_cotangent(rule: str, ct: Any, out: Any) -> Any:
    ct = jnp.asarray(ct)
    if ct.shape != out.shape or ct.dtype != out.dtype:
        raise ValueError(
            f"check_rule({rule!r}): a cotangent must have the output's shape {tuple(out.shape)} "
            f"and dtype {out.dtype}, got {tuple(ct.shape)} {ct.dtype}"
        )
    g = _f64(ct)
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


def _bind(fn, primals, diff):
    def f(*d):
        full = list(primals)
        for i, v in zip(diff, d, strict=True):
            full[i] = v
        return fn(*full)

    return f


def _try_cache(fn):
    cached = functools.lru_cache(maxsize=256)(fn)

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            hash(args)
        except TypeError:
            return fn(*args)
        return cached(*args)

    return wrapper


@_try_cache
def _evaluator(rule: Rule, static: tuple, diff: tuple, ref_fn: Any):
    """A jitted function of (primals, cotangents) -> bwd, jax.vjp and reference cotangents,
    vmapped over the stacked cotangents."""
    kw = dict(static)

    def run(primals, cts):
        out, res = rule.fwd(*primals, **kw)
        ours = jax.vmap(lambda g: rule.bwd(res, g, **kw))(cts)
        _, vjp = jax.vjp(
            _bind(lambda *p: rule.fwd(*p, **kw)[0], primals, diff), *(primals[i] for i in diff)
        )
        theirs = jax.vmap(vjp)(cts)
        if ref_fn is None:
            return out, ours, theirs, None, None
        ref_out, ref_vjp = jax.vjp(
            _bind(lambda *p: ref_fn(*p, **kw), primals, diff), *(primals[i] for i in diff)
        )
        return out, ours, theirs, ref_out, jax.vmap(ref_vjp)(cts)

    return jax.jit(run)


@_try_cache
def _bwd64(rule: Rule, static: tuple):
    """The rule's forward and backward, jitted (used on float64 copies of the primals)."""
    kw = dict(static)

    def run(primals, g):
        _, res = rule.fwd(*primals, **kw)
        return rule.bwd(res, g, **kw)

    return jax.jit(run)


@_try_cache
def _fd_evaluator(rule: Rule, static: tuple, index: int):
    """Jitted float64 central and one-sided differences of φ(x) = ⟨g, fwd(x)⟩ along each
    basis direction of primal ``index`` (or along given directions)."""
    kw = dict(static)

    def phi(primals, x, g):
        full = list(primals)
        full[index] = x
        out = rule.fwd(*full, **kw)[0]
        return jnp.sum(out * g)

    def run(primals, g, directions, h):
        x = primals[index]

        def one(v):
            at = phi(primals, x, g)
            plus = phi(primals, x + h * v, g)
            minus = phi(primals, x - h * v, g)
            return (plus - minus) / (2 * h), (at - minus) / h, (plus - at) / h

        return jax.vmap(one)(directions)

    return jax.jit(run)


# ---- diagnosis ----------------------------------------------------------------------------


def _close(a, e, tol):
    scale = max(float(np.max(np.abs(e), initial=0)), 1e-300)
    return a.shape == e.shape and bool(np.all(np.abs(a - e) <= tol * (np.abs(e) + scale)))


def _diagnose_pattern(name: str, a: np.ndarray, e: np.ndarray, tol: float) -> str | None:
    """A structural error in a (got) relative to e (expected), or None."""
    if a.shape != e.shape:
        if a.ndim == 2 and a.shape == e.shape[::-1] and _close(a.T, e, tol):
            return f"{name}: transposed result (got shape {a.shape}, expected {e.shape})"
        if a.ndim > e.ndim and a.shape[a.ndim - e.ndim :] == e.shape:
            axes = tuple(range(a.ndim - e.ndim))
            if _close(a.sum(axis=axes), e, tol):
                return (
                    f"{name}: missing sum over broadcast axes {axes}: got shape {a.shape}, "
                    f"expected {e.shape}; sum the cotangent over the axes the forward broadcast"
                )
        if a.ndim == e.ndim:
            axes = tuple(i for i in range(a.ndim) if e.shape[i] == 1 and a.shape[i] != 1)
            if axes and _close(a.sum(axis=axes, keepdims=True), e, tol):
                return f"{name}: missing sum over broadcast axes {axes} (kept as size 1)"
        return f"{name}: wrong shape: got {a.shape}, expected {e.shape}"
    if not np.any(e):
        return None
    if _close(-a, e, tol):
        return f"{name}: sign flip (got −1 × the true cotangent)"
    if a.ndim >= 2 and a.shape[-1] == a.shape[-2] and _close(np.swapaxes(a, -1, -2), e, tol):
        return f"{name}: transposed result (the last two axes are swapped)"
    c = float(np.vdot(a, e) / np.vdot(e, e))
    if abs(c - 1) > 10 * tol and _close(a, c * e, tol):
        return f"{name}: constant scale factor: got {c:.6g} × the true cotangent"
    return None


# ---- check_rule ---------------------------------------------------------------------------


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
    differences; explain any failure.

    Args:
      rule: a :class:`~manual_bp.Rule` (registered or not) or a registered rule's name.
      *primals: the rule's inputs. Float primals are checked; others (integer labels, masks)
        must get ``None`` cotangents.
      cotangents: cotangents to use instead of ``num_cotangents`` seeded random ones. All-ones,
        all-zero and cotangents that sum to zero along an axis are refused (ValueError).
      seed: seed of the random cotangents.
      tolerance: per-element tolerance (default by dtype: :data:`TOLERANCE`).
      finite_differences: also compare against float64 central differences.
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
    diff = tuple(i for i, p in enumerate(primals) if _is_float(p))
    if not diff:
        raise TypeError(f"check_rule({rule.name!r}): no floating primal to differentiate")
    names = _primal_names(rule, len(primals))
    out = jax.eval_shape(lambda *p: rule.fwd(*p, **static)[0], *primals)
    if not _is_float(out):
        raise TypeError(f"check_rule({rule.name!r}): the output must be floating, got {out.dtype}")
    dtype = np.dtype(primals[diff[0]].dtype)
    _check_tolerance(f"check_rule({rule.name!r})", tolerance)
    tol = tolerance if tolerance is not None else TOLERANCE.get(dtype.name, 1e-5)

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
        cts = [_validate_cotangent(rule.name, g, out) for g in cotangents]
    stacked = jnp.stack(cts)
    floor = float(np.max(np.abs(_f64(stacked)), initial=0))

    ref_fn = _reference_forward(rule)
    key = tuple(sorted(static.items()))
    out, ours, theirs, ref_out, ref_cts = _evaluator(rule, key, diff, ref_fn)(primals, stacked)

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
            _compare(_f64(out), _f64(ref_out), dtype, tol, 0.0, "output", "reference forward")
        )

    kinks: dict[int, np.ndarray] = {}
    fd_results: dict[int, Comparison] = {}
    if finite_differences:
        raw = {
            i: _finite_differences(rule, static, primals, cts[0], i)
            for i in diff
            if ours[i] is not None and ours[i].shape[1:] == primals[i].shape
        }
        raw = {i: r for i, r in raw.items() if r is not None}
        top = max((float(np.max(np.abs(r[1]), initial=0)) for r in raw.values()), default=0.0)
        for i, r in raw.items():
            fd_results[i], kinks[i] = _finite_difference_comparison(r, names[i], dtype, top)

    for k, i in enumerate(diff):
        if ours[i] is None:
            continue
        a_all, e_all = _f64(ours[i]), _f64(theirs[k])
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
            diagnoses.append(_diagnose_pattern(label, a_all[0], e_all[0], max(tol, 1e-6)))
            continue
        kink = kinks.get(i)
        kink_all = None if kink is None else np.broadcast_to(kink, a_all.shape)
        comp = _compare(a_all, e_all, dtype, tol, floor, label, "jax.vjp(fwd)", kink_all)
        comp.worst_index = comp.worst_index[1:]
        if kink is not None and kink.any():
            comp.note = f"{int(kink.sum())} kink point(s) checked by one-sided differences"
        comparisons.append(comp)
        if ref_cts is not None:
            rc = _compare(
                a_all, _f64(ref_cts[k]), dtype, tol, floor, label, "jax.vjp(reference)", kink_all
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
                _explain(
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
    warnings += _domain_warnings(primals, out, diff, names)
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
    )


def _reference_forward(rule: Rule):
    """The reference forward of a registered rule, or None for a rule of the user's own."""
    from .rules import RULES

    if RULES.get(rule.name) is not rule:
        return None
    try:
        import reference
    except ImportError:  # pragma: no cover - the reference ships with the package
        return None
    return reference.FORWARD.get(rule.name)


def _finite_differences(rule, static, primals, g, i):
    """Float64 differences of ⟨g, fwd⟩ along primal i: ``(a, central, left, right)`` per element
    (``a`` the rule's float64 cotangent), or ``(⟨a, v⟩, central, None, None)`` along 16 random
    directions v for a large primal; None where they do not apply."""
    with jax.enable_x64(True):
        p64 = tuple(p.astype(jnp.float64) if _is_float(p) else p for p in primals)
        g64 = jnp.asarray(g).astype(jnp.float64)
        x = p64[i]
        if not bool(jnp.all(jnp.isfinite(x))):
            return None
        a = _bwd64(rule, tuple(sorted(static.items())))(p64, g64)[i]
        if a is None or a.shape != x.shape:
            return None
        a = np.asarray(a, np.float64)
        h = 1e-6 * max(1.0, float(np.max(np.abs(np.asarray(x, np.float64)), initial=0)))
        fd = _fd_evaluator(rule, tuple(sorted(static.items())), i)
        if x.size <= MAX_FD_ELEMENTS:
            basis = jnp.eye(x.size, dtype=jnp.float64).reshape((x.size, *x.shape))
            central, left, right = (np.asarray(v).reshape(x.shape) for v in fd(p64, g64, basis, h))
            return a, central, left, right
        dirs = jnp.asarray(np.random.default_rng(0).standard_normal((16, *x.shape)), jnp.float64)
        central, _, _ = fd(p64, g64, dirs, h)
        return np.tensordot(np.asarray(dirs), a, axes=a.ndim), np.asarray(central), None, None


def _finite_difference_comparison(raw, name, dtype, global_scale):
    """Compare against the differences; kink-aware where left and right ones disagree.

    Differences are judged on the scale of the largest gradient of any primal, so a primal
    whose true cotangent is zero (differences of pure rounding noise) is not held to its noise.
    """
    a, central, left, right = raw
    scale = max(float(np.max(np.abs(central), initial=0)), 1e-3 * global_scale, 1e-300)
    if left is None:
        return _compare(
            a, central, dtype, 1e-6, scale, name, "finite differences (f64, 16 dirs)"
        ), None
    kink = np.abs(right - left) > 1e-3 * scale
    lo, hi = np.minimum(left, right), np.maximum(left, right)
    within = (a >= lo - 1e-6 * scale) & (a <= hi + 1e-6 * scale)
    comp = _compare(a, central, dtype, 1e-6, scale, name, "finite differences (f64)", kink)
    if kink.any():
        comp.ok = comp.ok and bool(within[kink].all())
        comp.note = f"{int(kink.sum())} kink point(s): one-sided range " + (
            "ok" if within[kink].all() else "VIOLATED"
        )
    return comp, kink


def _explain(
    rule, static, primals, stacked, diff, k, i, label, a_all, e_all, fd, kink, tol, dtype
) -> str:
    """Name the kind of error in primal i's cotangent."""
    pattern = _diagnose_pattern(label, a_all[0], e_all[0], max(tol, 1e-6))
    if pattern:
        return pattern
    if kink is not None and kink.any():
        scale = max(float(np.max(np.abs(e_all), initial=0)), 1e-300)
        bad = np.abs(a_all - e_all) > tol * (np.abs(e_all) + scale)
        off_kink = bad & ~np.broadcast_to(kink, bad.shape)
        if fd is not None and not fd.ok and not off_kink.any():
            where = [tuple(int(j) for j in ix) for ix in np.argwhere(kink)][:5]
            return (
                f"{label}: error confined to {int(kink.sum())} kink point(s) {where}: the "
                "rule's value lies outside the left/right one-sided derivatives there"
            )
    if dtype != np.float64:
        with jax.enable_x64(True):
            p64 = tuple(p.astype(jnp.float64) if _is_float(p) else p for p in primals)
            key = tuple(sorted(static.items()))
            _, ours64, theirs64, _, _ = _evaluator(rule, key, diff, None)(
                p64, stacked.astype(jnp.float64)
            )
            c64 = _compare(
                _f64(ours64[i]),
                _f64(theirs64[k]),
                jnp.float64,
                TOLERANCE["float64"],
                0.0,
                label,
                "",
            )
        if c64.ok:
            return (
                f"{label}: precision-only problem: passes in float64, fails in {dtype.name} "
                "(an unstable formula or cancellation; rewrite it from stable primitives)"
            )
    bad = np.abs(a_all - e_all) > tol * (np.abs(e_all) + np.max(np.abs(e_all), initial=0))
    ix = tuple(int(j) for j in np.unravel_index(int(np.argmax(np.abs(a_all - e_all))), a_all.shape))
    return (
        f"{label}: unclassified error at {int(bad.sum())} of {bad.size} elements; worst at "
        f"{ix[1:]} (cotangent {ix[0]}): got {a_all[ix]:.6g}, expected {e_all[ix]:.6g}"
    )


def _domain_warnings(primals, out, diff, names) -> list[str]:
    """Warn when the inputs exercise only one branch of an elementwise rule."""
    warnings = []
    o = _f64(out)
    for i in diff:
        x = _f64(primals[i])
        if x.shape != o.shape or x.size < 2:
            continue
        nz = (x != 0) & np.isfinite(x) & np.isfinite(o)
        if not nz.any():
            continue
        ratio = o[nz] / x[nz]
        if np.allclose(ratio, ratio[0], rtol=1e-6, atol=0) and np.all(np.isfinite(ratio)):
            warnings.append(
                f"{names[i]}: the output is {ratio[0]:.6g} × the input everywhere: only one "
                "linear branch of the rule is exercised (e.g. relu inputs all positive); "
                "include inputs on both sides of every kink"
            )
    return warnings


def assert_rule_correct(rule: Rule | str, *primals: Any, **kwargs: Any) -> RuleReport:
    """:func:`check_rule`, raising AssertionError with the report when it fails."""
    report = check_rule(rule, *primals, **kwargs)
    if not report.ok:
        raise AssertionError("\n" + str(report))
    return report


# ---- check_network ------------------------------------------------------------------------


@dataclasses.dataclass
class LayerCheck:
    """One layer's delta ∂C/∂(output) and parameter gradients against the reference."""

    name: str
    delta_max_abs: float
    delta_max_rel: float
    delta_ok: bool
    grad_max_rel: float | None
    grad_ok: bool


@dataclasses.dataclass
class NetworkReport:
    """What :func:`check_network` found; ``layers`` run from the loss back to the input."""

    loss_error: float
    layers: list[LayerCheck]
    first_divergent: str | None
    culprit: str | None
    ok: bool
    state_error: float = 0.0
    """Largest relative difference of the new state (batch-norm statistics), if any."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        lines = [
            f"check_network: loss error {self.loss_error:.3g}, new state rel error "
            f"{self.state_error:.3g}",
            f"  {'layer (from the loss back)':<28} {'delta max rel':>14} {'grad max rel':>14}  ok",
        ]
        for lc in self.layers:
            g = "" if lc.grad_max_rel is None else f"{lc.grad_max_rel:.3g}"
            ok = "ok" if lc.delta_ok and lc.grad_ok else "FAIL"
            lines.append(f"  {lc.name:<28} {lc.delta_max_rel:>14.3g} {g:>14}  {ok}")
        if self.first_divergent:
            lines.append(
                f"first divergent delta: {self.first_divergent!r}; its value comes from the "
                f"backward of {self.culprit!r}"
            )
        lines.append("result: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


def _forward_order(net: Any) -> list[str]:
    """Delta names in forward order (a container after its children), from the description."""

    def walk(layer, prefix):
        for child in layer.children:
            name = prefix + child.name
            yield from walk(child, name + "/")
            yield name

    return list(walk(net, ""))


def _subtree(tree: Any, name: str) -> Any:
    for part in name.split("/"):
        tree = tree[part]
    return tree


def check_network(
    net: Any,
    loss: Rule | str,
    params: Any,
    x: Any,
    y: Any,
    *,
    tolerance: float | None = None,
    state: Any = None,
    key: Any = None,
    train: bool = True,
) -> NetworkReport:
    """Compare every layer's delta and gradient with ``jax.grad`` of the reference, under jit.

    Walking back from the loss as the backward pass does, names the first layer whose delta
    ∂C/∂(output) diverges and the layer whose backward produced it (the next one in forward
    order, or the loss). A layer whose delta agrees but whose parameter gradient does not is
    reported too (its aᵀδ is wrong). A network with state (batch norm) takes ``state``, and
    its new state is compared too; ``key`` feeds dropout; ``train`` picks the mode.
    """
    import reference

    from .grad import value_grad_and_deltas
    from .nn import Layer

    if not isinstance(net, Layer):
        raise TypeError(
            f"check_network: net must be a manual_bp.nn.Layer, got {type(net).__name__}"
        )
    for arg, a in (("x", x), ("y", y)):
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise TypeError(f"check_network: {arg} must be an array, got {type(a).__name__}")
    _check_tolerance("check_network", tolerance)
    loss = prefix_errors("check_network", lambda: get_rule(loss))
    floats = [leaf for leaf in jax.tree.leaves(params) if _is_float(leaf)]
    dtype = np.dtype(x.dtype if _is_float(x) or not floats else floats[0].dtype)
    tol = tolerance if tolerance is not None else max(TOLERANCE.get(dtype.name, 1e-5), 1e-9) * 5
    stateful = state is not None
    args = (params, state, x, y) if stateful else (params, x, y)
    mine = value_grad_and_deltas(net, loss, has_state=stateful, train=train)
    ref = reference.value_grad_and_deltas(net, loss.name, has_state=stateful, train=train)
    c, grads, deltas = jax.jit(mine)(*args, key)
    rc, rgrads, rdeltas = jax.jit(ref)(*args, key)
    state_err = 0.0
    if stateful:
        (c, new_state), (rc, r_new_state) = c, rc
        for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(r_new_state), strict=True):
            state_err = max(state_err, _compare(_f64(a), _f64(b), dtype, tol, 0.0, "", "").max_rel)
    order = _forward_order(net)
    layers: list[LayerCheck] = []
    first = culprit = None
    for pos in range(len(order) - 1, -1, -1):
        name = order[pos]
        d = _compare(_f64(deltas[name]), _f64(rdeltas[name]), dtype, tol, 0.0, name, "delta")
        try:
            g, rg = _subtree(grads, name), _subtree(rgrads, name)
        except (KeyError, TypeError):
            g = rg = None
        g_rel, g_ok = None, True
        is_leaf_layer = isinstance(g, dict) and not any(isinstance(v, dict) for v in g.values())
        if is_leaf_layer and g:
            comps = [
                _compare(_f64(a), _f64(b), dtype, tol, 0.0, name, "grad")
                for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(rg), strict=True)
            ]
            g_rel = max(cc.max_rel for cc in comps)
            g_ok = all(cc.ok for cc in comps)
        layers.append(LayerCheck(name, d.max_abs, d.max_rel, d.ok, g_rel, g_ok))
        if not d.ok and first is None:
            first = name
            later = [n for n in order[pos + 1 :] if not name.startswith(n + "/")]
            culprit = later[0] if later else f"loss {loss.name!r}"
        if d.ok and not g_ok and first is None and culprit is None:
            culprit = name
            first = name
    loss_err = abs(float(c) - float(rc))
    ok = (
        all(lc.delta_ok and lc.grad_ok for lc in layers)
        and loss_err <= tol * max(1.0, abs(float(rc)))
        and state_err <= tol
    )
    return NetworkReport(loss_err, layers, first, culprit, ok, state_err)

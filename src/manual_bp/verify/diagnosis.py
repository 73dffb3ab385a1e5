"""Why a rule is wrong: the structural patterns of a wrong cotangent (a transposed result, a
missing sum over a broadcast axis, a sign flip, a constant scale factor), errors confined to kink
points, precision-only problems (passes in float64), and inputs that exercise one branch only.

An error that fits no pattern is described (:func:`describe`): where it sits (which axes and
indices carry it, or all elements), its size against the true cotangent, and whether
got/expected is a factor that varies as a function of an input; :func:`setting_effects` says
whether it vanishes or changes when a static setting of the rule changes (a rule whose
derivative forgot a factor β is right at β = 1).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .oracles import evaluator
from .tolerances import compare, f64, float64_array, float64_copies, is_float, tolerance_for

__all__ = [
    "close",
    "describe",
    "diagnose_pattern",
    "domain_warnings",
    "explain",
    "primal_names",
    "setting_effects",
]


def primal_names(rule: Any, n: int) -> list[str]:
    """The names of a rule's first ``n`` primals, from its forward's signature."""
    try:
        params = [
            p.name
            for p in inspect.signature(rule.fwd).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"primal{i}" for i in range(n)]


def close(a, e, tol):
    scale = max(float(np.max(np.abs(e), initial=0)), 1e-300)
    return a.shape == e.shape and bool(np.all(np.abs(a - e) <= tol * (np.abs(e) + scale)))


def diagnose_pattern(name: str, a: np.ndarray, e: np.ndarray, tol: float) -> str | None:
    """A structural error in a (got) relative to e (expected), or None."""
    if a.shape != e.shape:
        if a.ndim == 2 and a.shape == e.shape[::-1] and close(a.T, e, tol):
            return f"{name}: transposed result (got shape {a.shape}, expected {e.shape})"
        if a.ndim > e.ndim and a.shape[a.ndim - e.ndim :] == e.shape:
            axes = tuple(range(a.ndim - e.ndim))
            if close(a.sum(axis=axes), e, tol):
                return (
                    f"{name}: missing sum over broadcast axes {axes}: got shape {a.shape}, "
                    f"expected {e.shape}; sum the cotangent over the axes the forward broadcast"
                )
        if a.ndim == e.ndim:
            axes = tuple(i for i in range(a.ndim) if e.shape[i] == 1 and a.shape[i] != 1)
            if axes and close(a.sum(axis=axes, keepdims=True), e, tol):
                return f"{name}: missing sum over broadcast axes {axes} (kept as size 1)"
        return f"{name}: wrong shape: got {a.shape}, expected {e.shape}"
    if not np.any(e):
        return None
    if close(-a, e, tol):
        return f"{name}: sign flip (got −1 × the true cotangent)"
    if a.ndim >= 2 and a.shape[-1] == a.shape[-2] and close(np.swapaxes(a, -1, -2), e, tol):
        return f"{name}: transposed result (the last two axes are swapped)"
    c = float(np.vdot(a, e) / np.vdot(e, e))
    if abs(c - 1) > 10 * tol and close(a, c * e, tol):
        return f"{name}: constant scale factor: got {c:.6g} × the true cotangent"
    return None


def explain(
    rule, static, primals, stacked, diff, k, i, label, a_all, e_all, fd, kink, tol, dtype
) -> str:
    """Name the kind of error in primal i's cotangent."""
    pattern = diagnose_pattern(label, a_all[0], e_all[0], max(tol, 1e-6))
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
            key = tuple(sorted(static.items()))
            ours64, theirs64 = evaluator(rule, key, diff, None, False)(
                float64_copies(primals), float64_array(stacked)
            )[1:3]
            c64 = compare(
                f64(ours64[i]),
                f64(theirs64[k]),
                jnp.float64,
                tolerance_for(jnp.float64),
                0.0,
                label,
                "",
            )
        if c64.ok:
            return (
                f"{label}: precision-only problem: passes in float64, fails in {dtype.name} "
                "(an unstable formula or cancellation; rewrite it from stable primitives)"
            )
    names = primal_names(rule, len(primals))
    inputs = {
        names[j]: f64(p)
        for j, p in enumerate(primals)
        if is_float(p) and p.shape == a_all.shape[1:]
    }
    effects = setting_effects(rule, static, primals, stacked, diff, k, i, tol, a_all, e_all)
    return describe(label, a_all[0], e_all[0], tol, inputs, effects)


def describe(
    label: str,
    a: np.ndarray,
    e: np.ndarray,
    tol: float,
    inputs: Mapping[str, np.ndarray] | None = None,
    effects: tuple[str, ...] | list[str] = (),
    floor: float = 0.0,
) -> str:
    """Where an error that fits no pattern sits in ``a`` (got) against ``e`` (expected), and
    what it looks like: the elements, axes and indices that carry it (judged as
    :func:`~manual_bp.verify.tolerances.compare` does, on the scale max(max|e|, ``floor``)),
    its norm against the true cotangent's, whether got/expected varies as a function of one of
    ``inputs`` (arrays of ``a``'s shape, by name), then ``effects`` (:func:`setting_effects`)
    and the worst element."""
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    finite = np.isfinite(a) & np.isfinite(e)
    err = np.where(finite, np.abs(np.where(finite, a - e, 0)), 0)
    scale = max(float(np.max(np.abs(np.where(finite, e, 0)), initial=0)), floor, 1e-300)
    bad = (err > tol * (np.abs(np.where(finite, e, 0)) + scale)) | (
        np.isfinite(a) != np.isfinite(e)
    )
    parts = [
        f"{label}: unclassified error at {int(bad.sum())} of {bad.size} elements, {_where(bad)}"
    ]
    norm = float(np.linalg.norm(np.where(finite, e, 0)))
    if norm > 0:
        parts.append(
            f"error norm {float(np.linalg.norm(err)) / norm:.3g} × the true cotangent's "
            f"(largest error {float(err.max(initial=0)) / scale:.3g} × "
            + ("max|expected|)" if scale == float(np.max(np.abs(e[finite]))) else f"{scale:.3g})")
        )
    else:
        parts.append(f"the true value is 0 there; largest error {float(err.max(initial=0)):.3g}")
    ratio = _ratio(a, e, finite & bad, finite & (np.abs(e) > 1e-3 * scale), inputs or {})
    parts += [ratio] if ratio else []
    parts += list(effects)
    if err.size:
        ix = tuple(int(j) for j in np.unravel_index(int(np.argmax(err)), err.shape))
        parts.append(f"worst at {ix}: got {a[ix]:.6g}, expected {e[ix]:.6g}")
    return "; ".join(parts)


def _where(bad: np.ndarray) -> str:
    """Which elements carry the error: all, one, or the indices along each axis."""
    if bad.all():
        return "spread over all of them"
    if bad.sum() == 1:
        return f"confined to the single element {tuple(int(j) for j in np.argwhere(bad)[0])}"
    confined, only = [], []
    for axis in range(bad.ndim):
        if bad.shape[axis] < 2:
            continue
        hit = np.flatnonzero(bad.any(axis=tuple(j for j in range(bad.ndim) if j != axis)))
        if hit.size == 1:
            confined.append(f"index {int(hit[0])} along axis {axis}")
        elif hit.size < bad.shape[axis]:
            shown = ", ".join(str(int(j)) for j in hit[:8]) + (", …" if hit.size > 8 else "")
            only.append(f"indices [{shown}] along axis {axis}")
    if confined:
        return "confined to " + " and ".join(confined)
    if only:
        return "only at " + " and ".join(only)
    return "scattered over every index of every axis"


def _ratio(a, e, bad, sizable, inputs) -> str | None:
    """got/expected where the expected value is not small: a factor confined to the wrong
    elements, or one that varies, and the inputs it is a function of."""
    if sizable.sum() < 2:
        return None
    r = a[sizable] / e[sizable]
    rb = a[bad & sizable] / e[bad & sizable]
    if not rb.size:
        return None
    if np.ptp(rb) <= 1e-3 * max(1.0, float(np.max(np.abs(rb)))):
        return f"there got = {float(np.mean(rb)):.4g} × expected, elsewhere it is right"
    where = "" if (bad | ~sizable).all() else " where it is wrong"
    text = f"got/expected varies{where} from {float(np.min(rb)):.3g} to {float(np.max(rb)):.3g}"
    tracks = [n for n, x in inputs.items() if np.shape(x) == a.shape and _tracks(r, x[sizable])]
    return text + (f", a function of {', '.join(tracks)}" if tracks else "")


def _tracks(r: np.ndarray, x: np.ndarray) -> bool:
    """Whether r is a function of x, poles and all: neighbours in x's order have nearby ranks
    of r (12 values or more; the median step at most a tenth of their number, where an
    unrelated order gives about three tenths)."""
    if r.size < 12 or np.ptp(x) == 0 or np.ptp(r) == 0:
        return False
    rank = np.argsort(np.argsort(r, kind="stable"), kind="stable")
    steps = np.abs(np.diff(rank[np.argsort(x, kind="stable")]))
    return bool(np.median(steps) <= max(1.0, 0.1 * r.size))


def setting_effects(rule, static, primals, stacked, diff, k, i, tol, a_all, e_all) -> list[str]:
    """For each float static setting s of the rule: whether primal i's error vanishes at
    s = 1 or s = 0, or how it changes at 2s (the backward mishandles s)."""
    effects = []
    before = _rel_error(a_all, e_all)
    for name, value in static.items():
        if isinstance(value, bool) or not isinstance(value, float):
            continue
        errors = {}
        for trial in (1.0, 0.0, 2 * value):
            if trial == value:
                continue
            key = tuple(sorted({**static, name: trial}.items()))
            try:
                ours, theirs = evaluator(rule, key, diff, None, False)(primals, stacked)[1:3]
                errors[trial] = _rel_error(f64(ours[i]), f64(theirs[k]))
            except Exception:  # a setting outside the rule's domain: no evidence either way
                continue
            if trial != 2 * value and errors[trial] <= tol:
                effects.append(
                    f"the error vanishes at {name}={trial:g} ({name} is {value:g} here): the "
                    f"backward mishandles {name} (a factor or term in {name} missing or wrong)"
                )
                break
        else:
            after = errors.get(2 * value, float("inf"))
            if np.isfinite([before, after]).all() and abs(after - before) > 0.1 * max(
                before, after
            ):
                effects.append(
                    f"the error changes with {name}: relative error {before:.3g} at "
                    f"{name}={value:g}, {after:.3g} at {name}={2 * value:g}"
                )
    return effects


def _rel_error(a, e) -> float:
    """max|a − e| / max|e|; infinite where the shapes differ or a value is not finite."""
    if np.shape(a) != np.shape(e) or not (np.isfinite(a).all() and np.isfinite(e).all()):
        return float("inf")
    return float(np.max(np.abs(a - e), initial=0)) / max(
        float(np.max(np.abs(e), initial=0)), 1e-300
    )


def domain_warnings(primals, out, diff, names) -> list[str]:
    """Warn when the inputs exercise only one branch of an elementwise rule."""
    warnings = []
    o = f64(out)
    for i in diff:
        x = f64(primals[i])
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

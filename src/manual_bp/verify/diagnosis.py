"""Why a rule is wrong: the structural patterns of a wrong cotangent (a transposed result, a
missing sum over a broadcast axis, a sign flip, a constant scale factor), errors confined to kink
points, precision-only problems (passes in float64), and inputs that exercise one branch only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .oracles import evaluator
from .tolerances import compare, f64, is_float, tolerance_for

__all__ = ["close", "diagnose_pattern", "domain_warnings", "explain"]


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
            p64 = tuple(p.astype(jnp.float64) if is_float(p) else p for p in primals)
            key = tuple(sorted(static.items()))
            _, ours64, theirs64, _, _ = evaluator(rule, key, diff, None)(
                p64, stacked.astype(jnp.float64)
            )
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
    bad = np.abs(a_all - e_all) > tol * (np.abs(e_all) + np.max(np.abs(e_all), initial=0))
    ix = tuple(int(j) for j in np.unravel_index(int(np.argmax(np.abs(a_all - e_all))), a_all.shape))
    return (
        f"{label}: unclassified error at {int(bad.sum())} of {bad.size} elements; worst at "
        f"{ix[1:]} (cotangent {ix[0]}): got {a_all[ix]:.6g}, expected {e_all[ix]:.6g}"
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

"""Comparison helpers shared by the test modules."""

from __future__ import annotations

import zlib

import chex
import jax
import jax.numpy as jnp
import numpy as np

from manual_bp.verify import tolerance_for


def rng_for(*key) -> np.random.Generator:
    """A generator seeded from the test case's identity, so every case draws its own values."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def random_cotangent(rng: np.random.Generator, like) -> jnp.ndarray:
    """A standard-normal cotangent (never ones) with the shape and dtype of ``like``."""
    ct = jnp.asarray(rng.standard_normal(np.shape(like)) + 0.1, like.dtype)
    assert not np.all(np.asarray(ct) == 1), "a cotangent of ones checks nothing"
    return ct


def as_f64(x) -> np.ndarray:
    """``x`` as a float64 numpy array, converted on the host (exact from every float dtype)."""
    return np.asarray(x).astype(np.float64)


def assert_close(
    actual, expected, dtype, what: str, tol: float | None = None, scale_floor: float = 0.0
) -> None:
    """Elementwise |a − e| <= tol·|e| + tol·max(max|e|, scale_floor), equal inf/NaN patterns.

    ``scale_floor`` is the size of the terms the result was computed from (for a backward,
    the largest cotangent entry): a result that cancels to nearly zero, such as a softmax
    gradient, carries rounding error on that scale, not on its own.
    """
    tol = tolerance_for(dtype) if tol is None else tol
    a = np.atleast_1d(as_f64(actual))
    e = np.atleast_1d(as_f64(expected))
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    finite = np.isfinite(e)
    np.testing.assert_array_equal(np.isfinite(a), finite, err_msg=f"{what}: finite pattern")
    np.testing.assert_array_equal(a[~finite], e[~finite], err_msg=f"{what}: non-finite values")
    if not finite.any():
        return
    scale = max(float(np.max(np.abs(e[finite]))), scale_floor, np.finfo(np.float64).tiny)
    err = np.abs(np.where(finite, a, 0) - np.where(finite, e, 0))
    bound = tol * np.abs(e) + tol * scale
    bad = err > bound
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(finite, err - bound, -np.inf)), a.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.size} elements differ beyond tol={tol}; worst at "
            f"{tuple(int(j) for j in i)}: got {a[i]!r}, expected {e[i]!r} "
            f"(max abs err {float(err.max()):.3g}, scale {scale:.3g})"
        )


def assert_trees_close(
    actual,
    expected,
    dtype,
    what: str,
    tol: float | None = None,
    kind: str = "rule",
    scale_floor: float = 0.0,
) -> None:
    """Two trees of one structure, leaf by leaf within :func:`assert_close`'s bound: the tolerance
    of ``dtype`` (``kind`` ``"rule"`` or ``"network"``, or ``tol``) relative to each element and to
    the largest finite entry of its expected leaf (or ``scale_floor``); shapes and inf/NaN
    patterns equal."""
    tol = tolerance_for(dtype, kind) if tol is None else tol
    chex.assert_trees_all_equal_structs(actual, expected)
    pairs = zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected), strict=True)
    for (path, a), e in pairs:
        a, e = as_f64(a), as_f64(e)
        finite = np.abs(e[np.isfinite(e)])
        scale = max(float(finite.max(initial=0.0)), scale_floor, np.finfo(np.float64).tiny)
        chex.assert_trees_all_close(
            a,
            e,
            rtol=tol,
            atol=tol * scale,
            strict=True,
            custom_message=f"{what}{jax.tree_util.keystr(path)} (tol={tol}, scale {scale:.3g})",
        )


def assert_matches_reference(name: str, got, expected, dtype) -> None:
    """``got`` and ``expected`` are ``(C, grads, deltas)`` from manual_bp and the reference:
    the loss, every gradient and every delta agree within the network tolerance of ``dtype``, with
    the same names, dtypes and shapes, and no expected gradient or delta is vacuously all zero."""
    (c, grads, deltas), (rc, rgrads, rdeltas) = got, expected
    assert c.dtype == dtype and c.shape == (), f"{name}: loss is {c.shape} {c.dtype}"
    assert_close(c, rc, dtype, f"{name}: loss", tol=tolerance_for(dtype, "network"))
    assert set(deltas) == set(rdeltas), f"{name}: delta names {set(deltas)} vs {set(rdeltas)}"
    chex.assert_trees_all_equal_structs(grads, rgrads)
    chex.assert_trees_all_equal_shapes(grads, rgrads)
    chex.assert_type(jax.tree.leaves(grads), dtype)
    for path, e in jax.tree_util.tree_leaves_with_path({"grads": rgrads, "deltas": rdeltas}):
        where = f"{name}: {jax.tree_util.keystr(path)}"
        assert np.any(np.asarray(e, np.float64) != 0), f"{where} is vacuously zero"
    assert_trees_close(
        {"grads": grads, "deltas": deltas},
        {"grads": rgrads, "deltas": rdeltas},
        dtype,
        name,
        kind="network",
    )

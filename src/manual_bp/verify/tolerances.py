"""The one tolerance table and the one comparison every check of the package uses.

:data:`TOLERANCE` gives, per dtype, the allowed error of a single rule against autodiff and of a
whole network (the loss, every delta and gradient, after many rules' rounding) against the
reference. :func:`compare` judges two arrays elementwise against that tolerance on the scale of
the comparison, ``|a − e| <= tol·|e| + tol·max(max|e|, floor)``, and reports the max absolute and
relative error, the error in units in the last place and the worst index.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "FD_TOLERANCE",
    "MAX_FD_ELEMENTS",
    "ROUNDING_FACTOR",
    "TOLERANCE",
    "Comparison",
    "Tolerance",
    "check_tolerance",
    "compare",
    "f64",
    "float64_array",
    "float64_copies",
    "is_float",
    "tolerance_for",
    "ulp_spacing",
]


class Tolerance(NamedTuple):
    """The allowed relative error of one dtype: ``rule`` for one rule's backward against
    autodiff, ``network`` for a whole network's loss, deltas and gradients."""

    rule: float
    network: float


TOLERANCE: dict[str, Tolerance] = {
    "float64": Tolerance(rule=1e-10, network=1e-10),
    "float32": Tolerance(rule=2e-5, network=1e-4),
    "float16": Tolerance(rule=5e-3, network=2.5e-2),
    "bfloat16": Tolerance(rule=2e-2, network=1e-1),
}
"""Default tolerances by dtype name: |a − e| <= tol·|e| + tol·max(max|e|, floor) per element."""


ROUNDING_FACTOR = 4.0
"""How many times autodiff's own rounding error a handwritten result may carry. Below float64,
a backward is also judged on the rounding that ``jax.vjp`` of the same forward makes in that
dtype (measured against float64): a cancellation the dtype cannot resolve (layer norm's
``g γ − mean(g γ) − x̂ mean(g γ x̂)`` in bfloat16) is noise for autodiff too, not a bug."""


def tolerance_for(dtype: Any, kind: str = "rule") -> float:
    """The tolerance of ``kind`` (``"rule"`` or ``"network"``) for ``dtype`` (float32's for a
    dtype outside the table)."""
    if kind not in Tolerance._fields:
        raise ValueError(f"tolerance_for: kind must be one of {Tolerance._fields}, got {kind!r}")
    try:
        name = np.dtype(dtype).name
    except TypeError:
        raise TypeError(f"tolerance_for: expected a dtype, got {dtype!r}") from None
    return getattr(TOLERANCE.get(name, TOLERANCE["float32"]), kind)


def check_tolerance(where: str, tolerance: Any) -> None:
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


FD_TOLERANCE = 1e-6
"""The tolerance of float64 central finite differences (step 1e-6 · max(1, max|x|)): their
truncation and rounding error, relative to the scale of the comparison. The network check's
differences of the loss along random directions use it; the rule check's differences
(:mod:`~manual_bp.verify.oracles`) use the same value."""

MAX_FD_ELEMENTS = 2048
"""Primals up to this size get element-by-element finite differences; larger ones 16 random
directions (no kink detection)."""


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
    scale: float = 0.0
    """The scale the error was judged on: max(max|e|, the scale of the computation)."""


def f64(x: Any) -> np.ndarray:
    """``x`` as a float64 NumPy array, converted on the host: exact for every float dtype
    (bfloat16 included), and no XLA program to compile per shape and dtype."""
    return np.asarray(np.asarray(x), dtype=np.float64)


def float64_array(x: Any) -> jax.Array:
    """``x`` as a float64 JAX array: converted on the host (exactly, by :func:`f64`) and put on
    the device, so no XLA program is compiled per shape and dtype (``jnp.asarray`` of a NumPy
    array compiles one); call it under ``jax.enable_x64(True)``."""
    return jax.device_put(f64(x))


def float64_copies(values: tuple) -> tuple:
    """The float entries of ``values`` as :func:`float64_array` copies, the others unchanged;
    call it under ``jax.enable_x64(True)``."""
    return tuple(float64_array(v) if is_float(v) else v for v in values)


def is_float(x: Any) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating)


def ulp_spacing(e: np.ndarray, dtype: Any, scale: float) -> np.ndarray:
    """The spacing of ``dtype`` at |e|, floored at 1e-3 of the comparison's scale."""
    fi = jnp.finfo(dtype)
    mag = np.maximum(np.abs(e), max(1e-3 * scale, float(fi.tiny)))
    return float(fi.eps) * np.exp2(np.floor(np.log2(mag)))


def compare(a, e, dtype, tol, floor, primal, against, exclude=None) -> Comparison:
    """Compare arrays a (got) and e (expected), both float64 numpy of one shape.

    The error is judged on the scale of the computation, not of the result alone:
    ``scale = max(max|e|, floor)``, where ``floor`` is the size of the terms the result was
    computed from (a backward's cotangent, a layer's whole gradient, a loss's per-example terms
    and logits), and ``|a − e| <= tol·|e| + tol·scale`` per element. A result that is exactly 0
    (a bias before a normalization) is held to the rounding of that computation, not to 0.
    """
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
        ulp = err / ulp_spacing(np.where(finite, e, 0), dtype, scale)
    return Comparison(
        primal=primal,
        against=against,
        max_abs=max_abs,
        max_rel=max_abs / scale,
        scale=scale,
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

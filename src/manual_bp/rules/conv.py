"""Convolution and pooling over NHWC images: conv2d, max_pool2d, avg_pool2d and flatten.

Index letters: ``n`` batch, ``h, w`` input rows and columns, ``p, q`` output rows and columns,
``i, j`` kernel (window) rows and columns, ``c`` input channels, ``o`` output channels, ``G``
groups. ``s`` is the stride, ``d`` the kernel dilation, ``xpad`` the input padded by
``(lo, hi)`` on each spatial side; along one spatial axis of size H a kernel of size k has
the effective size ``(k − 1)·d + 1`` and there are ``P = ⌊(H + lo + hi − ((k − 1)·d + 1)) / s⌋ + 1``
outputs.

Padding is ``"SAME"`` (P = ⌈H / s⌉, the total padding split with the smaller half on top/left,
as in ``lax``), ``"VALID"`` (none) or explicit ``((top, bottom), (left, right))`` of
non-negative ints.

Backward passes are convolutions too: a strided convolution's input gradient is a transposed
convolution (the cotangent dilated by the stride, ``lhs_dilation``), and its kernel gradient
is a convolution of the input with the cotangent (dilated by the stride, strided by the
dilation). Pooling backward passes scatter each window's cotangent back with one
strided ``lax.pad`` per window offset (i, j) — a loop over the kh·kw offsets, never over
positions. Forward passes (jvps) are the same operations on the tangents: convolution is
bilinear, so ẏ = conv(ẋ, w) + conv(x, ẇ) + ḃ; average pooling and flatten are linear; max
pooling reads each tangent at its window's first maximum, the tie convention of its backward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax

from .._checks import (
    require_float,
    require_ndim,
    require_positive_int,
    require_same_dtype,
    require_shape,
)
from .contract import register

__all__ = ["Conv2DResiduals", "avg_pool2d", "conv2d", "flatten", "max_pool2d"]


class Conv2DResiduals(NamedTuple):
    """What ``conv2d``'s backward needs: the input image x (NHWC) and the kernel w (HWIO)."""

    x: Any
    w: Any


_NHWC = ("NHWC", "HWIO", "NHWC")
Pads = tuple[tuple[int, int], tuple[int, int]]


# ---- settings: checked once, shared by forward and backward --------------------------------


def pair(op: str, arg: str, value: Any) -> tuple[int, int]:
    """An int or a pair of ints, each positive, as a pair."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, Sequence)
        or len(value) != 2
        or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in value)
    ):
        raise TypeError(f"{op}: {arg} must be an int or a pair of ints, got {value!r}")
    if any(v <= 0 for v in value):
        raise ValueError(f"{op}: {arg} must be positive, got {tuple(value)}")
    return int(value[0]), int(value[1])


def padding_spec(op: str, padding: Any) -> str | Pads:
    """``"SAME"``, ``"VALID"`` or ((top, bottom), (left, right)) of non-negative ints."""
    if isinstance(padding, str):
        if padding in ("SAME", "VALID"):
            return padding
    elif (
        isinstance(padding, Sequence)
        and len(padding) == 2
        and all(isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2 for p in padding)
        and all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) for p in padding for v in p
        )
    ):
        if any(v < 0 for p in padding for v in p):
            raise ValueError(f"{op}: explicit padding must be non-negative, got {padding!r}")
        return tuple((int(lo), int(hi)) for lo, hi in padding)  # type: ignore[return-value]
    raise ValueError(
        f'{op}: padding must be "SAME", "VALID" or ((top, bottom), (left, right)) of '
        f"non-negative ints, got {padding!r}"
    )


class _Geometry(NamedTuple):
    """Where each window sits along the two spatial axes."""

    size: tuple[int, int]  # H, W
    window: tuple[int, int]  # effective (dilated) window size
    strides: tuple[int, int]
    pads: Pads
    out: tuple[int, int]  # P, Q

    @property
    def padded(self) -> tuple[int, int]:
        return tuple(n + lo + hi for n, (lo, hi) in zip(self.size, self.pads, strict=True))

    @property
    def unused(self) -> tuple[int, int]:
        """Rows/columns at the bottom/right of xpad that no window reaches."""
        return tuple(
            n - ((p - 1) * s + k)
            for n, p, s, k in zip(self.padded, self.out, self.strides, self.window, strict=True)
        )


def _geometry(op: str, size, window, strides, padding: str | Pads, what: str) -> _Geometry:
    if padding == "VALID":
        pads = ((0, 0), (0, 0))
    elif padding == "SAME":
        pads = []
        for n, k, s in zip(size, window, strides, strict=True):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        pads = tuple(pads)
    else:
        pads = padding
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(size, pads, strict=True))
    if any(k > n for k, n in zip(window, padded, strict=True)):
        raise ValueError(
            f"{op}: the {what} is larger than the padded input {padded} "
            f"(input {tuple(size)}, padding {pads})"
        )
    out = tuple((n - k) // s + 1 for n, k, s in zip(padded, window, strides, strict=True))
    return _Geometry(tuple(size), tuple(window), tuple(strides), pads, out)


def conv_geometry(x_shape, w_shape, strides, padding, dilation) -> _Geometry:
    strides = pair("conv2d", "strides", strides)
    dilation = pair("conv2d", "dilation", dilation)
    padding = padding_spec("conv2d", padding)
    window = tuple((k - 1) * d + 1 for k, d in zip(w_shape[:2], dilation, strict=True))
    what = f"kernel {tuple(w_shape[:2])}"
    if dilation != (1, 1):
        what += f" dilated by {dilation} (spanning {window})"
    return _geometry("conv2d", x_shape[1:3], window, strides, padding, what)


def pool_geometry(op: str, x_shape, window, strides, padding) -> _Geometry:
    window = pair(op, "window", window)
    strides = window if strides is None else pair(op, "strides", strides)
    padding = padding_spec(op, padding)
    if not isinstance(padding, str) and any(
        v >= k for (lo, hi), k in zip(padding, window, strict=True) for v in (lo, hi)
    ):
        raise ValueError(
            f"{op}: explicit padding must be smaller than the window on every side (a window "
            f"lying wholly in the padding has no input), got padding {padding} for window {window}"
        )
    return _geometry(op, x_shape[1:3], window, strides, padding, f"window {window}")


def _require_nhwc(op: str, x: Any) -> None:
    require_float(op, "x", x)
    require_ndim(op, "x", x, exactly=4)


def _shape_token(x: Any) -> Any:
    """A zero-size array whose leading dims are x's shape: the backward needs only the shape,
    and residuals must be arrays (they pass through ``jax.custom_vjp``)."""
    return jnp.zeros((*x.shape, 0), x.dtype)


# ---- conv2d ---------------------------------------------------------------------------------


def _conv2d_fwd(x, w, b, *, strides=(1, 1), padding="SAME", dilation=(1, 1), groups=1):
    """y[n,p,q,o] = Σ_{i,j,c} xpad[n, p·s + i·d, q·s + j·d, g(o)·C/G + c] w[i,j,c,o] + b[o].

    x is (N, H, W, C), w is (kh, kw, C/G, O) with the O outputs in G consecutive groups,
    g(o) = o // (O/G) the group of output o; b is (O,). The residuals are x and w.
    """
    for arg, a in (("x", x), ("w", w), ("b", b)):
        require_float("conv2d", arg, a)
    require_same_dtype("conv2d", x=x, w=w, b=b)
    require_ndim("conv2d", "x", x, exactly=4)
    require_ndim("conv2d", "w", w, exactly=4)
    groups = require_positive_int("conv2d", "groups", groups)
    c, (kh, kw, cg, o) = x.shape[3], w.shape
    if c % groups or o % groups:
        raise ValueError(
            f"conv2d: input channels ({c}) and output channels ({o}) must both be divisible "
            f"by groups={groups}"
        )
    if cg != c // groups:
        raise ValueError(
            f"conv2d: w must have shape (kh, kw, C / groups, O) = ({kh}, {kw}, {c // groups}, {o}) "
            f"for x of shape {tuple(x.shape)} and groups={groups}, got {tuple(w.shape)}"
        )
    require_shape("conv2d", "b", b, (o,))
    y = _convolve(x, w, strides, padding, dilation, groups)
    return y + jnp.reshape(b, (1, 1, 1, o)), Conv2DResiduals(x, w)


def _convolve(x, w, strides, padding, dilation, groups):
    """Σ_{i,j,c} xpad[n, p·s + i·d, q·s + j·d, g(o)·C/G + c] w[i,j,c,o]: conv2d without b."""
    geo = conv_geometry(x.shape, w.shape, strides, padding, dilation)
    return lax.conv_general_dilated(
        x,
        w,
        geo.strides,
        geo.pads,
        rhs_dilation=pair("conv2d", "dilation", dilation),
        dimension_numbers=_NHWC,
        feature_group_count=int(groups),
    )


def _conv2d_jvp(res, dx, dw, db, *, strides=(1, 1), padding="SAME", dilation=(1, 1), groups=1):
    """dy = conv(dx, w) + conv(x, dw) + db: the convolution is bilinear in (x, w)."""
    x, w = res
    conv = _convolve(dx, w, strides, padding, dilation, groups)
    conv = conv + _convolve(x, dw, strides, padding, dilation, groups)
    return conv + jnp.reshape(db, (1, 1, 1, db.shape[0]))


def _conv2d_bwd(res, g, *, strides=(1, 1), padding="SAME", dilation=(1, 1), groups=1):
    """dx[h] = Σ_{p·s+i·d=h+lo} g[p] w[i]ᵀ;  dw[i] = Σ_{n,p} xpad[p·s+i·d]ᵀ g[p];  db = Σ_{n,p,q} g.

    Per spatial axis (both axes alike), with the channel contractions of each group.
    """
    x, w = res
    kh, kw, cg, o = w.shape
    dilation = pair("conv2d", "dilation", dilation)
    geo = conv_geometry(x.shape, w.shape, strides, padding, dilation)

    # dx[h] = Σ_{p,i: p·s + i·d = h + lo} g[p] w[i]: g dilated by s (zeros between rows),
    # padded so every (p, i) pair lands, correlated with the flipped kernel with each group's
    # input and output channels swapped: (kh, kw, C/G, G·O/G) -> (kh, kw, O/G, G·C/G).
    w_t = jnp.reshape(w, (kh, kw, cg, groups, o // groups))
    w_t = jnp.reshape(jnp.transpose(w_t, (0, 1, 4, 3, 2)), (kh, kw, o // groups, groups * cg))
    w_t = jnp.flip(w_t, axis=(0, 1))
    dx_pads = tuple(
        (k - 1 - lo, k - 1 - hi + r)
        for k, (lo, hi), r in zip(geo.window, geo.pads, geo.unused, strict=True)
    )
    dx = lax.conv_general_dilated(
        g,
        w_t,
        (1, 1),
        dx_pads,
        lhs_dilation=geo.strides,
        rhs_dilation=dilation,
        dimension_numbers=_NHWC,
        feature_group_count=int(groups),
    )

    # dw: a convolution over (h, w) with the batch n as the contracted feature axis and the
    # channels c as the batch axis; the kernel is g dilated by s, stepped by d. Groups: the
    # channel axis (G groups of C/G) is split with batch_group_count, pairing the inputs of
    # group k with the outputs of group k. Padding stops at the last row any window reaches.
    # x and g are transposed explicitly so the convolution itself is a plain NHWC/HWIO one:
    # inside lax.scan XLA CPU runs the same convolution written with permuted dimension
    # numbers on a path about 5x slower (benchmarks/NOTES.md).
    dw = lax.conv_general_dilated(
        jnp.transpose(x, (3, 1, 2, 0)),  # (C, H, W, N): channels as the batch, n as features
        jnp.transpose(g, (1, 2, 0, 3)),  # (P, Q, N, O): the kernel, n contracted
        dilation,
        tuple((lo, hi - r) for (lo, hi), r in zip(geo.pads, geo.unused, strict=True)),
        rhs_dilation=geo.strides,
        dimension_numbers=_NHWC,
        batch_group_count=int(groups),
    )  # (C, kh, kw, O)
    dw = jnp.transpose(dw, (1, 2, 0, 3))
    db = jnp.sum(g, axis=(0, 1, 2))
    return dx, dw, db


conv2d = register("conv2d", _conv2d_fwd, _conv2d_bwd, _conv2d_jvp)


# ---- pooling: windows by strided slices, and their transpose --------------------------------


def _window(xp: Any, i: int, j: int, geo: _Geometry) -> Any:
    """xp[n, p·s + i, q·s + j, c] for every output (p, q): the (i, j)-th entry of each window."""
    (sh, sw), (ph, pw) = geo.strides, geo.out
    n, _, _, c = xp.shape
    return lax.slice(
        xp, (0, i, j, 0), (n, i + (ph - 1) * sh + 1, j + (pw - 1) * sw + 1, c), (1, sh, sw, 1)
    )


def _unwindow(v: Any, i: int, j: int, geo: _Geometry) -> Any:
    """The transpose of :func:`_window`, cropped to x: v[n,p,q,c] lands at xpad[n,p·s+i,q·s+j,c]."""
    (sh, sw), (ph, pw), (hp, wp) = geo.strides, geo.out, geo.padded
    placed = lax.pad(
        v,
        jnp.zeros((), v.dtype),
        (
            (0, 0, 0),
            (i, hp - i - (ph - 1) * sh - 1, sh - 1),
            (j, wp - j - (pw - 1) * sw - 1, sw - 1),
            (0, 0, 0),
        ),
    )
    ((top, _), (left, _)), (h, w) = geo.pads, geo.size
    return placed[:, top : top + h, left : left + w, :]


def _offsets(geo: _Geometry) -> list[tuple[int, int]]:
    """Window offsets (i, j) in row-major order."""
    kh, kw = geo.window
    return [(i, j) for i in range(kh) for j in range(kw)]


def _pad4(geo: _Geometry) -> tuple[tuple[int, int, int], ...]:
    (top, bottom), (left, right) = geo.pads
    return ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0))


# ---- max_pool2d -----------------------------------------------------------------------------


def _max_pool2d_fwd(x, *, window=(2, 2), strides=None, padding="VALID"):
    """y[n,p,q,c] = max_{i,j} xpad[n, p·s + i, q·s + j, c], xpad padded with −inf.

    The residuals are, per output, the row-major index k = i·kw + j of the *first* maximum in
    its window (ties go to the earliest entry), and x's shape.
    """
    _require_nhwc("max_pool2d", x)
    geo = pool_geometry("max_pool2d", x.shape, window, strides, padding)
    xp = lax.pad(x, jnp.asarray(-jnp.inf, x.dtype), _pad4(geo))
    offsets = _offsets(geo)
    y = _window(xp, *offsets[0], geo)
    arg = jnp.zeros(y.shape, jnp.int32)
    for k, (i, j) in enumerate(offsets[1:], start=1):
        v = _window(xp, i, j, geo)
        later_is_larger = v > y  # strict: an equal later entry does not take over
        y = jnp.where(later_is_larger, v, y)
        arg = jnp.where(later_is_larger, k, arg)
    return y, (arg, _shape_token(x))


def _max_pool2d_bwd(res, g, *, window=(2, 2), strides=None, padding="VALID"):
    """dx[n,h,w,c] = Σ_{(p,q): (h,w) is the first maximum of window (p,q)} g[n,p,q,c].

    Overlapping windows add up; a tied maximum gets nothing unless it comes first.
    """
    arg, token = res
    geo = pool_geometry("max_pool2d", token.shape[:4], window, strides, padding)
    zero = jnp.zeros((), g.dtype)
    dx = sum(
        _unwindow(jnp.where(arg == k, g, zero), i, j, geo) for k, (i, j) in enumerate(_offsets(geo))
    )
    return (dx,)


def _max_pool2d_jvp(res, dx, *, window=(2, 2), strides=None, padding="VALID"):
    """dy[n,p,q,c] = dxpad[n, p·s + i*, q·s + j*, c], (i*, j*) the window's first maximum."""
    arg, token = res
    geo = pool_geometry("max_pool2d", token.shape[:4], window, strides, padding)
    dxp = lax.pad(dx, jnp.zeros((), dx.dtype), _pad4(geo))
    zero = jnp.zeros((), dx.dtype)
    return sum(
        jnp.where(arg == k, _window(dxp, i, j, geo), zero) for k, (i, j) in enumerate(_offsets(geo))
    )


max_pool2d = register("max_pool2d", _max_pool2d_fwd, _max_pool2d_bwd, _max_pool2d_jvp)


# ---- avg_pool2d -----------------------------------------------------------------------------


def _window_counts(geo: _Geometry) -> np.ndarray:
    """|W(p, q)|: how many entries of window (p, q) lie inside x (padding is not counted)."""
    per_axis = []
    for n, k, s, (lo, _), out in zip(
        geo.size, geo.window, geo.strides, geo.pads, geo.out, strict=True
    ):
        start = np.arange(out) * s - lo
        per_axis.append(np.minimum(start + k, n) - np.maximum(start, 0))
    return np.outer(per_axis[0], per_axis[1])


def _avg_pool2d_fwd(x, *, window=(2, 2), strides=None, padding="VALID"):
    """y[n,p,q,c] = (1 / |W(p,q)|) Σ_{(h,w) ∈ W(p,q)} x[n,h,w,c], W(p,q) the window's entries
    inside x: padded positions are not counted in the divisor (count_include_pad=False).

    The residual is x's shape alone.
    """
    _require_nhwc("avg_pool2d", x)
    geo = pool_geometry("avg_pool2d", x.shape, window, strides, padding)
    return _average(x, geo), (_shape_token(x),)


def _average(x, geo: _Geometry):
    """(1 / |W(p,q)|) Σ_{(h,w) ∈ W(p,q)} x[n,h,w,c] for every window (p, q)."""
    (kh, kw), (sh, sw) = geo.window, geo.strides
    pads = tuple((lo, hi) for lo, hi, _ in _pad4(geo))
    total = lax.reduce_window(x, 0.0, lax.add, (1, kh, kw, 1), (1, sh, sw, 1), pads)
    return total / jnp.asarray(_window_counts(geo).reshape((1, *geo.out, 1)), x.dtype)


def _avg_pool2d_jvp(res, dx, *, window=(2, 2), strides=None, padding="VALID"):
    """dy = avg_pool2d(dx): the average is linear."""
    (token,) = res
    return _average(dx, pool_geometry("avg_pool2d", token.shape[:4], window, strides, padding))


def _avg_pool2d_bwd(res, g, *, window=(2, 2), strides=None, padding="VALID"):
    """dx[n,h,w,c] = Σ_{(p,q): (h,w) ∈ W(p,q)} g[n,p,q,c] / |W(p,q)|."""
    (token,) = res
    geo = pool_geometry("avg_pool2d", token.shape[:4], window, strides, padding)
    g_per_entry = g / jnp.asarray(_window_counts(geo).reshape((1, *geo.out, 1)), g.dtype)
    dx = sum(_unwindow(g_per_entry, i, j, geo) for i, j in _offsets(geo))
    return (dx,)


avg_pool2d = register("avg_pool2d", _avg_pool2d_fwd, _avg_pool2d_bwd, _avg_pool2d_jvp)


# ---- flatten --------------------------------------------------------------------------------


def _flatten_fwd(x):
    """y[n, f] = x[n, ...] with the trailing axes flattened row-major: (N, ...) -> (N, Π ...).

    The residual is x's shape alone.
    """
    require_float("flatten", "x", x)
    require_ndim("flatten", "x", x, at_least=2)  # (N,) has no per-example axes to flatten
    return jnp.reshape(x, (x.shape[0], math.prod(x.shape[1:]))), (_shape_token(x),)


def _flatten_bwd(res, g):
    """dx = reshape(g, x.shape)."""
    (token,) = res
    return (jnp.reshape(g, token.shape[:-1]),)


def _flatten_jvp(res, dx):
    """dy = reshape(dx, (N, Π ...)): flattening is linear."""
    return jnp.reshape(dx, (dx.shape[0], math.prod(dx.shape[1:])))


flatten = register("flatten", _flatten_fwd, _flatten_bwd, _flatten_jvp)

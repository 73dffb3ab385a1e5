"""Multi-head scaled dot-product self-attention with its four projections.

Index letters: ``n`` batch, ``t`` query position, ``s`` key position (both range over the T
time steps), ``h`` head, ``e`` feature within a head (E = D / H), ``d`` and ``o`` model
features (D). The forward, one line per step:

* q = x W_q + b_q, k = x W_k + b_k, v = x W_v + b_v, each split into heads (n t d -> n t h e);
* z[n,h,t,s] = Σ_e q[n,t,h,e] k[n,s,h,e] / √E;
* p = softmax_s(z) over the allowed keys s (max-shifted; p = 0 elsewhere);
* c[n,t,h,e] = Σ_s p[n,h,t,s] v[n,s,h,e], merged back (n t h e -> n t d);
* y = c W_o + b_o.

Masks. Key s is allowed for query t when ``mask[n, s]`` (True = a real token, False =
padding) and, with ``causal=True``, s <= t. ``mask`` is always the tenth primal: a boolean
(N, T) array, or ``None`` for "every key" (the same as all-True); it is required (pass
``None`` explicitly) so that the ten cotangents always line up. It is not differentiable
(its cotangent is ``None``). A query with no allowed key (a fully masked row) attends to
nothing: its row of p is all zeros, so its c is 0, its y is b_o, and no gradient flows through
its scores (double ``where``: the masked branch never makes an inf or NaN).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import lax

from .._checks import (
    require_array,
    require_float,
    require_ndim,
    require_same_dtype,
    require_shape,
)
from .contract import register

__all__ = [
    "AttentionDeltas",
    "AttentionResiduals",
    "attention_projection_deltas",
    "multi_head_attention",
]

_OP = "multi_head_attention"


class AttentionResiduals(NamedTuple):
    """What the backward of :func:`multi_head_attention` reads (in float32 for half-precision
    inputs): x (N, T, D); the head-split q, k, v (N, T, H, E); the probabilities p[n,h,t,s]
    (N, H, T, T); the merged context c (N, T, D); and the four weights (D, D). The backward
    uses the weights only to send error backward (dc = g W_oᵀ, dx = Σ d· W_·ᵀ)."""

    x: Any
    q: Any
    k: Any
    v: Any
    p: Any
    c: Any
    wq: Any
    wk: Any
    wv: Any
    wo: Any


def check_attention(
    x, wq, wk, wv, wo, bq, bk, bv, bo, mask, num_heads, causal, op=_OP
) -> tuple[int, ...]:
    """The inputs' dtypes and shapes, named in errors by ``op``; returns (N, T, D, H, E)."""
    arrays = {"x": x, "wq": wq, "wk": wk, "wv": wv, "wo": wo, "bq": bq, "bk": bk, "bv": bv}
    arrays["bo"] = bo
    for arg, a in arrays.items():
        require_float(op, arg, a)
    require_same_dtype(op, **arrays)
    require_ndim(op, "x (N, T, D)", x, exactly=3)
    n, t, d = x.shape
    for arg in ("wq", "wk", "wv", "wo"):
        require_shape(op, f"{arg} (D, D)", arrays[arg], (d, d))
    for arg in ("bq", "bk", "bv", "bo"):
        require_shape(op, f"{arg} (D,)", arrays[arg], (d,))
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads <= 0:
        raise ValueError(f"{op}: num_heads must be a positive int, got {num_heads!r}")
    if d % num_heads:
        raise ValueError(f"{op}: num_heads={num_heads} must divide the features D={d}")
    if not isinstance(causal, bool):
        raise TypeError(f"{op}: causal must be a bool, got {type(causal).__name__}")
    if mask is not None:
        require_array(op, "mask", mask)
        if mask.dtype != jnp.bool_:
            raise TypeError(f"{op}: mask must be a boolean array (True = keep), got {mask.dtype}")
        require_shape(op, "mask (N, T)", mask, (n, t))
    return n, t, d, num_heads, d // num_heads


def widen(*arrays):
    """Half-precision inputs computed in float32 (the softmax and its backward cancel sums);
    float32 and float64 unchanged. Results are cast back to the input dtype."""
    dtype = arrays[0].dtype
    wide = dtype if jnp.finfo(dtype).bits >= 32 else jnp.float32
    return tuple(a.astype(wide) for a in arrays)


def allowed_keys(mask, n, t, causal):
    """allowed[n, 1, t, s]: key s may be attended by query t (broadcast over the heads)."""
    keep = jnp.ones((n, 1, t, t), jnp.bool_)
    if mask is not None:
        keep = keep & jnp.reshape(mask, (n, 1, 1, t))
    if causal:
        keep = keep & jnp.reshape(jnp.tril(jnp.ones((t, t), jnp.bool_)), (1, 1, t, t))
    return keep


def project_heads(x, w, b, shape):
    """x W + b split into heads: (n, t, d) -> (n, t, h, e)."""
    return jnp.reshape(jnp.einsum("ntd,do->nto", x, w) + jnp.reshape(b, (1, 1, -1)), shape)


def _mha_fwd(x, wq, wk, wv, wo, bq, bk, bv, bo, mask, *, num_heads, causal=False):
    """y = merge_h(softmax_s(q kᵀ / √E) v) W_o + b_o with q, k, v = x W + b split into heads.

    The residuals are :class:`AttentionResiduals`: x, the head-split q, k, v, the
    probabilities p, the merged context c and the four weight matrices.
    """
    n, t, d, h, e = check_attention(x, wq, wk, wv, wo, bq, bk, bv, bo, mask, num_heads, causal)
    dtype = x.dtype
    x, wq, wk, wv, wo, bq, bk, bv, bo = widen(x, wq, wk, wv, wo, bq, bk, bv, bo)
    q, k, v = (project_heads(x, w, b, (n, t, h, e)) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
    z = jnp.einsum("nthe,nshe->nhts", q, k) * (1.0 / math.sqrt(e))
    allowed = allowed_keys(mask, n, t, causal)
    m = lax.stop_gradient(jnp.max(jnp.where(allowed, z, -jnp.inf), axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0)  # the shift cancels in p; 0 for a fully masked row
    ez = jnp.where(allowed, jnp.exp(jnp.where(allowed, z - m, 0)), 0)
    total = jnp.sum(ez, axis=-1, keepdims=True)
    p = ez / jnp.where(total > 0, total, 1)  # a fully masked row stays all zeros
    c = jnp.reshape(jnp.einsum("nhts,nshe->nthe", p, v), (n, t, d))
    y = jnp.einsum("ntd,do->nto", c, wo) + jnp.reshape(bo, (1, 1, d))
    return y.astype(dtype), AttentionResiduals(x, q, k, v, p, c, wq, wk, wv, wo)


def projection_cotangents(res, g, dq, dk, dv, dtype):
    """The ten cotangents from those of the projections dq, dk, dv (N, T, H, E) and of the
    output g: dx = Σ d· W_·ᵀ, dW_· = xᵀ d·, dW_o = cᵀ g, db_q = Σ dq, db_v = Σ dv, db_o = Σ g and
    db_k = 0 (a shift of b_k moves all of a query's scores together, which softmax ignores);
    cast to ``dtype``; the mask gets ``None``."""
    n, t, h, e = dq.shape
    dq, dk, dv = (jnp.reshape(a, (n, t, h * e)) for a in (dq, dk, dv))
    dx = (
        jnp.einsum("nto,do->ntd", dq, res.wq)
        + jnp.einsum("nto,do->ntd", dk, res.wk)
        + jnp.einsum("nto,do->ntd", dv, res.wv)
    )
    dws = [jnp.einsum("ntd,nto->do", res.x, a) for a in (dq, dk, dv)]
    dwo = jnp.einsum("ntd,nto->do", res.c, g)
    # db_k = Σ_{n,s} dk = Σ_{n,t} q[n,t]·Σ_s dz[n,t,s] = 0: b_k adds q_t·b_k to every score of
    # query t, which softmax ignores. Written as the exact zero it is, not as a rounding residue.
    dbq, dbv = jnp.sum(dq, axis=(0, 1)), jnp.sum(dv, axis=(0, 1))
    dbo = jnp.sum(g, axis=(0, 1))
    cts = (dx, *dws, dwo, dbq, jnp.zeros_like(dbq), dbv, dbo)
    return (*(a.astype(dtype) for a in cts), None)


class AttentionDeltas(NamedTuple):
    """The per-position deltas of the four projections and the inputs they multiply, in the
    residuals' (widened) dtype: ``x`` (N, T, D), the input of W_q, W_k and W_v; ``dq``,
    ``dk``, ``dv`` (N, T, D), the cotangents of q, k, v = x W_· + b_· before the head split;
    ``c`` (N, T, D), the context W_o multiplies, and ``g`` (N, T, D), the cotangent of
    y = c W_o + b_o. So ∂C/∂W_q = Σ_{n,t} x_t dq_tᵀ, ..., ∂C/∂W_o = Σ_{n,t} c_t g_tᵀ."""

    x: Any
    dq: Any
    dk: Any
    dv: Any
    c: Any
    g: Any


def attention_projection_deltas(res: AttentionResiduals, g: Any) -> AttentionDeltas:
    """The backward of :func:`multi_head_attention` down to its projections, for the
    cotangent g (N, T, D) of y: dc = g W_oᵀ; dv = pᵀ dc; dp = dc vᵀ;
    dz = p ⊙ (dp − Σ_s p dp) / √E; dq = dz k; dk = dzᵀ q (heads merged back, n t h e -> n t d).
    """
    (g,) = widen(g)
    n, t, h, e = res.q.shape
    p = res.p
    dc = jnp.reshape(jnp.einsum("nto,do->ntd", g, res.wo), (n, t, h, e))
    dp = jnp.einsum("nthe,nshe->nhts", dc, res.v)
    dv = jnp.einsum("nhts,nthe->nshe", p, dc)
    dz = p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True)) * (1.0 / math.sqrt(e))
    dq = jnp.einsum("nhts,nshe->nthe", dz, res.k)
    dk = jnp.einsum("nhts,nthe->nshe", dz, res.q)
    dq, dk, dv = (jnp.reshape(a, (n, t, h * e)) for a in (dq, dk, dv))
    return AttentionDeltas(res.x, dq, dk, dv, res.c, g)


def _mha_bwd(res, g, *, num_heads, causal=False):
    """dz = p ⊙ (dp − Σ_s p dp) with dp = dc vᵀ;  dx = dq W_qᵀ + dk W_kᵀ + dv W_vᵀ (three paths).

    In full: dW_o = cᵀ g, db_o = Σ g, dc = g W_oᵀ; dv = pᵀ dc; dq = dz k / √E; dk = dzᵀ q / √E
    (:func:`attention_projection_deltas`); dW_· = xᵀ d· for · in q, k, v; db_q = Σ dq,
    db_v = Σ dv, and db_k = 0 (a shift of b_k moves all of a query's scores together, and
    softmax ignores it). The mask gets ``None``.
    """
    del num_heads, causal
    d = attention_projection_deltas(res, g)
    shape = res.q.shape
    dq, dk, dv = (jnp.reshape(a, shape) for a in (d.dq, d.dk, d.dv))
    return projection_cotangents(res, d.g, dq, dk, dv, g.dtype)


def tangent_projections(res, tangents):
    """(dq, dk, dv) (N, T, H, E) of the projections along the tangents of (x, W_·, b_·):
    d· = dx W_· + x dW_· + db_·, in the residuals' (widened) dtype; ``None`` tangents are zero.
    Also the tangents' own dtype (that of the first given one), which the output is cast to."""
    dx, dwq, dwk, dwv, _, dbq, dbk, dbv, _ = tangents
    given = [a for a in tangents if a is not None]
    dtype = given[0].dtype if given else res.x.dtype
    shape = res.q.shape
    wide = res.x.dtype
    outs = []
    for w, dw, db in ((res.wq, dwq, dbq), (res.wk, dwk, dbk), (res.wv, dwv, dbv)):
        out = jnp.zeros((*res.x.shape[:2], w.shape[1]), wide)
        if dx is not None:
            out = out + jnp.einsum("ntd,do->nto", dx.astype(wide), w)
        if dw is not None:
            out = out + jnp.einsum("ntd,do->nto", res.x, dw.astype(wide))
        if db is not None:
            out = out + jnp.reshape(db.astype(wide), (1, 1, -1))
        outs.append(jnp.reshape(out, shape))
    return (*outs, dtype)


def tangent_output(res, dc, tangents, dtype):
    """dy = dc W_o + c dW_o + db_o from the context's tangent dc (N, T, H, E), cast to ``dtype``."""
    _, _, _, _, dwo, _, _, _, dbo = tangents
    n, t, d = res.c.shape
    wide = res.c.dtype
    dy = jnp.einsum("ntd,do->nto", jnp.reshape(dc, (n, t, d)), res.wo)
    if dwo is not None:
        dy = dy + jnp.einsum("ntd,do->nto", res.c, dwo.astype(wide))
    if dbo is not None:
        dy = dy + jnp.reshape(dbo.astype(wide), (1, 1, d))
    return dy.astype(dtype)


def _mha_jvp(res, dx, dwq, dwk, dwv, dwo, dbq, dbk, dbv, dbo, dmask, *, num_heads, causal=False):
    """dz = (dq kᵀ + q dkᵀ)/√E;  dp = p ⊙ (dz − Σ_s p dz);  dc = dp v + p dv;
    dy = dc W_o + c dW_o + db_o, with d· = dx W_· + x dW_· + db_· (the mask takes no tangent).
    Masked keys have p = 0, so they get no tangent either (a fully masked row: dc = 0)."""
    del dmask, num_heads, causal
    tangents = (dx, dwq, dwk, dwv, dwo, dbq, dbk, dbv, dbo)
    dq, dk, dv, dtype = tangent_projections(res, tangents)
    e = res.q.shape[-1]
    p = res.p
    dz = (jnp.einsum("nthe,nshe->nhts", dq, res.k) + jnp.einsum("nthe,nshe->nhts", res.q, dk)) * (
        1.0 / math.sqrt(e)
    )
    dp = p * (dz - jnp.sum(p * dz, axis=-1, keepdims=True))
    dc = jnp.einsum("nhts,nshe->nthe", dp, res.v) + jnp.einsum("nhts,nshe->nthe", p, dv)
    return tangent_output(res, dc, tangents, dtype)


multi_head_attention = register("multi_head_attention", _mha_fwd, _mha_bwd, _mha_jvp)

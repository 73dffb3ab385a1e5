"""Blockwise multi-head self-attention with an O(T) tape (FlashAttention-2's split).

The same function as :func:`~manual_bp.rules.multi_head_attention`, with the same ten primals,
masks and conventions (a fully masked row gives c = 0, y = b_o), computed over blocks of
``block_size`` keys so that no T×T array is ever formed. Index letters as there: ``n`` batch,
``t`` query, ``s`` key, ``h`` head, ``e`` feature within a head; ``j`` the key block.

Forward, an online softmax over the key blocks j (running max m, sum l and context a):

* z_j = q k_jᵀ / √E;  m' = max(m, max_s z_j);  α = exp(m − m');
* l ← α l + Σ_s exp(z_j − m');  a ← α a + exp(z_j − m') v_j;  m ← m';
* c = a / l and the row's logsumexp L = m + log l.

The tape is the inputs, the head-split q, k, v, the context c and L (N, H, T): linear in T.
Backward (dO = dc = g W_oᵀ, D_t = Σ_e dO ⊙ c), recomputing each block's probabilities:

* p_j = exp(z_j − L);  dv_j = p_jᵀ dO;  dp_j = dO v_jᵀ;  dz_j = p_j ⊙ (dp_j − D) / √E;
* dq += dz_j k_j;  dk_j = dz_jᵀ q.

Forward mode, one pass as well: with dz_j = (dq k_jᵀ + q dk_jᵀ)/√E and r_t = Σ_s p dz,
dc = Σ_j p_j (dz_j v_j + dv_j) − r c.

T need not be a multiple of ``block_size``: the keys are padded to one with masked keys (the
queries are never blocked). Causal blocks above the diagonal are computed and masked, not
skipped (every block sees all T queries).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import lax

from .attention import (
    check_attention,
    project_heads,
    projection_cotangents,
    tangent_output,
    tangent_projections,
    widen,
)
from .contract import register

__all__ = ["FlashAttentionResiduals", "flash_attention"]

_OP = "flash_attention"


class FlashAttentionResiduals(NamedTuple):
    """What the backward of :func:`flash_attention` reads (float32 for half-precision inputs):
    x (N, T, D); the head-split q, k, v (N, T, H, E); the merged context c (N, T, D); each
    row's logsumexp ``lse`` (N, H, T) (0 for a fully masked row); the key mask padded to whole
    blocks (N, T'); and the four weights (D, D). Nothing of size T²."""

    x: Any
    q: Any
    k: Any
    v: Any
    c: Any
    lse: Any
    keys: Any
    wq: Any
    wk: Any
    wv: Any
    wo: Any


def _block(block_size, t):
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"{_OP}: block_size must be a positive int, got {block_size!r}")
    return min(block_size, t)


def _key_blocks(a, b):
    """(N, T', ...) -> (T'/b, N, b, ...): the key axis cut into blocks, blocks first (to scan)."""
    n, tp = a.shape[:2]
    a = jnp.reshape(a, (n, tp // b, b, *a.shape[2:]))
    return jnp.moveaxis(a, 1, 0)


def _pad_keys(a, tp):
    """Pad the key axis (1) of a with zeros up to tp."""
    pad = [(0, 0)] * a.ndim
    pad[1] = (0, tp - a.shape[1])
    return jnp.pad(a, pad)


def _unblock(a, t):
    """(T'/b, N, b, ...) -> (N, T, ...): the inverse of :func:`_key_blocks`, cut back to T."""
    a = jnp.moveaxis(a, 0, 1)
    a = jnp.reshape(a, (a.shape[0], a.shape[1] * a.shape[2], *a.shape[3:]))
    return a[:, :t]


def _scores(q, kb, keys_b, start, causal):
    """z_j[n,h,t,s] = q·k_s/√E for the block's keys, and allowed[n,1,t,s] (padding, causal)."""
    e = q.shape[-1]
    t, b = q.shape[1], kb.shape[1]
    z = jnp.einsum("nthe,nshe->nhts", q, kb) * (1.0 / math.sqrt(e))
    allowed = jnp.reshape(keys_b, (keys_b.shape[0], 1, 1, b))
    if causal:
        rows = lax.broadcasted_iota(jnp.int32, (t, b), 0)
        cols = lax.broadcasted_iota(jnp.int32, (t, b), 1) + start
        allowed = allowed & jnp.reshape(rows >= cols, (1, 1, t, b))
    return z, allowed


def _probs(z, allowed, lse):
    """p_j = exp(z_j − L) at the allowed keys, 0 elsewhere (double ``where``: no inf, no NaN)."""
    shifted = jnp.where(allowed, z - lse[..., None], 0)
    return jnp.where(allowed, jnp.exp(shifted), 0)


def _blocked(res, b):
    """The key blocks the backward and the jvp scan over: k, v, the key mask, the offsets."""
    tp = res.keys.shape[1]
    kb, vb = (_key_blocks(_pad_keys(a, tp), b) for a in (res.k, res.v))
    return kb, vb, _key_blocks(res.keys, b), jnp.arange(0, tp, b, dtype=jnp.int32)


def _flash_fwd(x, wq, wk, wv, wo, bq, bk, bv, bo, mask, *, num_heads, causal=False, block_size=64):
    """y = merge_h(softmax_s(q kᵀ / √E) v) W_o + b_o, over key blocks with an online softmax.

    The residuals are :class:`FlashAttentionResiduals` (no T×T array).
    """
    n, t, d, h, e = check_attention(x, wq, wk, wv, wo, bq, bk, bv, bo, mask, num_heads, causal, _OP)
    b = _block(block_size, t)
    tp = -(-t // b) * b
    dtype = x.dtype
    x, wq, wk, wv, wo, bq, bk, bv, bo = widen(x, wq, wk, wv, wo, bq, bk, bv, bo)
    q, k, v = (project_heads(x, w, bb, (n, t, h, e)) for w, bb in ((wq, bq), (wk, bk), (wv, bv)))
    keys = jnp.ones((n, t), jnp.bool_) if mask is None else mask
    keys = _pad_keys(keys, tp)  # padded keys are masked (False)
    kb, vb = (_key_blocks(_pad_keys(a, tp), b) for a in (k, v))
    starts = jnp.arange(0, tp, b, dtype=jnp.int32)

    def step(carry, blk):
        m, l, acc = carry  # (n, h, t), (n, h, t), (n, h, t, e)
        k_j, v_j, keys_j, start = blk
        z, allowed = _scores(q, k_j, keys_j, start, causal)
        # the shifts cancel in c: they carry no derivative (and never an inf into one)
        m_new = jnp.maximum(m, lax.stop_gradient(jnp.max(jnp.where(allowed, z, -jnp.inf), -1)))
        shift = jnp.where(jnp.isfinite(m_new), m_new, 0)
        alpha = jnp.exp(jnp.where(jnp.isfinite(m), m, shift) - shift)
        ez = jnp.where(allowed, jnp.exp(jnp.where(allowed, z - shift[..., None], 0)), 0)
        l = alpha * l + jnp.sum(ez, axis=-1)
        acc = alpha[..., None] * acc + jnp.einsum("nhts,nshe->nhte", ez, v_j)
        return (m_new, l, acc), None

    init = (
        jnp.full((n, h, t), -jnp.inf, x.dtype),
        jnp.zeros((n, h, t), x.dtype),
        jnp.zeros((n, h, t, e), x.dtype),
    )
    (m, l, acc), _ = lax.scan(step, init, (kb, vb, _key_blocks(keys, b), starts))
    live = l > 0  # a fully masked row has l = 0: c = 0 and L = 0 (unused: its p is all 0)
    safe_l = jnp.where(live, l, 1)
    ch = acc / safe_l[..., None]
    lse = jnp.where(live, lax.stop_gradient(m) + jnp.log(safe_l), 0)
    c = jnp.reshape(jnp.transpose(ch, (0, 2, 1, 3)), (n, t, d))
    y = jnp.einsum("ntd,do->nto", c, wo) + jnp.reshape(bo, (1, 1, d))
    res = FlashAttentionResiduals(x, q, k, v, c, lse, keys, wq, wk, wv, wo)
    return y.astype(dtype), res


def _flash_bwd(res, g, *, num_heads, causal=False, block_size=64):
    """D = Σ_e dO ⊙ c;  per key block: p_j = exp(z_j − L), dv_j = p_jᵀ dO,
    dz_j = p_j ⊙ (dO v_jᵀ − D)/√E, dq += dz_j k_j, dk_j = dz_jᵀ q; then the projections'
    cotangents as in :func:`~manual_bp.rules.multi_head_attention` (db_k = 0, mask ``None``)."""
    del num_heads
    dtype = g.dtype
    (g,) = widen(g)
    n, t, h, e = res.q.shape
    b = _block(block_size, t)
    do = jnp.reshape(jnp.einsum("nto,do->ntd", g, res.wo), (n, t, h, e))
    big_d = jnp.einsum("nthe,nthe->nht", do, jnp.reshape(res.c, (n, t, h, e)))
    scale = 1.0 / math.sqrt(e)

    def step(dq, blk):
        k_j, v_j, keys_j, start = blk
        z, allowed = _scores(res.q, k_j, keys_j, start, causal)
        p = _probs(z, allowed, res.lse)
        dv_j = jnp.einsum("nhts,nthe->nshe", p, do)
        dp = jnp.einsum("nthe,nshe->nhts", do, v_j)
        dz = p * (dp - big_d[..., None]) * scale
        dq = dq + jnp.einsum("nhts,nshe->nthe", dz, k_j)
        dk_j = jnp.einsum("nhts,nthe->nshe", dz, res.q)
        return dq, (dk_j, dv_j)

    dq, (dk, dv) = lax.scan(step, jnp.zeros_like(res.q), _blocked(res, b))
    return projection_cotangents(res, g, dq, _unblock(dk, t), _unblock(dv, t), dtype)


def _flash_jvp(res, dx, dwq, dwk, dwv, dwo, dbq, dbk, dbv, dbo, dmask, **static):
    """dc = Σ_j p_j (dz_j v_j + dv_j) − r c with dz_j = (dq k_jᵀ + q dk_jᵀ)/√E and
    r = Σ_s p dz, accumulated over the key blocks; dy = dc W_o + c dW_o + db_o."""
    del dmask
    causal, block_size = static.get("causal", False), static.get("block_size", 64)
    tangents = (dx, dwq, dwk, dwv, dwo, dbq, dbk, dbv, dbo)
    dq, dk, dv, dtype = tangent_projections(res, tangents)
    n, t, h, e = res.q.shape
    b = _block(block_size, t)
    tp = res.keys.shape[1]
    dkb, dvb = (_key_blocks(_pad_keys(a, tp), b) for a in (dk, dv))
    scale = 1.0 / math.sqrt(e)

    def step(carry, blk):
        r, acc = carry
        (k_j, v_j, keys_j, start), dk_j, dv_j = blk
        z, allowed = _scores(res.q, k_j, keys_j, start, causal)
        p = _probs(z, allowed, res.lse)
        dz = (
            jnp.einsum("nthe,nshe->nhts", dq, k_j) + jnp.einsum("nthe,nshe->nhts", res.q, dk_j)
        ) * scale
        pdz = p * dz
        r = r + jnp.sum(pdz, axis=-1)
        acc = acc + jnp.einsum("nhts,nshe->nthe", pdz, v_j)
        acc = acc + jnp.einsum("nhts,nshe->nthe", p, dv_j)
        return (r, acc), None

    init = (jnp.zeros((n, h, t), res.q.dtype), jnp.zeros_like(res.q))
    (r, acc), _ = lax.scan(step, init, (_blocked(res, b), dkb, dvb))
    dc = acc - jnp.transpose(r, (0, 2, 1))[..., None] * jnp.reshape(res.c, (n, t, h, e))
    return tangent_output(res, dc, tangents, dtype)


flash_attention = register("flash_attention", _flash_fwd, _flash_bwd, _flash_jvp)

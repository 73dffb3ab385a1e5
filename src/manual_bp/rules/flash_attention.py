"""Blockwise multi-head self-attention with an O(T) tape (FlashAttention-2's split).

The same function as :func:`~manual_bp.rules.multi_head_attention`, with the same ten primals,
masks and conventions (a fully masked row gives c = 0, y = b_o), computed over blocks of
``block_size`` queries and keys so that no T×T array is ever formed. Index letters as there:
``n`` batch, ``t`` query, ``s`` key, ``h`` head, ``e`` feature within a head; ``i`` the query
block, ``j`` the key block.

Forward, an online softmax over the key blocks j of each query block i (running max m, sum l
and context a):

* z_ij = q_i k_jᵀ / √E;  m' = max(m, max_s z_ij);  α = exp(m − m');
* l ← α l + Σ_s exp(z_ij − m');  a ← α a + exp(z_ij − m') v_j;  m ← m';
* c = a / l and the row's logsumexp L = m + log l.

The tape is the inputs, the head-split q, k, v, the context c and L (N, H, T): linear in T.
Backward (dO = dc = g W_oᵀ, D_t = Σ_e dO ⊙ c), recomputing each block's probabilities:

* p_ij = exp(z_ij − L_i);  dv_j += p_ijᵀ dO_i;  dp_ij = dO_i v_jᵀ;
* dz_ij = p_ij ⊙ (dp_ij − D_i) / √E;  dq_i += dz_ij k_j;  dk_j += dz_ijᵀ q_i.

Forward mode, one pass as well: with dz_ij = (dq_i k_jᵀ + q_i dk_jᵀ)/√E and r_t = Σ_s p dz,
dc_i = Σ_j p_ij (dz_ij v_j + dv_j) − r_i c_i.

Each of the three is one ``lax.scan`` over a static list of block pairs (i, j), updating block
i (and j) of its accumulators in place. With ``causal=True`` the list holds only the pairs
j ≤ i: a key block entirely above the diagonal (every key after every query of block i)
contributes nothing and is never computed, about half of the work at large T. T need not be
a multiple of ``block_size``: queries and keys are padded to one, the padded keys masked and
the padded queries' rows dropped.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
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


def _blocks(a, b, tp):
    """(N, T, ...) -> (T'/b, N, b, ...): the sequence axis padded with zeros to T' and cut into
    blocks of b, blocks first (to index by block)."""
    pad = [(0, 0)] * a.ndim
    pad[1] = (0, tp - a.shape[1])
    a = jnp.pad(a, pad)
    return jnp.moveaxis(jnp.reshape(a, (a.shape[0], tp // b, b, *a.shape[2:])), 1, 0)


def _unblock(a, t):
    """(T'/b, N, b, ...) -> (N, T, ...): the inverse of :func:`_blocks`, cut back to T."""
    a = jnp.moveaxis(a, 0, 1)
    a = jnp.reshape(a, (a.shape[0], a.shape[1] * a.shape[2], *a.shape[3:]))
    return a[:, :t]


def _row_blocks(a, b, tp):
    """(N, H, T) -> (T'/b, N, H, b): a per-row quantity (L, D) cut into query blocks, padded."""
    n, h, t = a.shape
    a = jnp.pad(a, ((0, 0), (0, 0), (0, tp - t)))
    return jnp.moveaxis(jnp.reshape(a, (n, h, tp // b, b)), 2, 0)


def _row_unblock(a, t):
    """(T'/b, N, H, b, ...) -> (N, H, T, ...): the inverse of :func:`_row_blocks`."""
    nb, n, h, b = a.shape[:4]
    a = jnp.reshape(jnp.moveaxis(a, 0, 2), (n, h, nb * b, *a.shape[4:]))
    return a[:, :, :t]


def _pairs(nb, causal, by_key=False):
    """The (query block i, key block j) pairs to compute, ordered by i (by j with ``by_key``):
    all nb² of them, or with a causal mask the nb(nb+1)/2 with j ≤ i — a block above the
    diagonal (every key after every query) contributes nothing and is never computed."""
    i, j = np.tril_indices(nb) if causal else np.indices((nb, nb)).reshape(2, -1)
    if by_key:
        order = np.lexsort((i, j))
        i, j = i[order], j[order]
    return jnp.asarray(i, jnp.int32), jnp.asarray(j, jnp.int32)


def _take(a, i):
    """Block i of a blocks-first array."""
    return lax.dynamic_index_in_dim(a, i, keepdims=False)


def _add(a, i, update):
    """a with ``update`` added to its block i (in place inside the scan)."""
    return lax.dynamic_update_index_in_dim(a, _take(a, i) + update, i, 0)


def _scores(q, k, keys, offset, causal):
    """z[n,h,t,s] = q_t·k_s/√E for a query block and a key block, and allowed[n,1,t,s]
    (padding, causal); ``offset`` is the key block's first position less the query block's."""
    e = q.shape[-1]
    t, b = q.shape[1], k.shape[1]
    z = jnp.einsum("nthe,nshe->nhts", q, k) * (1.0 / math.sqrt(e))
    allowed = jnp.reshape(keys, (keys.shape[0], 1, 1, b))
    if causal:
        rows = lax.broadcasted_iota(jnp.int32, (t, b), 0)
        cols = lax.broadcasted_iota(jnp.int32, (t, b), 1) + offset
        allowed = allowed & jnp.reshape(rows >= cols, (1, 1, t, b))
    return z, allowed


def _probs(z, allowed, lse):
    """p = exp(z − L) at the allowed keys, 0 elsewhere (double ``where``: no inf, no NaN)."""
    shifted = jnp.where(allowed, z - lse[..., None], 0)
    return jnp.where(allowed, jnp.exp(shifted), 0)


class _Blocked(NamedTuple):
    """q, k, v (T'/b, N, b, H, E) and the key mask (T'/b, N, b), cut into blocks of b; the pairs
    (i, j) to visit; and each pair's scores and mask (:func:`_scores`)."""

    q: Any
    k: Any
    v: Any
    keys: Any
    b: int
    causal: bool

    def pairs(self, by_key=False):
        return _pairs(len(self.q), self.causal, by_key)

    def scores(self, i, j):
        return _scores(
            _take(self.q, i), _take(self.k, j), _take(self.keys, j), (j - i) * self.b, self.causal
        )


def _blocked(q, k, v, keys, b, causal):
    tp = keys.shape[1]
    return _Blocked(*(_blocks(a, b, tp) for a in (q, k, v, keys)), b, causal)


def _online(carry, z, allowed, v_j):
    """One key block of the online softmax: m' = max(m, max_s z_j), α = exp(m − m'),
    l ← α l + Σ_s exp(z_j − m'), a ← α a + exp(z_j − m') v_j."""
    m, l, acc = carry  # (n, h, b), (n, h, b), (n, h, b, e)
    # the shifts cancel in c: they carry no derivative (and never an inf into one)
    m_new = jnp.maximum(m, lax.stop_gradient(jnp.max(jnp.where(allowed, z, -jnp.inf), -1)))
    shift = jnp.where(jnp.isfinite(m_new), m_new, 0)
    alpha = jnp.exp(jnp.where(jnp.isfinite(m), m, shift) - shift)
    ez = jnp.where(allowed, jnp.exp(jnp.where(allowed, z - shift[..., None], 0)), 0)
    l = alpha * l + jnp.sum(ez, axis=-1)
    acc = alpha[..., None] * acc + jnp.einsum("nhts,nshe->nhte", ez, v_j)
    return m_new, l, acc


def _flash_fwd(x, wq, wk, wv, wo, bq, bk, bv, bo, mask, *, num_heads, causal=False, block_size=64):
    """y = merge_h(softmax_s(q kᵀ / √E) v) W_o + b_o, over blocks with an online softmax.

    The residuals are :class:`FlashAttentionResiduals` (no T×T array).
    """
    n, t, d, h, e = check_attention(x, wq, wk, wv, wo, bq, bk, bv, bo, mask, num_heads, causal, _OP)
    b = _block(block_size, t)
    tp = -(-t // b) * b
    dtype = x.dtype
    x, wq, wk, wv, wo, bq, bk, bv, bo = widen(x, wq, wk, wv, wo, bq, bk, bv, bo)
    q, k, v = (project_heads(x, w, bb, (n, t, h, e)) for w, bb in ((wq, bq), (wk, bk), (wv, bv)))
    keys = jnp.ones((n, t), jnp.bool_) if mask is None else mask
    keys = jnp.pad(keys, ((0, 0), (0, tp - t)))  # padded keys are masked (False)
    blk = _blocked(q, k, v, keys, b, causal)

    def step(carry, ij):  # query block i meets key block j; carry: m, l, a of every block
        i, j = ij
        z, allowed = blk.scores(i, j)
        block = _online(tuple(_take(a, i) for a in carry), z, allowed, _take(blk.v, j))
        return tuple(
            lax.dynamic_update_index_in_dim(a, u, i, 0) for a, u in zip(carry, block, strict=True)
        ), None

    nb = tp // b
    init = (
        jnp.full((nb, n, h, b), -jnp.inf, x.dtype),
        jnp.zeros((nb, n, h, b), x.dtype),
        jnp.zeros((nb, n, h, b, e), x.dtype),
    )
    m, l, acc = (_row_unblock(a, t) for a in lax.scan(step, init, blk.pairs())[0])
    live = l > 0  # a fully masked row has l = 0: c = 0 and L = 0 (unused: its p is all 0)
    safe_l = jnp.where(live, l, 1)
    ch = acc / safe_l[..., None]
    lse = jnp.where(live, lax.stop_gradient(m) + jnp.log(safe_l), 0)
    c = jnp.reshape(jnp.transpose(ch, (0, 2, 1, 3)), (n, t, d))
    y = jnp.einsum("ntd,do->nto", c, wo) + jnp.reshape(bo, (1, 1, d))
    res = FlashAttentionResiduals(x, q, k, v, c, lse, keys, wq, wk, wv, wo)
    return y.astype(dtype), res


def _flash_bwd(res, g, *, num_heads, causal=False, block_size=64):
    """D = Σ_e dO ⊙ c;  per block pair: p = exp(z − L), dv_j += pᵀ dO_i,
    dz = p ⊙ (dO_i v_jᵀ − D_i)/√E, dq_i += dz k_j, dk_j += dzᵀ q_i; then the projections'
    cotangents as in :func:`~manual_bp.rules.multi_head_attention` (db_k = 0, mask ``None``)."""
    del num_heads
    dtype = g.dtype
    (g,) = widen(g)
    n, t, h, e = res.q.shape
    b = _block(block_size, t)
    tp = res.keys.shape[1]
    do = jnp.reshape(jnp.einsum("nto,do->ntd", g, res.wo), (n, t, h, e))
    big_d = jnp.einsum("nthe,nthe->nht", do, jnp.reshape(res.c, (n, t, h, e)))
    blk = _blocked(res.q, res.k, res.v, res.keys, b, causal)
    dob = _blocks(do, b, tp)
    lse_b, d_b = (_row_blocks(a, b, tp) for a in (res.lse, big_d))
    scale = 1.0 / math.sqrt(e)

    def step(carry, ij):
        dq, dk, dv = carry
        i, j = ij
        z, allowed = blk.scores(i, j)
        q_i, do_i, k_j = _take(blk.q, i), _take(dob, i), _take(blk.k, j)
        p = _probs(z, allowed, _take(lse_b, i))
        dp = jnp.einsum("nthe,nshe->nhts", do_i, _take(blk.v, j))
        dz = p * (dp - _take(d_b, i)[..., None]) * scale
        dq = _add(dq, i, jnp.einsum("nhts,nshe->nthe", dz, k_j))
        dk = _add(dk, j, jnp.einsum("nhts,nthe->nshe", dz, q_i))
        dv = _add(dv, j, jnp.einsum("nhts,nthe->nshe", p, do_i))
        return (dq, dk, dv), None

    zeros = jnp.zeros_like(blk.q)
    dq, dk, dv = (_unblock(a, t) for a in lax.scan(step, (zeros,) * 3, blk.pairs(True))[0])
    return projection_cotangents(res, g, dq, dk, dv, dtype)


def _flash_jvp(res, dx, dwq, dwk, dwv, dwo, dbq, dbk, dbv, dbo, dmask, **static):
    """dc = Σ_j p_j (dz_j v_j + dv_j) − r c with dz_j = (dq k_jᵀ + q dk_jᵀ)/√E and
    r = Σ_s p dz, accumulated over the block pairs; dy = dc W_o + c dW_o + db_o."""
    del dmask
    causal, block_size = static.get("causal", False), static.get("block_size", 64)
    tangents = (dx, dwq, dwk, dwv, dwo, dbq, dbk, dbv, dbo)
    dq, dk, dv, dtype = tangent_projections(res, tangents)
    n, t, h, e = res.q.shape
    b = _block(block_size, t)
    tp = res.keys.shape[1]
    blk = _blocked(res.q, res.k, res.v, res.keys, b, causal)
    dqb, dkb, dvb = (_blocks(a, b, tp) for a in (dq, dk, dv))
    lse_b = _row_blocks(res.lse, b, tp)
    scale = 1.0 / math.sqrt(e)

    def step(carry, ij):
        r, acc = carry
        i, j = ij
        z, allowed = blk.scores(i, j)
        k_j, v_j = _take(blk.k, j), _take(blk.v, j)
        p = _probs(z, allowed, _take(lse_b, i))
        dz = jnp.einsum("nthe,nshe->nhts", _take(dqb, i), k_j)
        dz = dz + jnp.einsum("nthe,nshe->nhts", _take(blk.q, i), _take(dkb, j))
        pdz = p * dz * scale
        r = _add(r, i, jnp.sum(pdz, axis=-1))
        da = jnp.einsum("nhts,nshe->nthe", pdz, v_j) + jnp.einsum(
            "nhts,nshe->nthe", p, _take(dvb, j)
        )
        return (r, _add(acc, i, da)), None

    init = (jnp.zeros(lse_b.shape, res.q.dtype), jnp.zeros_like(blk.q))
    (r, acc), _ = lax.scan(step, init, blk.pairs())
    r, acc = _row_unblock(r, t), _unblock(acc, t)
    dc = acc - jnp.transpose(r, (0, 2, 1))[..., None] * jnp.reshape(res.c, (n, t, h, e))
    return tangent_output(res, dc, tangents, dtype)


flash_attention = register("flash_attention", _flash_fwd, _flash_bwd, _flash_jvp)

"""Lookups: ``embedding`` (rows of a table by integer id) and ``add_positions`` (a learned
position vector added at each time step).

Index letters: ``...`` any leading batch dims, ``v`` vocabulary (table rows, size V), ``d``
features, ``t`` time steps (positions, T of them out of a table of L), ``n`` batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from .._checks import require_float, require_integer, require_ndim, require_same_dtype
from .contract import register

__all__ = ["EmbeddingResiduals", "add_positions", "embedding"]


class EmbeddingResiduals(NamedTuple):
    """What the backward of :func:`embedding` reads: the integer ids (...) and the table
    (V, D), for its shape and dtype."""

    ids: Any
    table: Any


def _embedding_fwd(ids, table):
    """y[..., d] = table[ids[...], d].

    Convention: an id outside [0, V) (negative ids included, no wrap-around) gives a row of NaN
    and contributes nothing to d table. The residuals (:class:`EmbeddingResiduals`) are the ids
    and the table (for its shape and dtype; it is the primal itself, not a copy).
    """
    require_integer("embedding", "ids", ids)
    require_float("embedding", "table", table)
    require_ndim("embedding", "table", table, exactly=2)
    valid = (ids >= 0) & (ids < table.shape[0])
    rows = table[jnp.where(valid, ids, 0)]
    return jnp.where(valid[..., None], rows, jnp.nan), EmbeddingResiduals(ids, table)


def _embedding_bwd(res, g):
    """d table[v, d] = Σ_{... : ids[...] = v} g[..., d]  (a scatter-add: repeated ids sum)."""
    ids, (v, d) = res.ids, res.table.shape
    valid = (ids >= 0) & (ids < v)
    rows = jnp.reshape(jnp.where(valid, ids, 0), (-1,))
    g = jnp.reshape(jnp.where(valid[..., None], g, 0), (-1, d))
    return None, jnp.zeros((v, d), res.table.dtype).at[rows].add(g)


def _embedding_jvp(res, dids, dtable):
    """(·, d table) ↦ dy[..., d] = d table[ids[...], d] (0 where an id is out of range).

    The ids take no tangent (``dids`` is ``None``).
    """
    del dids
    ids, v = res.ids, res.table.shape[0]
    valid = (ids >= 0) & (ids < v)
    return jnp.where(valid[..., None], dtable[jnp.where(valid, ids, 0)], 0)


embedding = register("embedding", _embedding_fwd, _embedding_bwd, _embedding_jvp)


def _add_positions_fwd(x, table):
    """y[..., t, d] = x[..., t, d] + table[t, d] for t < T, x of shape (..., T, D), table (L, D),
    T <= L. The residual is the table's length L (as a zero-size array, to keep the dtype)."""
    require_float("add_positions", "x", x)
    require_float("add_positions", "table", table)
    require_same_dtype("add_positions", x=x, table=table)
    require_ndim("add_positions", "x", x, at_least=2)
    require_ndim("add_positions", "table", table, exactly=2)
    t, d = x.shape[-2:]
    if table.shape[1] != d or table.shape[0] < t:
        raise ValueError(
            f"add_positions: table must have shape (L, {d}) with L >= {t} (the time steps of x "
            f"{tuple(x.shape)}), got {tuple(table.shape)}"
        )
    pos = jnp.reshape(table[:t], (1,) * (x.ndim - 2) + (t, d))
    return x + pos, (jnp.zeros((table.shape[0], 0), table.dtype),)


def _add_positions_bwd(res, g):
    """dx = g;  d table[t, d] = Σ_... g[..., t, d] for t < T, 0 for the unused rows t >= T."""
    (empty,) = res
    length = empty.shape[0]
    dpos = jnp.sum(g, axis=tuple(range(g.ndim - 2)))
    return g, jnp.pad(dpos, ((0, length - dpos.shape[0]), (0, 0)))


def _add_positions_jvp(res, dx, dtable):
    """(dx, d table) ↦ dy[..., t, d] = dx[..., t, d] + d table[t, d] for t < T."""
    del res
    t, d = dx.shape[-2:]
    return dx + jnp.reshape(dtable[:t], (1,) * (dx.ndim - 2) + (t, d))


add_positions = register(
    "add_positions", _add_positions_fwd, _add_positions_bwd, _add_positions_jvp
)

"""Diagonal-GGN preconditioning as an optax ``GradientTransformation`` (with extra arguments).

Each step needs the diagonal of the GGN on the current batch, so the update takes the batch:
``update(grads, state, params, *, x, y, key, net_state)``. Like
:func:`~manual_bp.curvature.kfac` it is an ``optax.GradientTransformationExtraArgs``, so
``optax.chain`` hands the batch through::

    opt = optax.chain(diag_ggn_preconditioner(net, "softmax_cross_entropy"), optax.sgd(0.1))
    state = opt.init(params)
    updates, state = opt.update(grads, state, params, x=x, y=y, key=key)

What it does, per parameter entry i: the diagonal d of the batch's GGN
(:func:`~manual_bp.curvature.diag_ggn`, Monte-Carlo with ``mc_samples`` labels per output
position drawn with ``key``, or exact with ``mc_samples=None``) enters an exponential moving
average d̄ ← ρ d̄ + (1 − ρ) d (ρ = ``decay``; the first step takes the batch's d), and the
update is

.. math:: u_i = g_i / (\\bar d_i + λ), \\qquad λ = \\text{damping}.

Every parameter of every layer kind is preconditioned (the generic route covers Dense,
Conv2D, the norms, embeddings, recurrent and attention layers alike). Cost per step: the
diagonal's N·L·C per-example backward passes, vectorized (N examples, L output positions per
example, C = ``mc_samples``, or K outputs for the exact diagonal), and O(N·L·C·P) memory for
P parameters — for a classifier with one Monte-Carlo sample about one more backward pass of
the batch, with the per-example gradients held at once. Dense layers have a cheaper route
(:func:`~manual_bp.curvature.dense_diag_ggn`, without per-example gradients) that covers no
other layer, so it is not used here. With batch norm the examples are coupled and the
diagonal takes N·L·C backward passes of the whole batch; pass the network's state as
``net_state``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._checks import require_positive_int
from ..nn import Layer
from ..rules import Rule, get_rule
from .factors import FACTOR_LOSSES
from .ggn import diag_ggn

__all__ = ["DiagGgnState", "diag_ggn_preconditioner"]


class DiagGgnState(NamedTuple):
    """The step count and the moving average of the GGN's diagonal (shaped like params)."""

    count: Any
    diagonal: Any


def _number(op: str, arg: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{op}: {arg} must be a number, got {value!r}")
    return float(value)


def diag_ggn_preconditioner(
    net: Layer,
    loss: Rule | str,
    *,
    damping: float = 1e-3,
    decay: float = 0.95,
    mc_samples: int | None = 1,
) -> optax.GradientTransformationExtraArgs:
    """The diagonal-GGN preconditioner u = g / (d̄ + λ) of ``net`` and ``loss`` (module
    docstring); chain it with an optax optimizer that applies the learning rate
    (``optax.sgd``). ``mc_samples=None`` uses the exact diagonal (K backward passes per
    example for K outputs instead of ``mc_samples``). Works under ``jax.jit``."""
    op = "diag_ggn_preconditioner"
    if not isinstance(net, Layer):
        raise TypeError(f"{op}: expected a manual_bp.nn.Layer as the network, got {net!r}")
    damping, decay = _number(op, "damping", damping), _number(op, "decay", decay)
    if not damping > 0:
        raise ValueError(f"{op}: damping must be > 0, got {damping!r}")
    if not 0 <= decay < 1:
        raise ValueError(f"{op}: decay must be in [0, 1), got {decay!r}")
    if mc_samples is not None:
        mc_samples = require_positive_int(op, "mc_samples", mc_samples)
    name = get_rule(loss).name
    if name not in FACTOR_LOSSES:
        raise ValueError(
            f"{op}: no Hessian factor for the loss {name!r}; supported: {list(FACTOR_LOSSES)}"
        )
    diagonal_fn = diag_ggn(net, loss, mc_samples=mc_samples)

    def init(params):
        return DiagGgnState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None, *, x=None, y=None, key=None, net_state=None, **extra):
        del extra
        if params is None or x is None or y is None:
            raise ValueError(
                f"{op}: update needs params and the batch: update(grads, state, params, "
                "x=x, y=y, key=key)"
            )
        if mc_samples is not None and key is None:
            raise ValueError(f"{op}: the Monte-Carlo diagonal (mc_samples={mc_samples}) needs key=")
        if jax.tree.structure(updates) != jax.tree.structure(params):
            raise ValueError(
                f"{op}: the gradients' tree {jax.tree.structure(updates)} is not the params' "
                f"tree {jax.tree.structure(params)}"
            )
        batch = diagonal_fn(params, x, y, key, net_state)
        rho = jnp.where(state.count == 0, 0.0, decay)  # the first step takes the batch's
        diagonal = jax.tree.map(
            lambda m, d: (rho * m + (1 - rho) * d).astype(m.dtype), state.diagonal, batch
        )
        out = jax.tree.map(lambda g, d: g / (d + damping).astype(g.dtype), updates, diagonal)
        return out, DiagGgnState(state.count + 1, diagonal)

    return optax.GradientTransformationExtraArgs(init, update)

"""K-FAC preconditioning as an optax ``GradientTransformation`` (with extra arguments).

Each step needs the Kronecker factors of the current batch, so the transformation's update
takes the batch: ``update(grads, state, params, *, x, y, key)``. It is an
``optax.GradientTransformationExtraArgs``, so ``optax.chain`` hands the batch through::

    opt = optax.chain(kfac(net, "softmax_cross_entropy", damping=1e-3), optax.sgd(0.1))
    state = opt.init(params)
    updates, state = opt.update(grads, state, params, x=x, y=y, key=key)

What it does, per weight with Kronecker factors (:data:`~manual_bp.curvature.WEIGHTS`: the
weight of a Dense or Conv2D layer, w_x and w_h of an RNN, LSTM or GRU, W_q, W_k, W_v and W_o of
MultiHeadAttention; ``W̃ = [W; b]`` with its bias, the gradient Ĝ of W̃ as an (I', O)
matrix): the factors of the batch (:func:`~manual_bp.curvature.kfac_factors`) enter
exponential moving averages Ā ← ρ Ā + (1 − ρ) A, Ḡ ← ρ Ḡ + (1 − ρ) G (ρ = ``decay``; the
first step takes the batch's factors); every ``inverse_every`` steps the damped inverses
(Ā + √λ I)⁻¹ and (Ḡ + √λ I)⁻¹ are recomputed (λ = ``damping``); the update is
(Ā + √λ I)⁻¹ Ĝ (Ḡ + √λ I)⁻¹, the inverse of the damped Kronecker product applied to the
gradient. Parameters of other layers, and the recurrent layers' learned initial states h0
(c0), pass through unchanged. Cost per step: the factors (L·C backward passes, see
:mod:`~manual_bp.curvature.kronecker`) plus O(I'³ + O³) per weight every ``inverse_every``
steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from .._checks import require_positive_int
from ..nn import Layer
from ..rules import Rule
from .kronecker import WEIGHTS, Kronecker, kfac_factors

__all__ = ["KfacState", "kfac"]


class KfacState(NamedTuple):
    """The step count, the factors' moving averages and their damped inverses, in the layout
    of :func:`~manual_bp.curvature.kfac_factors`' result: by layer path, a pair ``(a, g)``
    for a Dense or Conv2D layer and ``{weight: (a, g)}`` for a layer with several weights."""

    count: Any
    factors: Any
    inverses: Any


def _entry(tree: Any, path: str) -> Any:
    for k in path.split("/") if path else ():
        tree = tree[k]
    return tree


def _replace(tree: Any, path: str, value: Any) -> Any:
    if not path:
        return value
    head, _, rest = path.partition("/")
    out = dict(tree)
    out[head] = _replace(tree[head], rest, value)
    return out


class _Block(NamedTuple):
    """One weight with Kronecker factors: its layer's path, the weight's and its bias's
    names (the bias "" for none), and whether the layer has several such weights."""

    path: str
    w: str
    b: str
    nested: bool


def _blocks(layer: Layer, path: str) -> list[_Block]:
    """The weights with Kronecker factors inside serial and residual combinators."""
    if layer.kind in ("serial", "residual"):
        out = []
        for child in layer.children:
            out += _blocks(child, f"{path}/{child.name}" if path else child.name)
        return out
    weights = WEIGHTS.get(layer.kind, {})
    return [_Block(path, w, b, len(weights) > 1) for w, b in weights.items()]


def _pick(tree: Any, block: _Block) -> Any:
    """The block's entry of a tree laid out as kfac_factors' result."""
    entry = tree[block.path]
    return entry[block.w] if block.nested else entry


def _matrix(g: Mapping[str, Any], w: str, b: str) -> Any:
    """[W; b] as an (I', O) matrix (the bias row only where the layer has the bias)."""
    m = jnp.reshape(g[w], (-1, g[w].shape[-1]))
    return jnp.concatenate([m, g[b][None]], axis=0) if b in g else m


def _unmatrix(m: Any, g: Mapping[str, Any], w: str, b: str) -> dict[str, Any]:
    out = dict(g)
    with_bias = b in g
    out[w] = jnp.reshape(m[:-1] if with_bias else m, g[w].shape)
    if with_bias:
        out[b] = m[-1]
    return out


def kfac(
    net: Layer,
    loss: Rule | str,
    *,
    damping: float = 1e-3,
    decay: float = 0.95,
    inverse_every: int = 10,
    kind: str = "kfac",
    setting: str = "expand",
    mc_samples: int = 1,
) -> optax.GradientTransformationExtraArgs:
    """The K-FAC preconditioner of ``net`` and ``loss`` (module docstring); chain it with an
    optax optimizer that applies the learning rate (``optax.sgd``). ``kind``, ``setting`` and
    ``mc_samples`` as in :func:`~manual_bp.curvature.kfac_factors`."""
    op = "kfac"
    for arg, v in (("damping", damping), ("decay", decay)):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise TypeError(f"{op}: {arg} must be a number, got {v!r}")
    if not damping > 0:
        raise ValueError(f"{op}: damping must be > 0, got {damping!r}")
    if not 0 <= decay < 1:
        raise ValueError(f"{op}: decay must be in [0, 1), got {decay!r}")
    inverse_every = require_positive_int(op, "inverse_every", inverse_every)
    factors_fn = kfac_factors(net, loss, kind=kind, setting=setting, mc_samples=mc_samples)
    shift = float(damping) ** 0.5

    blocks = _blocks(net, "")

    def inverses(factors):
        def inv(m):
            return jnp.linalg.inv(m + shift * jnp.eye(m.shape[0], dtype=m.dtype))

        return jax.tree.map(inv, factors)

    def init(params):
        eye = {}
        for blk in blocks:
            m = _matrix(_entry(params, blk.path), blk.w, blk.b)
            pair = (jnp.eye(m.shape[0], dtype=m.dtype), jnp.eye(m.shape[1], dtype=m.dtype))
            if blk.nested:
                eye.setdefault(blk.path, {})[blk.w] = pair
            else:
                eye[blk.path] = pair
        return KfacState(jnp.zeros((), jnp.int32), eye, eye)

    def update(updates, state, params=None, *, x=None, y=None, key=None, **extra):
        del extra
        if params is None or x is None or y is None:
            raise ValueError(
                f"{op}: update needs params and the batch: update(grads, state, params, "
                "x=x, y=y, key=key)"
            )
        batch = jax.tree.map(
            lambda k: (k.a, k.g),
            factors_fn(params, x, y, key),
            is_leaf=lambda v: isinstance(v, Kronecker),
        )
        rho = jnp.where(state.count == 0, 0.0, decay)  # the first step takes the batch's
        factors = jax.tree.map(lambda m, b: rho * m + (1 - rho) * b, state.factors, batch)
        inv = lax.cond(
            state.count % inverse_every == 0, inverses, lambda f: state.inverses, factors
        )
        for blk in blocks:
            a_inv, g_inv = _pick(inv, blk)
            g = _entry(updates, blk.path)
            m = a_inv @ _matrix(g, blk.w, blk.b) @ g_inv
            updates = _replace(updates, blk.path, _unmatrix(m, g, blk.w, blk.b))
        return updates, KfacState(state.count + 1, factors, inv)

    return optax.GradientTransformationExtraArgs(init, update)

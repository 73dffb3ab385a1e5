"""K-FAC preconditioning as an optax ``GradientTransformation`` (with extra arguments).

Each step needs the Kronecker factors of the current batch, so the transformation's update
takes the batch: ``update(grads, state, params, *, x, y, key)``. It is an
``optax.GradientTransformationExtraArgs``, so ``optax.chain`` hands the batch through::

    opt = optax.chain(kfac(net, "softmax_cross_entropy", damping=1e-3), optax.sgd(0.1))
    state = opt.init(params)
    updates, state = opt.update(grads, state, params, x=x, y=y, key=key)

What it does, per Dense and Conv2D layer (``W̃ = [W; b]``, the gradient Ĝ of W̃ as an
(I', O) matrix): the factors of the batch (:func:`~manual_bp.curvature.kfac_factors`) enter
exponential moving averages Ā ← ρ Ā + (1 − ρ) A, Ḡ ← ρ Ḡ + (1 − ρ) G (ρ = ``decay``; the
first step takes the batch's factors); every ``inverse_every`` steps the damped inverses
(Ā + √λ I)⁻¹ and (Ḡ + √λ I)⁻¹ are recomputed (λ = ``damping``); the update is
(Ā + √λ I)⁻¹ Ĝ (Ḡ + √λ I)⁻¹, the inverse of the damped Kronecker product applied to the
gradient. Parameters of other layers pass through unchanged. Cost per step: the factors (L·C
backward passes, see :mod:`~manual_bp.curvature.kronecker`) plus O(I'³ + O³) per layer every
``inverse_every`` steps.
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
from .kronecker import kfac_factors

__all__ = ["KfacState", "kfac"]


class KfacState(NamedTuple):
    """The step count, the factors' moving averages and their damped inverses, by layer path
    (each a :class:`~manual_bp.curvature.Kronecker`-shaped pair ``(a, g)``)."""

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


def _weighted(layer: Layer, path: str) -> list[str]:
    """Paths of the Dense and Conv2D layers inside serial and residual combinators."""
    if layer.kind in ("serial", "residual"):
        out = []
        for child in layer.children:
            out += _weighted(child, f"{path}/{child.name}" if path else child.name)
        return out
    return [path] if layer.kind in ("dense", "conv2d") else []


def _matrix(g: Mapping[str, Any]) -> Any:
    w = jnp.reshape(g["w"], (-1, g["w"].shape[-1]))
    return jnp.concatenate([w, g["b"][None]], axis=0) if "b" in g else w


def _unmatrix(m: Any, g: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(g)
    rows = m[:-1] if "b" in g else m
    out["w"] = jnp.reshape(rows, g["w"].shape)
    if "b" in g:
        out["b"] = m[-1]
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

    def inverses(factors):
        def inv(m):
            return jnp.linalg.inv(m + shift * jnp.eye(m.shape[0], dtype=m.dtype))

        return {p: (inv(a), inv(g)) for p, (a, g) in factors.items()}

    def init(params):
        eye = {}
        for path in _weighted(net, ""):
            m = _matrix(_entry(params, path))
            eye[path] = (jnp.eye(m.shape[0], dtype=m.dtype), jnp.eye(m.shape[1], dtype=m.dtype))
        return KfacState(jnp.zeros((), jnp.int32), eye, eye)

    def update(updates, state, params=None, *, x=None, y=None, key=None, **extra):
        del extra
        if params is None or x is None or y is None:
            raise ValueError(
                f"{op}: update needs params and the batch: update(grads, state, params, "
                "x=x, y=y, key=key)"
            )
        batch = {p: (k.a, k.g) for p, k in factors_fn(params, x, y, key).items()}
        rho = jnp.where(state.count == 0, 0.0, decay)  # the first step takes the batch's
        factors = jax.tree.map(lambda m, b: rho * m + (1 - rho) * b, state.factors, batch)
        inv = lax.cond(
            state.count % inverse_every == 0, inverses, lambda f: state.inverses, factors
        )
        for path, (a_inv, g_inv) in inv.items():
            g = _entry(updates, path)
            updates = _replace(updates, path, _unmatrix(a_inv @ _matrix(g) @ g_inv, g))
        return updates, KfacState(state.count + 1, factors, inv)

    return optax.GradientTransformationExtraArgs(init, update)

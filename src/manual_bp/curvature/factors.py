"""The symmetric factor S of each loss's Hessian with respect to the network's output, H = S Sᵀ.

The losses are the library's own (:mod:`manual_bp.rules.losses`), means over the batch, so the
factor carries the loss's 1/N: for an output ``out`` of shape (N, ..., K) the Hessian of the
*batch* loss C is block-diagonal over the leading positions (n, ...), and the block of position
l is S_l S_lᵀ with S_l = ``factor[l]``, a (K, C) matrix. Exact factors (C = K):

* softmax cross-entropy, C = −(1/N) Σ_n Σ_k t_nk log p_nk:  S = √(τ/N) (diag(√p) − p √pᵀ),
  τ = Σ_k t_k (1 for integer labels), because (diag √p − p √pᵀ)(diag √p − √p pᵀ) = diag p − p pᵀ;
* mean squared error over M elements:  S = √(2/M) I;
* sigmoid binary cross-entropy over M elements:  S = diag(√(σ(z) σ(−z) / M)).

Monte-Carlo factors (C = ``samples``): labels ŷ are drawn from the model's own predictive
distribution — Categorical(p), N(f, ·), Bernoulli(σ(z)) — and each column is the gradient of
the loss at the sampled label, divided by √samples, so that E[S Sᵀ] = H:
√(τ/N) (p − onehot(ŷ)), √(2/M) ε with ε ~ N(0, I), and (σ(z) − ŷ)/√M.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from .._checks import require_float, require_ndim, require_positive_int
from ..rules import Rule, get_rule
from ..rules.stochastic import require_key

__all__ = ["FACTOR_LOSSES", "hessian_factor", "loss_hessian", "mc_hessian_factor"]

FACTOR_LOSSES = ("mse", "sigmoid_binary_cross_entropy", "softmax_cross_entropy")
"""The losses whose Hessian factor is known here."""


def _loss_name(op: str, loss: Rule | str) -> str:
    name = get_rule(loss).name
    if name not in FACTOR_LOSSES:
        raise ValueError(
            f"{op}: no Hessian factor for the loss {name!r}; supported: {list(FACTOR_LOSSES)}"
        )
    return name


def _check_out(op: str, out: Any) -> None:
    require_float(op, "out", out)
    require_ndim(op, "out", out, at_least=2)
    if out.size == 0:
        raise ValueError(f"{op}: out is empty (shape {tuple(out.shape)})")


def _ce_parts(op: str, out: Any, y: Any) -> tuple[Any, Any, Any]:
    """log p, the per-position target mass τ and the number of positions N."""
    n = out.size // out.shape[-1]
    logp = jax.nn.log_softmax(out, axis=-1)
    if jnp.issubdtype(y.dtype, jnp.integer):
        if tuple(y.shape) != tuple(out.shape[:-1]):
            raise ValueError(
                f"{op}: integer labels must have shape {tuple(out.shape[:-1])}, got "
                f"{tuple(y.shape)}"
            )
        tau = jnp.ones((*out.shape[:-1], 1), out.dtype)
    else:
        if tuple(y.shape) != tuple(out.shape) or y.dtype != out.dtype:
            raise ValueError(
                f"{op}: probability targets must have the logits' shape {tuple(out.shape)} and "
                f"dtype {out.dtype}, got {tuple(y.shape)} {y.dtype}"
            )
        tau = jnp.sum(y, axis=-1, keepdims=True)
    return logp, tau, n


def _check_target(op: str, out: Any, y: Any) -> None:
    if tuple(y.shape) != tuple(out.shape) or y.dtype != out.dtype:
        raise ValueError(
            f"{op}: targets must have the output's shape {tuple(out.shape)} and dtype "
            f"{out.dtype}, got {tuple(y.shape)} {y.dtype}"
        )


def hessian_factor(loss: Rule | str, out: Any, y: Any) -> Any:
    """The exact factor S, shape ``out.shape + (K,)``: ∂²C/∂out_l² = S_l S_lᵀ for every
    leading position l, C the batch loss ``loss(out, y)`` (see the module docstring).

    Cost: O(N K²) memory and time (the factor is materialized)."""
    op = "hessian_factor"
    name = _loss_name(op, loss)
    _check_out(op, out)
    k = out.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(k, dtype=out.dtype), (*out.shape, k))
    if name == "softmax_cross_entropy":
        logp, tau, n = _ce_parts(op, out, y)
        p, sqrt_p = jnp.exp(logp), jnp.exp(logp / 2)
        s = sqrt_p[..., :, None] * eye - p[..., :, None] * sqrt_p[..., None, :]
        return jnp.sqrt(tau / n)[..., None] * s
    _check_target(op, out, y)
    if name == "mse":
        return math.sqrt(2 / out.size) * eye
    curv = jax.nn.sigmoid(out) * jax.nn.sigmoid(-out) / out.size
    return jnp.sqrt(curv)[..., None] * eye


def mc_hessian_factor(loss: Rule | str, out: Any, y: Any, key: Any, samples: int = 1) -> Any:
    """A Monte-Carlo factor S, shape ``out.shape + (samples,)``, with E[S_l S_lᵀ] = ∂²C/∂out_l²:
    labels drawn from the model's predictive distribution given ``key`` (module docstring).

    Cost: O(N K · samples)."""
    op = "mc_hessian_factor"
    name = _loss_name(op, loss)
    _check_out(op, out)
    require_key(op, key)
    samples = require_positive_int(op, "samples", samples)
    shape = (samples, *tuple(out.shape))
    if name == "softmax_cross_entropy":
        logp, tau, n = _ce_parts(op, out, y)
        labels = jax.random.categorical(key, logp, axis=-1, shape=shape[:-1])
        onehot = jax.nn.one_hot(labels, out.shape[-1], dtype=out.dtype)
        cols = (jnp.exp(logp)[None] - onehot) * jnp.sqrt(tau / n)[None]
    else:
        _check_target(op, out, y)
        if name == "mse":
            cols = math.sqrt(2 / out.size) * jax.random.normal(key, shape, out.dtype)
        else:
            prob = jax.nn.sigmoid(out)
            draws = jax.random.bernoulli(key, jnp.broadcast_to(prob, shape), shape).astype(
                out.dtype
            )
            cols = (prob[None] - draws) / math.sqrt(out.size)
    return jnp.moveaxis(cols, 0, -1) / math.sqrt(samples)


def loss_hessian(factor: Any) -> Any:
    """The Hessian blocks S_l S_lᵀ, shape ``out.shape + (K,)``, of a factor from
    :func:`hessian_factor` or :func:`mc_hessian_factor`."""
    require_ndim("loss_hessian", "factor", factor, at_least=3)
    return jnp.einsum("...kc,...jc->...kj", factor, factor)

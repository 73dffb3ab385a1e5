"""Layers that behave differently in training and evaluation (part of
:mod:`manual_bp.nn`): :func:`BatchNorm` (batch statistics and running statistics as state) and
:func:`Dropout` (a random mask drawn from the context's key).

Both read the forward pass's :class:`~manual_bp.nn.Context`; without one they run in
evaluation mode.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from ..rules import normalization as _norm
from ..rules import stochastic as _dropout
from .core import Layer, check_context, same_shape

__all__ = ["BatchNorm", "Dropout"]


def BatchNorm(momentum: float = 0.1, eps: float = 1e-5, *, name: str | None = None) -> Layer:
    """Batch normalization over every axis but the last (features): (N, D), (N, H, W, C), ...

    ``params = {"gamma": (D,), "beta": (D,)}`` (1 and 0); ``state = {"mean": (D,), "var": (D,)}``
    (0 and 1), the running statistics.

    * Training mode (``Context(train=True, state=s)``): y = (x − μ_B)/√(σ²_B + ε) γ + β with the
      batch's statistics over its M positions per feature, and the full backward through them
      (:func:`manual_bp.rules.batch_norm`). The new state, read by ``state_of(tape)``, is

      .. math:: \\bar μ ← (1 − m) \\bar μ + m μ_B, \\qquad
                \\bar v ← (1 − m) \\bar v + m \\frac{M}{M − 1} σ²_B

      with m = ``momentum`` (PyTorch's convention: the running variance is unbiased). M must
      be at least 2.
    * Evaluation mode: y = (x − μ̄)/√(v̄ + ε) γ + β with the running statistics
      (:func:`manual_bp.rules.batch_norm_inference`); the state is returned unchanged.

    Both modes need the state (``Context(state=...)``); nothing is updated in place.
    """
    eps = _norm.require_eps("BatchNorm", eps)
    if isinstance(momentum, bool) or not isinstance(momentum, int | float):
        raise TypeError(f"BatchNorm: momentum must be a Python number in [0, 1], got {momentum!r}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"BatchNorm: momentum must be in [0, 1], got {momentum!r}")
    momentum = float(momentum)

    def init(key, input_shape, dtype=jnp.float32):
        del key
        d = int(input_shape[-1])
        return {"gamma": jnp.ones((d,), dtype), "beta": jnp.zeros((d,), dtype)}

    def init_state(key, input_shape, dtype=jnp.float32):
        del key
        d = int(input_shape[-1])
        return {"mean": jnp.zeros((d,), dtype), "var": jnp.ones((d,), dtype)}

    def forward(params, x, ctx=None):
        check_context(name or "BatchNorm", ctx)
        state = None if ctx is None else ctx.state
        if not isinstance(state, dict) or set(state) != {"mean", "var"}:
            mode = "training" if ctx is not None and ctx.train else "evaluation"
            raise ValueError(
                f"BatchNorm: {mode} mode needs the layer's state {{'mean', 'var'}} (running "
                f"statistics) in the forward pass's Context, got {state!r}; build it with "
                "net.init_state(...) and use value_and_grad(..., has_state=True)"
            )
        if ctx.train:
            m = math.prod(x.shape[:-1])
            if m < 2:
                raise ValueError(
                    "BatchNorm: training mode needs at least 2 values per feature to estimate "
                    f"a variance, got an input of shape {tuple(x.shape)}"
                )
            y, res = _norm.batch_norm.fwd(x, params["gamma"], params["beta"], eps=eps)
            mean, var = _norm.batch_moments(x)  # the rule's own statistics (shared under jit)
            new = {
                "mean": (1.0 - momentum) * state["mean"]
                + momentum * mean.astype(state["mean"].dtype),
                "var": (1.0 - momentum) * state["var"]
                + (momentum * m / (m - 1)) * var.astype(state["var"].dtype),
            }
            return y, {"train": res, "state": new}
        y, res = _norm.batch_norm_inference.fwd(
            x,
            state["mean"].astype(x.dtype),
            state["var"].astype(x.dtype),
            params["gamma"],
            params["beta"],
            eps=eps,
        )
        return y, {"eval": res, "state": state}

    def backward(params, tape, dy):
        del params
        if "train" in tape:
            dx, dgamma, dbeta = _norm.batch_norm.bwd(tape["train"], dy, eps=eps)
        else:
            dx, _, _, dgamma, dbeta = _norm.batch_norm_inference.bwd(tape["eval"], dy, eps=eps)
        return {"gamma": dgamma, "beta": dbeta}, {}, dx

    def jvp(params, tape, dparams, dx):  # the running statistics are state: no tangent
        del params
        dgamma, dbeta = dparams["gamma"], dparams["beta"]
        if "train" in tape:
            return _norm.batch_norm.jvp(tape["train"], dx, dgamma, dbeta, eps=eps)
        still = jnp.zeros_like(dgamma)  # the running statistics
        return _norm.batch_norm_inference.jvp(
            tape["eval"], dx, still, still, dgamma, dbeta, eps=eps
        )

    def state_of(tape):
        return tape["state"]

    config = {"momentum": momentum, "eps": eps}
    return Layer(
        name,
        "batch_norm",
        config,
        init,
        forward,
        backward,
        same_shape,
        (),
        init_state,
        state_of,
        jvp,
    )


def Dropout(rate: float, *, name: str | None = None) -> Layer:
    """Inverted dropout: in training mode y = x m / (1 − p) with m ~ Bernoulli(1 − p) drawn from
    the context's key (:func:`manual_bp.rules.dropout`); the mask is the tape and the backward
    is dx = dy m / (1 − p). In evaluation mode (or with p = 0) y = x and dx = dy.
    """
    rate = _dropout.require_rate("Dropout", rate)

    def init(key, input_shape, dtype=jnp.float32):
        del key, input_shape, dtype
        return {}

    def forward(params, x, ctx=None):
        del params
        check_context(name or "Dropout", ctx)
        if ctx is None or not ctx.train or rate == 0.0:
            return x, {}
        if ctx.key is None:
            raise ValueError(
                "Dropout: training mode needs a PRNG key in the forward pass's Context "
                "(value_and_grad(...)(..., key=key)), got None"
            )
        y, res = _dropout.dropout.fwd(x, ctx.key, rate=rate)
        return y, {"scale": res.scale}

    def backward(params, tape, dy):
        del params
        if "scale" not in tape:
            return {}, {}, dy
        dx, _ = _dropout.dropout.bwd(_dropout.DropoutResiduals(tape["scale"]), dy, rate=rate)
        return {}, {}, dx

    def jvp(params, tape, dparams, dx):
        del params, dparams
        if "scale" not in tape:
            return dx
        return _dropout.dropout.jvp(_dropout.DropoutResiduals(tape["scale"]), dx, None, rate=rate)

    config = {"rate": rate}
    return Layer(name, "dropout", config, init, forward, backward, same_shape, jvp=jvp)

"""Whole-network gradients from the handwritten backward: drop-in for ``jax.value_and_grad``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from ._registry import Rule, get_rule
from .nn import Layer, check_input, check_params

__all__ = ["value_and_grad", "value_grad_and_deltas"]


def _backprop(net: Layer, loss: Rule, params: Any, x: Any, y: Any):
    check_input(net, x)
    check_params(net, params, x.shape)
    out, tape = net.forward(params, x)  # forward pass: keep every activation a (= ∂z/∂w)
    c, loss_res = loss.fwd(out, y)
    dout = loss.bwd(loss_res, jnp.ones_like(c))[0]  # output layer: ∂C/∂z from the loss itself
    grads, deltas, _ = net.backward(params, tape, dout)  # backward pass: the reversed network
    return c, grads, deltas


def _as_parts(net: Layer, loss: Rule | str) -> tuple[Layer, Rule]:
    if not isinstance(net, Layer):
        raise TypeError(f"expected a manual_bp.nn.Layer as the network, got {type(net).__name__}")
    return net, get_rule(loss)


def value_and_grad(net: Layer, loss: Rule | str) -> Callable[[Any, Any, Any], tuple[Any, Any]]:
    """``f(params, x, y) -> (C, ∂C/∂params)`` computed by the handwritten backward pass.

    Same shape of result as ``jax.value_and_grad(lambda p, x, y: loss(net(p, x), y))``, so
    either can stand in for the other. ``loss`` is a loss :class:`~manual_bp.Rule` or its name.
    Works under ``jax.jit``; the params tree and input are checked before tracing.
    """
    net, loss = _as_parts(net, loss)

    def f(params, x, y):
        c, grads, _ = _backprop(net, loss, params, x, y)
        return c, grads

    return f


def value_grad_and_deltas(
    net: Layer, loss: Rule | str
) -> Callable[[Any, Any, Any], tuple[Any, Any, dict[str, Any]]]:
    """``f(params, x, y) -> (C, ∂C/∂params, deltas)``.

    ``deltas[name]`` is ∂C/∂(output of that layer): for a dense layer the lecture's ∂C/∂z,
    for an activation layer ∂C/∂a. Nested layers are named ``"outer/inner"``; the dict is in
    forward order.
    """
    net, loss = _as_parts(net, loss)

    def f(params, x, y):
        return _backprop(net, loss, params, x, y)

    return f

"""Whole-network gradients from the handwritten backward: drop-in for ``jax.value_and_grad``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp

from .nn import Context, Layer, check_params, check_state, has_state
from .nn.core import check_input
from .rules import Rule, get_rule
from .rules.stochastic import require_key

__all__ = ["Backprop", "backprop", "value_and_grad", "value_grad_and_deltas"]


class Backprop(NamedTuple):
    """What one forward and backward pass gives: the loss C, the new state (``None`` without
    state), ∂C/∂params and every layer's delta ∂C/∂(its output)."""

    loss: Any
    state: Any
    grads: Any
    deltas: dict[str, Any]


def backprop(
    net: Layer,
    loss: Rule,
    params: Any,
    x: Any,
    y: Any,
    *,
    state: Any = None,
    key: Any = None,
    train: bool = True,
    taps: dict[str, Any] | None = None,
) -> Backprop:
    """The lecture's two passes over ``net`` and ``loss`` (a :class:`~manual_bp.Rule`), after
    checking the inputs; ``taps`` (a dict) collects every layer's output."""
    check_input(net, x)
    check_params(net, params, x.shape)
    if state is not None:
        check_state(net, state, x.shape)
    if key is not None:
        require_key("value_and_grad", key)
    ctx = Context(train, key, state, taps)
    out, tape = net.forward(params, x, ctx)  # forward pass: keep every activation a (= ∂z/∂w)
    c, loss_res = loss.fwd(out, y)
    dout = loss.bwd(loss_res, jnp.ones_like(c))[0]  # output layer: ∂C/∂z from the loss itself
    grads, deltas, _ = net.backward(params, tape, dout)  # backward pass: the reversed network
    new_state = net.state_of(tape) if state is not None else None
    return Backprop(c, new_state, grads, deltas)


def _as_parts(net: Layer, loss: Rule | str, stateful: bool, train: bool) -> tuple[Layer, Rule]:
    if not isinstance(net, Layer):
        raise TypeError(f"expected a manual_bp.nn.Layer as the network, got {type(net).__name__}")
    if not isinstance(stateful, bool) or not isinstance(train, bool):
        raise TypeError(
            f"has_state and train must be Python bools, got has_state={stateful!r}, train={train!r}"
        )
    if has_state(net) and not stateful:
        raise ValueError(
            f"the network {net.name or net.kind!r} keeps state (batch-norm statistics or "
            "feedback matrices): use "
            "value_and_grad(net, loss, has_state=True)(params, state, x, y), with "
            "state = net.init_state(key, input_shape)"
        )
    return net, get_rule(loss)


def _gradient_function(
    net: Layer, loss: Rule | str, has_state: bool, train: bool, with_deltas: bool
) -> Callable[..., Any]:
    """The one implementation behind :func:`value_and_grad` and :func:`value_grad_and_deltas`."""
    net, loss = _as_parts(net, loss, has_state, train)

    def result(b: Backprop) -> tuple[Any, ...]:
        value = (b.loss, b.state) if has_state else b.loss
        return (value, b.grads, b.deltas) if with_deltas else (value, b.grads)

    if has_state:

        def f_state(params, state, x, y, key=None):
            return result(backprop(net, loss, params, x, y, state=state, key=key, train=train))

        return f_state

    def f(params, x, y, key=None):
        return result(backprop(net, loss, params, x, y, key=key, train=train))

    return f


def value_and_grad(
    net: Layer, loss: Rule | str, *, has_state: bool = False, train: bool = True
) -> Callable[..., tuple[Any, Any]]:
    """``f(params, x, y, key=None) -> (C, ∂C/∂params)`` from the handwritten backward pass.

    Same shape of result as ``jax.value_and_grad(lambda p, x, y: loss(net(p, x), y))``, so
    either can stand in for the other. ``loss`` is a loss :class:`~manual_bp.Rule` or its name.
    Works under ``jax.jit``; the params tree and input are checked before tracing.

    The forward pass runs in training mode (``train=True``: dropout draws its masks from
    ``key``, batch norm uses the batch's statistics) or evaluation mode (``train=False``).
    A network with state (batch norm) needs ``has_state=True``, which mirrors
    ``jax.value_and_grad``'s ``has_aux``:
    ``f(params, state, x, y, key=None) -> ((C, new_state), ∂C/∂params)``.
    """
    return _gradient_function(net, loss, has_state, train, with_deltas=False)


def value_grad_and_deltas(
    net: Layer, loss: Rule | str, *, has_state: bool = False, train: bool = True
) -> Callable[..., tuple[Any, Any, dict[str, Any]]]:
    """``f(params, x, y, key=None) -> (C, ∂C/∂params, deltas)``.

    ``deltas[name]`` is ∂C/∂(output of that layer): for a dense layer the lecture's ∂C/∂z,
    for an activation layer ∂C/∂a. Nested layers are named ``"outer/inner"``; the dict is in
    forward order. ``has_state`` and ``train`` as in :func:`value_and_grad`; with state,
    ``f(params, state, x, y, key=None) -> ((C, new_state), ∂C/∂params, deltas)``.
    """
    return _gradient_function(net, loss, has_state, train, with_deltas=True)

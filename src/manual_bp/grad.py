"""Whole-network derivatives from the handwritten rules: drop-ins for ``jax.value_and_grad``
(the backward pass), ``jax.jvp`` (the forward-mode pass) and Hessian-vector products (JAX's
forward mode over the handwritten backward)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._checks import prefix_errors, require_array
from .nn import Context, Layer, by_layer, check_params, check_state, has_state
from .nn.core import check_input
from .nn.tangents import require_jvp, serial_jvp
from .rules import Rule, get_rule
from .rules.stochastic import require_key

__all__ = [
    "Backprop",
    "angle",
    "backprop",
    "hvp",
    "tangent_pass",
    "value_and_grad",
    "value_and_jvp",
    "value_grad_and_deltas",
    "weight_angles",
]


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
    ctx = _checked_context(net, params, x, state, key, train, taps, "value_and_grad")
    out, tape = net.forward(params, x, ctx)  # forward pass: keep every activation a (= ∂z/∂w)
    c, loss_res = loss.fwd(out, y)
    dout = loss.bwd(loss_res, jnp.ones_like(c))[0]  # output layer: ∂C/∂z from the loss itself
    grads, deltas, _ = net.backward(params, tape, dout)  # backward pass: the reversed network
    new_state = net.state_of(tape) if state is not None else None
    return Backprop(c, new_state, grads, deltas)


def _checked_context(net, params, x, state, key, train, taps, op) -> Context:
    check_input(net, x)
    check_params(net, params, x.shape)
    if state is not None:
        check_state(net, state, x.shape)
    if key is not None:
        require_key(op, key)
    return Context(train, key, state, taps)


def _check_tangents(net: Layer, params: Any, x: Any, dparams: Any, dx: Any) -> tuple[Any, Any]:
    """The tangents, zeros for ``None``: ``dparams`` like ``params`` and ``dx`` like a float
    ``x`` (``None`` for integer ids); ValueError/TypeError naming what does not match."""
    op = f"value_and_jvp({net.name or net.kind!r})"
    if dparams is None:
        dparams = jax.tree.map(jnp.zeros_like, params)
    prefix_errors(f"{op}: dparams", lambda: check_params(net, dparams, x.shape))
    for (path, t), p in zip(
        jax.tree_util.tree_leaves_with_path(dparams), jax.tree.leaves(params), strict=True
    ):
        if t.dtype != p.dtype:
            where = jax.tree_util.keystr(path)
            raise TypeError(f"{op}: dparams{where} has dtype {t.dtype}, its parameter {p.dtype}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        if dx is not None:
            raise TypeError(f"{op}: x holds {x.dtype} ids, which take no tangent: pass dx=None")
        return dparams, None
    if dx is None:
        return dparams, jnp.zeros_like(x)
    require_array(op, "dx", dx)
    if tuple(dx.shape) != tuple(x.shape) or dx.dtype != x.dtype:
        raise ValueError(
            f"{op}: dx must have x's shape {tuple(x.shape)} and dtype {x.dtype}, "
            f"got {tuple(dx.shape)} {dx.dtype}"
        )
    return dparams, dx


def tangent_pass(
    net: Layer,
    loss: Rule,
    params: Any,
    x: Any,
    y: Any,
    dparams: Any = None,
    dx: Any = None,
    *,
    state: Any = None,
    key: Any = None,
    train: bool = True,
    inject: Callable[[Layer, Any], Any] | None = None,
) -> tuple[Any, Any, Any]:
    """One forward pass carrying a tangent beside every activation: ``(C, dC, new_state)``.

    dC = ∇C · (dparams, dx), the directional derivative of the loss, from every layer's
    handwritten ``jvp`` in order and the loss's own (or, for a loss rule without one,
    ⟨∂C/∂out, d out⟩ from its backward, the same number for a scalar C). No backward pass
    runs. ``inject(layer, dz)`` (a network that is a :func:`~manual_bp.nn.serial`) may
    replace the tangent each top-level layer hands on.
    """
    ctx = _checked_context(net, params, x, state, key, train, None, "value_and_jvp")
    dparams, dx = _check_tangents(net, params, x, dparams, dx)
    out, tape = net.forward(params, x, ctx)
    if inject is None:
        dout = require_jvp(net)(params, tape, dparams, dx)
    elif net.kind == "serial" and isinstance(tape, tuple) and len(tape) == len(net.children):
        dout = serial_jvp(net.children, params, tape, dparams, dx, inject)
    else:
        raise ValueError(f"tangent_pass: inject needs a plain serial network, got {net.kind!r}")
    c, loss_res = loss.fwd(out, y)
    if loss.jvp is not None:
        dc = loss.jvp(loss_res, dout, None)
    else:
        g = loss.bwd(loss_res, jnp.ones_like(c))[0]
        dc = jnp.vdot(g, dout)
    new_state = net.state_of(tape) if state is not None else None
    return c, dc, new_state


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


def value_and_jvp(
    net: Layer, loss: Rule | str, *, has_state: bool = False, train: bool = True
) -> Callable[..., tuple[Any, Any]]:
    """``f(params, x, y, dparams, dx=None, key=None) -> (C, dC)`` from the forward-mode pass.

    dC = ∂C/∂params · dparams + ∂C/∂x · dx, the directional derivative of the loss: the same
    pair as ``jax.jvp(lambda p, x: loss(net(p, x), y), (params, x), (dparams, dx))``, built from
    every layer's handwritten ``jvp`` (:mod:`manual_bp.nn.tangents`) in one forward pass,
    with no backward. ``dparams`` is a tree like ``params`` (``None``: zero) and ``dx`` has x's
    shape and dtype (``None``: zero; always ``None`` for integer ids). ``has_state`` and
    ``train`` as in :func:`value_and_grad`; with state,
    ``f(params, state, x, y, dparams, dx=None, key=None) -> ((C, new_state), dC)``.
    """
    net, loss = _as_parts(net, loss, has_state, train)

    if has_state:

        def f_state(params, state, x, y, dparams=None, dx=None, key=None):
            c, dc, new = tangent_pass(
                net, loss, params, x, y, dparams, dx, state=state, key=key, train=train
            )
            return (c, new), dc

        return f_state

    def f(params, x, y, dparams=None, dx=None, key=None):
        c, dc, _ = tangent_pass(net, loss, params, x, y, dparams, dx, key=key, train=train)
        return c, dc

    return f


def hvp(
    net: Layer, loss: Rule | str, *, has_state: bool = False, train: bool = True
) -> Callable[..., tuple[Any, Any]]:
    """``f(params, x, y, v, key=None) -> (∂C/∂params, H v)``, H = ∂²C/∂params².

    Forward over reverse: ``jax.jvp`` of :func:`value_and_grad`'s gradient along ``v`` (a tree
    like ``params``), so JAX differentiates the handwritten backward code itself; the pair is
    what ``jax.jvp(jax.grad(C), (params,), (v,))`` gives. With state,
    ``f(params, state, x, y, v, key=None)`` (the state is held fixed).
    """
    grad_fn = value_and_grad(net, loss, has_state=has_state, train=train)

    if has_state:

        def f_state(params, state, x, y, v, key=None):
            prefix_errors("hvp: v", lambda: check_params(net, v, x.shape))
            return jax.jvp(lambda p: grad_fn(p, state, x, y, key)[1], (params,), (v,))

        return f_state

    def f(params, x, y, v, key=None):
        prefix_errors("hvp: v", lambda: check_params(net, v, x.shape))
        return jax.jvp(lambda p: grad_fn(p, x, y, key)[1], (params,), (v,))

    return f


def angle(a: Any, b: Any) -> Any:
    """The angle in degrees between two arrays seen as vectors, 2·atan2(‖â − b̂‖, ‖â + b̂‖)
    with â = a/‖a‖ (accurate near 0° and 180°, where arccos of the cosine is not); 90° when
    either is zero."""
    a = jnp.ravel(a).astype(jnp.float32 if a.dtype == jnp.bfloat16 else a.dtype)
    b = jnp.ravel(b).astype(a.dtype)
    na, nb = jnp.linalg.norm(a), jnp.linalg.norm(b)
    ok = (na > 0) & (nb > 0)
    ua, ub = a / jnp.where(ok, na, 1), b / jnp.where(ok, nb, 1)
    angle = 2 * jnp.arctan2(jnp.linalg.norm(ua - ub), jnp.linalg.norm(ua + ub))
    return jnp.where(ok, jnp.degrees(angle), jnp.asarray(90.0, a.dtype))


def _weight_grads(grads: Any) -> dict[str, Any]:
    """Every layer's weight gradients (its ``w``-like arrays, not biases or B) by layer path
    (layers as :func:`~manual_bp.nn.by_layer` finds them)."""
    out = {}
    for name, entry in by_layer(grads).items():
        ws = [u for n, u in entry.items() if n.startswith("w") and not isinstance(u, dict)]
        if ws:
            out[name] = ws
    return out


def weight_angles(grads: Any, reference: Any) -> dict[str, Any]:
    """``{layer path: °}``: for every layer with weights, the angle between its weight
    gradients in ``grads`` and in ``reference`` (two parameter trees of one network), all of
    the layer's ``w``-like arrays (not biases or B) as one vector. 0° is the same direction,
    90° orthogonal (or a zero side). Works under jit.
    """
    mine, ref = _weight_grads(grads), _weight_grads(reference)
    if mine.keys() != ref.keys() or any(
        [a.shape for a in mine[k]] != [b.shape for b in ref[k]] for k in mine
    ):
        shapes = [{k: [a.shape for a in t[k]] for k in t} for t in (mine, ref)]
        raise ValueError(
            "weight_angles: grads and reference must hold the same layers' weights; got "
            f"{shapes[0]} and {shapes[1]}"
        )
    return {
        k: angle(jnp.concatenate([jnp.ravel(a) for a in mine[k]]),
                  jnp.concatenate([jnp.ravel(a) for a in ref[k]]))
        for k in mine
    }  # fmt: skip

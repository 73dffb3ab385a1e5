"""Reference networks built from a network's *description* (``kind``, ``config``, ``name``,
``children``); gradients and per-layer deltas from ``jax.grad`` only.

A layer's delta is ∂C/∂(its output), obtained by adding a zero perturbation ε to that output
and differentiating C with respect to ε.

Layer kinds with parameters or children have an entry in :data:`LAYER_FORWARD`:
``fn(layer, params, x, run_child) -> y``, where ``run_child(child, h)`` runs a child layer on
``h`` (with its parameters ``params[child.name]``) and applies that child's perturbation.
Layers whose behaviour depends on the mode (batch norm, dropout) have an entry in
:data:`MODE_LAYERS`: ``fn(layer, params, x, run) -> (y, new_state)``.
Parameter-free kinds fall back to ``FORWARD[kind](x, **config)``.

Modes follow the layers' specification: child i of a combinator runs with the key
``jax.random.fold_in(key, i)`` and the state under its name; a network's new state is a dict
by layer name, like its parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import conv, recurrent, transformer
from .modes import MODE_LAYERS
from .ops import FORWARD


class Run(NamedTuple):
    """How a layer runs: training or evaluation, its PRNG key, its state."""

    train: bool = True
    key: Any = None
    state: Any = None


def _serial(layer, params, x, run_child):
    del params
    for child in layer.children:
        x = run_child(child, x)
    return x


def _dense(layer, params, x, run_child):
    del layer, run_child
    return FORWARD["dense"](x, params["w"], params["b"])


LAYER_FORWARD: dict[str, Callable[..., Any]] = {
    "serial": _serial,
    "dense": _dense,
}
"""Reference forward of every layer kind that has parameters or children."""

for _family in (conv, recurrent, transformer):
    LAYER_FORWARD.update(_family.LAYERS)


def _apply(layer, params, x, perturb, path, run):
    """``(y, new_state)`` of ``layer``."""
    if layer.kind in MODE_LAYERS:
        return MODE_LAYERS[layer.kind](layer, params, x, run)
    fn = LAYER_FORWARD.get(layer.kind)
    if fn is not None:
        new_state = {}
        position = {child.name: i for i, child in enumerate(layer.children)}

        def run_child(child, h):
            name = f"{path}{child.name}"
            i = position[child.name]
            key = None if run.key is None else jax.random.fold_in(run.key, i)
            state = None if run.state is None else run.state[child.name]
            out, new_state[child.name] = _apply(
                child, params[child.name], h, perturb, f"{name}/", Run(run.train, key, state)
            )
            return out if perturb is None else perturb(name, out)

        y = fn(layer, params, x, run_child)
        return y, new_state
    if layer.kind in FORWARD:
        return FORWARD[layer.kind](x, **dict(layer.config)), {}
    raise NotImplementedError(f"reference: no forward for layer kind {layer.kind!r}")


def forward_with_state(net, params, x, eps=None, *, state=None, key=None, train=False):
    """``(output, new_state)``, with ``eps[name]`` added to the output of each named layer."""
    perturb = None if eps is None else (lambda name, out: out + eps[name] if name in eps else out)
    return _apply(net, params, x, perturb, "", Run(train, key, state))


def forward(net, params, x, eps=None, *, state=None, key=None, train=False):
    """The network's output, with ``eps[name]`` added to the output of each named layer."""
    return forward_with_state(net, params, x, eps, state=state, key=key, train=train)[0]


def _loss(loss):
    return FORWARD[getattr(loss, "name", loss)]


def value_and_grad(net, loss, *, has_state=False, train=True):
    """``jax.value_and_grad`` of ``loss(forward(net, params, x), y)`` with respect to params.

    ``f(params, x, y, key=None) -> (C, grads)``; with ``has_state``,
    ``f(params, state, x, y, key=None) -> ((C, new_state), grads)``.
    """
    loss_fn = _loss(loss)

    def c(p, state, x, y, key):
        out, new_state = forward_with_state(net, p, x, state=state, key=key, train=train)
        return loss_fn(out, y), new_state

    grad = jax.value_and_grad(c, has_aux=True)
    if has_state:
        return lambda params, state, x, y, key=None: grad(params, state, x, y, key)

    def f(params, x, y, key=None):
        (value, _), grads = grad(params, None, x, y, key)
        return value, grads

    return f


def layer_outputs(net, params, x, *, state=None, key=None, train=False):
    """The output shape and dtype of every named layer, under the names the deltas use."""
    shapes = {}

    def record(name, out):
        shapes[name] = jax.ShapeDtypeStruct(out.shape, out.dtype)
        return out

    jax.eval_shape(
        lambda p, h, s, k: _apply(net, p, h, record, "", Run(train, k, s)), params, x, state, key
    )
    return shapes


def value_grad_and_deltas(net, loss, *, has_state=False, train=True):
    """``(C, ∂C/∂params, deltas)`` with ``deltas[name] = ∂C/∂(output of that layer)``; with
    ``has_state``, ``f(params, state, x, y, key=None) -> ((C, new_state), grads, deltas)``."""
    loss_fn = _loss(loss)

    def g(params, state, x, y, key):
        shapes = layer_outputs(net, params, x, state=state, key=key, train=train)
        eps = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}

        def c(p, e):
            out, new_state = forward_with_state(net, p, x, e, state=state, key=key, train=train)
            return loss_fn(out, y), new_state

        (value, new_state), (grads, deltas) = jax.value_and_grad(c, argnums=(0, 1), has_aux=True)(
            params, eps
        )
        return value, new_state, grads, deltas

    if has_state:

        def f_state(params, state, x, y, key=None):
            value, new_state, grads, deltas = g(params, state, x, y, key)
            return (value, new_state), grads, deltas

        return f_state

    def f(params, x, y, key=None):
        value, _, grads, deltas = g(params, None, x, y, key)
        return value, grads, deltas

    return f

"""Reference networks built from a network's *description* (``kind``, ``config``, ``name``,
``children``); gradients and per-layer deltas from ``jax.grad`` only.

A layer's delta is ∂C/∂(its output), obtained by adding a zero perturbation ε to that output
and differentiating C with respect to ε.

Layer kinds with parameters or children have an entry in :data:`LAYER_FORWARD`:
``fn(layer, params, x, run_child) -> y``, where ``run_child(child, h)`` runs a child layer on
``h`` (with its parameters ``params[child.name]``) and applies that child's perturbation.
Parameter-free kinds fall back to ``FORWARD[kind](x, **config)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from . import conv, recurrent, transformer
from .ops import FORWARD


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


def _apply(layer, params, x, perturb, path):
    def run_child(child, h):
        name = f"{path}{child.name}"
        out = _apply(child, params[child.name], h, perturb, f"{name}/")
        return out if perturb is None else perturb(name, out)

    fn = LAYER_FORWARD.get(layer.kind)
    if fn is not None:
        return fn(layer, params, x, run_child)
    if layer.kind in FORWARD:
        return FORWARD[layer.kind](x, **dict(layer.config))
    raise NotImplementedError(f"reference: no forward for layer kind {layer.kind!r}")


def forward(net, params, x, eps=None):
    """The network's output, with ``eps[name]`` added to the output of each named layer."""
    perturb = None if eps is None else (lambda name, out: out + eps[name] if name in eps else out)
    return _apply(net, params, x, perturb, "")


def _loss(loss):
    return FORWARD[getattr(loss, "name", loss)]


def value_and_grad(net, loss):
    """``jax.value_and_grad`` of ``loss(forward(net, params, x), y)`` with respect to params."""
    loss_fn = _loss(loss)
    return jax.value_and_grad(lambda p, x, y: loss_fn(forward(net, p, x), y))


def layer_outputs(net, params, x):
    """The output shape and dtype of every named layer, under the names the deltas use."""
    shapes = {}

    def record(name, out):
        shapes[name] = jax.ShapeDtypeStruct(out.shape, out.dtype)
        return out

    jax.eval_shape(lambda p, h: _apply(net, p, h, record, ""), params, x)
    return shapes


def value_grad_and_deltas(net, loss):
    """``(C, ∂C/∂params, deltas)`` with ``deltas[name] = ∂C/∂(output of that layer)``."""
    loss_fn = _loss(loss)

    def f(params, x, y):
        shapes = layer_outputs(net, params, x)
        eps = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}

        def c(p, e):
            return loss_fn(forward(net, p, x, e), y)

        value, (grads, deltas) = jax.value_and_grad(c, argnums=(0, 1))(params, eps)
        return value, grads, deltas

    return f

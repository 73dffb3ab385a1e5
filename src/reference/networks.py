"""Reference networks built from a network's *description* (``kind``, ``config``, ``name``,
``children``); gradients and per-layer deltas from ``jax.grad`` only.

A layer's delta is ∂C/∂(its output), obtained by adding a zero perturbation ε to that output
and differentiating C with respect to ε.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .ops import FORWARD


def _apply(layer, params, x, eps, path):
    kind = layer.kind
    if kind == "serial":
        for child in layer.children:
            name = f"{path}{child.name}"
            x = _apply(child, params[child.name], x, eps, f"{name}/")
            if eps is not None and name in eps:
                x = x + eps[name]
        return x
    if kind == "dense":
        return FORWARD["dense"](x, params["w"], params["b"])
    if kind in FORWARD:
        return FORWARD[kind](x, **dict(layer.config))
    raise NotImplementedError(f"reference: no forward for layer kind {kind!r}")


def forward(net, params, x, eps=None):
    """The network's output, with ``eps[name]`` added to the output of each named layer."""
    return _apply(net, params, x, eps, "")


def _loss(loss):
    return FORWARD[getattr(loss, "name", loss)]


def value_and_grad(net, loss):
    """``jax.value_and_grad`` of ``loss(forward(net, params, x), y)`` with respect to params."""
    loss_fn = _loss(loss)
    return jax.value_and_grad(lambda p, x, y: loss_fn(forward(net, p, x), y))


def layer_outputs(net, params, x):
    """The output shapes of every named layer, with the names the deltas use."""
    shapes = {}

    def record(layer, p, h, path):
        if layer.kind != "serial":
            return
        for child in layer.children:
            name = f"{path}{child.name}"
            out = jax.eval_shape(
                lambda q, z, c=child, n=name: _apply(c, q, z, None, n + "/"), p[child.name], h
            )
            record(child, p[child.name], h, f"{name}/")
            shapes[name] = out
            h = out

    record(net, params, x, "")
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

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

A layer kind of the user's own gets an independent forward of its own with :func:`register`
(``fn(params, x, **config) -> y``, kept in :data:`REGISTERED`), or for one call through the
``layers`` argument of the functions below: ``{kind: fn(layer, params, x, run) -> (y,
new_state)}``, the signature of :data:`MODE_LAYERS`, consulted before :data:`REGISTERED`.
The reference calls what it is handed and nothing else; it never imports manual_bp.

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
    """How a layer runs: training or evaluation, its PRNG key, its state, and the forwards
    handed in for layer kinds of the user's own (``layers``)."""

    train: bool = True
    key: Any = None
    state: Any = None
    layers: Any = None


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

REGISTERED: dict[str, Callable[..., Any]] = {}
"""Independent reference forwards of the user's own layer kinds, ``fn(params, x, **config) ->
y``, entered by :func:`register`."""


def has_forward(kind: str) -> bool:
    """Whether the reference has a forward of its own for a leaf layer of ``kind`` (built in or
    registered)."""
    return kind in MODE_LAYERS or kind in LAYER_FORWARD or kind in FORWARD or kind in REGISTERED


def register(kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Enter ``fn(params, x, **config) -> y`` as the reference forward of layers of ``kind``
    (a leaf layer of the user's own; ``params`` is its dict of parameters, ``{}`` for none, and
    ``config`` its settings) and return ``fn``. Write it independently of the layer's rule —
    with jax.numpy — so that ``jax.grad`` of it checks the handwritten backward.

    Raises:
      TypeError: if ``kind`` is not a non-empty str or ``fn`` is not callable.
      ValueError: if ``kind`` has a built-in reference forward.
    """
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"reference.register: kind must be a non-empty str, got {kind!r}")
    if not callable(fn):
        raise TypeError(
            f"reference.register({kind!r}): fn must be callable, got {type(fn).__name__}"
        )
    if kind in MODE_LAYERS or kind in LAYER_FORWARD or kind in FORWARD:
        raise ValueError(
            f"reference.register: kind {kind!r} has a built-in reference forward; give your "
            "layer a kind of its own"
        )
    REGISTERED[kind] = fn
    return fn


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
                child,
                params[child.name],
                h,
                perturb,
                f"{name}/",
                run._replace(key=key, state=state),
            )
            return out if perturb is None else perturb(name, out)

        y = fn(layer, params, x, run_child)
        return y, new_state
    if run.layers and layer.kind in run.layers:
        return run.layers[layer.kind](layer, params, x, run)
    if layer.kind in REGISTERED:
        return REGISTERED[layer.kind](params, x, **dict(layer.config)), {}
    if layer.kind in FORWARD:
        return FORWARD[layer.kind](x, **dict(layer.config)), {}
    raise NotImplementedError(
        f"reference: no forward for layer kind {layer.kind!r}; register one with "
        "reference.register(kind, fn)"
    )


def forward_with_state(net, params, x, eps=None, *, state=None, key=None, train=False, layers=None):
    """``(output, new_state)``, with ``eps[name]`` added to the output of each named layer;
    ``layers`` as in the module docstring."""
    perturb = None if eps is None else (lambda name, out: out + eps[name] if name in eps else out)
    return _apply(net, params, x, perturb, "", Run(train, key, state, layers))


def forward(net, params, x, eps=None, *, state=None, key=None, train=False, layers=None):
    """The network's output, with ``eps[name]`` added to the output of each named layer."""
    return forward_with_state(
        net, params, x, eps, state=state, key=key, train=train, layers=layers
    )[0]


def _loss(loss):
    """A loss by name (or a named rule): its reference forward; a plain function as it is."""
    if isinstance(loss, str) or hasattr(loss, "name"):
        return FORWARD[getattr(loss, "name", loss)]
    return loss


def value_and_grad(net, loss, *, has_state=False, train=True, layers=None):
    """``jax.value_and_grad`` of ``loss(forward(net, params, x), y)`` with respect to params.

    ``f(params, x, y, key=None) -> (C, grads)``; with ``has_state``,
    ``f(params, state, x, y, key=None) -> ((C, new_state), grads)``. ``loss`` is a loss's
    name or a function ``loss(out, y) -> C``.
    """
    loss_fn = _loss(loss)

    def c(p, state, x, y, key):
        out, new_state = forward_with_state(
            net, p, x, state=state, key=key, train=train, layers=layers
        )
        return loss_fn(out, y), new_state

    grad = jax.value_and_grad(c, has_aux=True)
    if has_state:
        return lambda params, state, x, y, key=None: grad(params, state, x, y, key)

    def f(params, x, y, key=None):
        (value, _), grads = grad(params, None, x, y, key)
        return value, grads

    return f


def layer_outputs(net, params, x, *, state=None, key=None, train=False, layers=None):
    """The output shape and dtype of every named layer, under the names the deltas use."""
    shapes = {}

    def record(name, out):
        shapes[name] = jax.ShapeDtypeStruct(out.shape, out.dtype)
        return out

    jax.eval_shape(
        lambda p, h, s, k: _apply(net, p, h, record, "", Run(train, k, s, layers)),
        params,
        x,
        state,
        key,
    )
    return shapes


def layer_values(net, params, x, *, state=None, key=None, train=False, layers=None):
    """The output of every named layer, under the names the deltas use."""
    values = {}

    def record(name, out):
        values[name] = out
        return out

    _apply(net, params, x, record, "", Run(train, key, state, layers))
    return values


def value_grad_and_deltas(net, loss, *, has_state=False, train=True, layers=None):
    """``(C, ∂C/∂params, deltas)`` with ``deltas[name] = ∂C/∂(output of that layer)``; with
    ``has_state``, ``f(params, state, x, y, key=None) -> ((C, new_state), grads, deltas)``."""
    loss_fn = _loss(loss)
    run = {"train": train, "layers": layers}

    def g(params, state, x, y, key):
        shapes = layer_outputs(net, params, x, state=state, key=key, **run)
        eps = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}

        def c(p, e):
            out, new_state = forward_with_state(net, p, x, e, state=state, key=key, **run)
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

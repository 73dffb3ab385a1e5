"""The independent side of a network check, layer by layer, and float64 finite differences of
the whole network's loss.

Each layer of a network is represented on the independent side by

* ``"reference"``: the reference's own forward of the library's layer kinds;
* ``"registered reference"``: a forward registered for a kind of the user's own with
  ``reference.register(kind, fn)``;
* ``"given reference"``: a forward handed to :func:`~manual_bp.verify.check_network` in its
  ``references`` argument (``{kind: fn(params, x, **config) -> y}``);
* ``"jax.vjp(own forward)"``: the layer's own ``forward``, differentiated by autodiff — for a
  leaf layer whose kind has no reference forward. The user's forward is then the spec their
  backward must match, and float64 central differences of the loss, along random directions
  in each parameter array (:func:`finite_difference_leaves`), check the network as a whole.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import reference

from ..nn import Context, Layer
from ..rules import Rule
from .tolerances import FD_TOLERANCE, Comparison, compare, f64, is_float

__all__ = [
    "FD_DIRECTIONS",
    "GIVEN",
    "OWN_FORWARD",
    "REFERENCE",
    "REGISTERED",
    "SIDES",
    "Sides",
    "check_references",
    "finite_difference_leaves",
    "independent_sides",
    "reference_loss",
    "tree_paths",
]

REFERENCE = "reference"
REGISTERED = "registered reference"
GIVEN = "given reference"
OWN_FORWARD = "jax.vjp(own forward)"
SIDES = (REFERENCE, REGISTERED, GIVEN, OWN_FORWARD)
"""The comparisons a layer can get (``Comparison.against`` of its arrays)."""

FD_DIRECTIONS = 2
"""Random directions per parameter array along which the loss is differenced."""


def check_references(references: Any) -> dict[str, Callable[..., Any]]:
    """``references`` as a dict of layer kind -> ``fn(params, x, **config)``; ``{}`` for None."""
    if references is None:
        return {}
    if not isinstance(references, Mapping):
        raise TypeError(
            "check_network: references must be a dict of layer kind -> fn(params, x, **config), "
            f"got {type(references).__name__}"
        )
    for kind, fn in references.items():
        if not isinstance(kind, str) or not callable(fn):
            raise TypeError(
                "check_network: references must map layer kinds (str) to functions, got "
                f"{kind!r}: {type(fn).__name__}"
            )
        if reference.has_forward(kind) and kind not in reference.REGISTERED:
            raise ValueError(
                f"check_network: references: kind {kind!r} has a built-in reference forward"
            )
    return dict(references)


class Sides(NamedTuple):
    """What stands for each layer on the independent side, by delta name (``""`` the root),
    and the forwards handed to the reference by layer kind."""

    sources: dict[str, str]
    layers: dict[str, Callable[..., Any]]


def independent_sides(net: Layer, references: Mapping[str, Any]) -> Sides:
    """The independent side of every layer of ``net``; ``references`` as checked by
    :func:`check_references`."""
    sources: dict[str, str] = {}
    layers = {kind: _given(fn) for kind, fn in references.items()}

    def walk(layer: Layer, path: str) -> None:
        kind = layer.kind
        if kind in references:
            sources[path] = GIVEN
        elif kind in reference.REGISTERED:
            sources[path] = REGISTERED
        elif reference.has_forward(kind):
            sources[path] = REFERENCE
        elif layer.children:
            raise ValueError(
                f"check_network: layer {path or layer.name or kind!r} of kind {kind!r} has "
                "children and no reference forward: a combinator of your own needs its "
                "children run by the reference; build it from serial and residual"
            )
        else:
            sources[path] = OWN_FORWARD
            layers[kind] = _own_forward
        for child in layer.children:
            walk(child, f"{path}/{child.name}" if path else child.name)

    walk(net, "")
    return Sides(sources, layers)


def _own_forward(layer, params, x, run):
    y, tape = layer.forward(params, x, Context(run.train, run.key, run.state))
    return y, layer.state_of(tape)


def _given(fn):
    def apply(layer, params, x, run):
        del run
        return fn(params, x, **dict(layer.config)), {}

    return apply


def reference_loss(loss: Rule) -> Any:
    """The loss the reference differentiates: its own forward of a library loss, else the
    loss rule's forward (a loss of the user's own)."""
    if loss.name in reference.FORWARD:
        return loss.name
    return lambda out, y: loss.fwd(out, y)[0]


def tree_paths(tree: Any) -> list[tuple[str, ...]]:
    """Every leaf's path of keys, as strings."""
    return [
        tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        for path, _ in jax.tree_util.tree_leaves_with_path(tree)
    ]


def finite_difference_leaves(
    net: Layer,
    loss: Any,
    mine: Callable[..., Any],
    args: tuple,
    key: Any,
    train: bool,
    layers: Mapping[str, Any],
) -> list[Comparison]:
    """The handwritten gradient along random directions v of each parameter array, ⟨∂C/∂θ, v⟩,
    against float64 central differences (C(θ + h v) − C(θ − h v)) / 2h of the loss of the
    independent side, h = 1e-6 · max(1, max|θ|): one comparison per array, judged with
    :data:`~manual_bp.verify.tolerances.FD_TOLERANCE` on the scale of its layer's largest
    directional derivative. ``args`` are ``(params, x, y)`` or ``(params, state, x, y)``."""
    loss_fn = reference.FORWARD[loss] if isinstance(loss, str) else loss
    paths = tree_paths(args[0])
    steps = [
        1e-6 * max(1.0, float(np.max(np.abs(f64(p)), initial=0))) for p in jax.tree.leaves(args[0])
    ]
    n = len(steps)
    rng = np.random.default_rng(0)
    dirs = [rng.standard_normal((FD_DIRECTIONS, *np.shape(p))) for p in jax.tree.leaves(args[0])]

    shaped: list[bool] = []  # whether each handwritten gradient has its parameter's shape

    def run(args, dirs, key):
        params = args[0]
        state, x, y = args[1:] if len(args) == 4 else (None, *args[1:])
        grads = mine(*args, key)[1]  # the handwritten gradient, in float64
        p_leaves, treedef = jax.tree.flatten(params)
        g_leaves = jax.tree.leaves(grads)
        shaped[:] = [g.shape == p.shape for g, p in zip(g_leaves, p_leaves, strict=True)]

        def loss_at(p):
            out = reference.forward(net, p, x, state=state, key=key, train=train, layers=layers)
            return loss_fn(out, y)

        def one(i):  # direction i % D of array i // D
            v = [
                jnp.where(i // FD_DIRECTIONS == j, d[i % FD_DIRECTIONS], 0.0)
                for j, d in enumerate(dirs)
            ]
            h = jnp.asarray(steps)[i // FD_DIRECTIONS]
            pairs = list(zip(p_leaves, v, strict=True))
            plus = jax.tree.unflatten(treedef, [p + h * d for p, d in pairs])
            minus = jax.tree.unflatten(treedef, [p - h * d for p, d in pairs])
            along = sum(
                jnp.vdot(g, d) for g, d in zip(g_leaves, v, strict=True) if g.shape == d.shape
            )
            return along, (loss_at(plus) - loss_at(minus)) / (2 * h)

        return jax.lax.map(one, jnp.arange(n * FD_DIRECTIONS))

    with jax.enable_x64(True):
        args64 = jax.tree.map(lambda a: np.asarray(f64(a)) if is_float(a) else a, args)
        along, central = (np.asarray(a) for a in jax.jit(run)(args64, dirs, key))
    along, central = along.reshape(n, FD_DIRECTIONS), central.reshape(n, FD_DIRECTIONS)
    scales: dict[tuple[str, ...], float] = {}
    for path, c in zip(paths, central, strict=True):
        scales[path[:-1]] = max(scales.get(path[:-1], 0.0), float(np.max(np.abs(c))))
    against = f"finite differences (f64, {FD_DIRECTIONS} dirs)"
    return [  # a gradient of the wrong shape is already a failed comparison
        compare(a, c, np.float64, FD_TOLERANCE, scales[p[:-1]], "/".join(("grads", *p)), against)
        for p, a, c, ok in zip(paths, along, central, shaped, strict=True)
        if ok
    ]

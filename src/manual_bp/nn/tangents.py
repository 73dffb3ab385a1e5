"""Forward mode through a network: each layer's ``jvp`` and their composition in order.

A layer's ``jvp(params, tape, dparams, dx) -> dy`` is the directional derivative of its output
along a tangent of its parameters ``dparams`` (a tree like ``params``) and of its input ``dx``
(``None`` for integer inputs, such as an embedding's ids), evaluated at the forward pass that
recorded ``tape``: dy = ∂y/∂params · dparams + ∂y/∂x · dx, linear in the tangents. It is built
from the handwritten ``jvp`` of the rules the layer applies, as its ``backward`` is built from
their ``bwd``, and it is the transpose of ``backward`` on the same tape.

A serial network carries the tangent forward as its forward pass carries the activation:
layer by layer, dz_l = ∂z_l/∂θ_l · dθ_l + ∂z_l/∂z_{l−1} · dz_{l−1}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["require_jvp", "serial_jvp"]


def require_jvp(layer: Any) -> Callable[..., Any]:
    """``layer.jvp``, or a TypeError naming the layer when it has no forward mode (a layer
    written from scratch without ``jvp``, or made from a rule whose ``jvp`` is ``None``)."""
    jvp = getattr(layer, "jvp", None)
    if jvp is None:
        raise TypeError(
            f"layer {layer.name or layer.kind!r} (kind {layer.kind!r}) has no forward mode: "
            "give Layer(..., jvp=fn) with fn(params, tape, dparams, dx) -> dy, or build it with "
            "nn.from_rule from a rule that has a jvp"
        )
    return jvp


def serial_jvp(
    layers: Sequence[Any],
    params: Any,
    tape: Sequence[Any],
    dparams: Any,
    dx: Any,
    inject: Callable[[Any, Any], Any] | None = None,
) -> Any:
    """The forward-mode pass of ``serial`` over ``layers`` (already named) and their tapes.

    Walks the layers in order: each turns the tangent of its input (and of its parameters,
    ``dparams[name]``) into the tangent of its output. ``inject(layer, dy)``, if given, may
    replace the tangent a layer hands on (activity-perturbed forward gradients add a random
    direction at a layer's output there).
    """
    for layer, t in zip(layers, tape, strict=True):
        dx = require_jvp(layer)(params[layer.name], t, dparams[layer.name], dx)
        if inject is not None:
            dx = inject(layer, dx)
    return dx

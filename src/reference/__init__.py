"""The independent functional reference: the same functions written with jax.numpy, jax.nn,
lax and optax, differentiated by ``jax.grad`` only. It never imports manual_bp; it reads a
network's description (layer kinds, settings and names). A layer kind of the user's own gets
its reference forward from :func:`register`, or from the forwards handed to one call.
"""

from .modes import MODE_LAYERS
from .networks import (
    LAYER_FORWARD,
    REGISTERED,
    forward,
    forward_with_state,
    has_forward,
    layer_outputs,
    layer_values,
    register,
    value_and_grad,
    value_grad_and_deltas,
)
from .ops import FORWARD

__all__ = [
    "FORWARD",
    "LAYER_FORWARD",
    "MODE_LAYERS",
    "REGISTERED",
    "forward",
    "forward_with_state",
    "has_forward",
    "layer_outputs",
    "layer_values",
    "register",
    "value_and_grad",
    "value_grad_and_deltas",
]

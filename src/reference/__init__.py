"""The independent functional reference: the same functions written with jax.numpy, jax.nn,
lax and optax, differentiated by ``jax.grad`` only. It never calls manual_bp's code; it reads
a network's description (layer kinds, settings and names).
"""

from .modes import MODE_LAYERS
from .networks import (
    LAYER_FORWARD,
    forward,
    forward_with_state,
    layer_outputs,
    value_and_grad,
    value_grad_and_deltas,
)
from .ops import FORWARD

__all__ = [
    "FORWARD",
    "LAYER_FORWARD",
    "MODE_LAYERS",
    "forward",
    "forward_with_state",
    "layer_outputs",
    "value_and_grad",
    "value_grad_and_deltas",
]

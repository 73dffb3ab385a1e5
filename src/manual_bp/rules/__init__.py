"""Every handwritten rule; importing this package fills :data:`manual_bp.RULES`.

Each family module registers its rules on import; the imports below are the whole list.
"""

from .activations import elu, gelu, leaky_relu, relu, sigmoid, silu, softplus, tanh
from .linear import dense, matmul
from .losses import mse, sigmoid_binary_cross_entropy, softmax_cross_entropy
from .softmax import log_softmax, logsumexp, softmax

__all__ = [
    "dense",
    "elu",
    "gelu",
    "leaky_relu",
    "log_softmax",
    "logsumexp",
    "matmul",
    "mse",
    "relu",
    "sigmoid",
    "sigmoid_binary_cross_entropy",
    "silu",
    "softmax",
    "softmax_cross_entropy",
    "softplus",
    "tanh",
]

# the layer families: importing each registers its rules
from . import attention, conv, embedding, normalization, recurrent, stochastic  # noqa: F401

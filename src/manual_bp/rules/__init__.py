"""Every handwritten rule, and the contract they follow (:mod:`manual_bp.rules.contract`).

Importing this package fills :data:`manual_bp.RULES`: each family module registers its rules
beside their definitions, and the imports below are the whole list. Every rule is an attribute
of this package (``manual_bp.rules.batch_norm``); the family modules hold their conventions
(index letters, kinks) in their docstrings.
"""

# the families, in the order of the data's way: importing each registers its rules
from .activations import (
    SECOND_DERIVATIVES,
    elu,
    gelu,
    leaky_relu,
    relu,
    sigmoid,
    silu,
    softplus,
    tanh,
)
from .attention import multi_head_attention
from .contract import RULES, Rule, get_rule, register
from .conv import avg_pool2d, conv2d, flatten, max_pool2d
from .flash_attention import flash_attention
from .linear import dense, matmul
from .lookup import add_positions, embedding
from .losses import mse, sigmoid_binary_cross_entropy, softmax_cross_entropy
from .normalization import batch_norm, batch_norm_inference, layer_norm, rms_norm
from .probabilities import log_softmax, logsumexp, softmax
from .recurrent import gru, last_step, lstm, rnn
from .stochastic import dropout

__all__ = [
    "RULES",
    "SECOND_DERIVATIVES",
    "Rule",
    "add_positions",
    "avg_pool2d",
    "batch_norm",
    "batch_norm_inference",
    "conv2d",
    "dense",
    "dropout",
    "elu",
    "embedding",
    "flash_attention",
    "flatten",
    "gelu",
    "get_rule",
    "gru",
    "last_step",
    "layer_norm",
    "leaky_relu",
    "log_softmax",
    "logsumexp",
    "lstm",
    "matmul",
    "max_pool2d",
    "mse",
    "multi_head_attention",
    "register",
    "relu",
    "rms_norm",
    "rnn",
    "sigmoid",
    "sigmoid_binary_cross_entropy",
    "silu",
    "softmax",
    "softmax_cross_entropy",
    "softplus",
    "tanh",
]

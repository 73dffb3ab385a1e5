"""Layers and networks: stax-style pure functions with named layers; a network is a layer.

Every layer is a :class:`Layer`, a NamedTuple of pure functions (:mod:`manual_bp.nn.core` holds
the contract and the combinators):

* ``init(key, input_shape, dtype=float32) -> params``
* ``forward(params, x, ctx=None) -> (y, tape)``: the forward pass keeps what the backward needs
  — for a dense layer the input activation ``a``, which is ∂z/∂w;
* ``backward(params, tape, dy) -> (grads, deltas, dx)``: turns ∂C/∂(output) into the
  gradients of its own parameters and ∂C/∂(input), which is the previous layer's delta.

:func:`from_rule` makes a layer from a rule of your own, with or without parameters.

The families: :mod:`~manual_bp.nn.layers` (activations, softmax, dense and the one
:data:`ACTIVATIONS` table), :mod:`~manual_bp.nn.conv`, :mod:`~manual_bp.nn.modes` (batch norm,
dropout), :mod:`~manual_bp.nn.recurrent`, :mod:`~manual_bp.nn.attention` (layer and RMS norm,
embeddings, multi-head attention) and :mod:`~manual_bp.nn.models` (mlp, LeNet, the LSTM/GRU
classifiers, TransformerLM).
"""

from .attention import Embedding, LayerNorm, MultiHeadAttention, PositionalEmbedding, RMSNorm
from .conv import AvgPool2D, Conv2D, Flatten, MaxPool2D
from .core import (
    Context,
    Layer,
    by_layer,
    check_params,
    check_state,
    has_state,
    residual,
    serial,
)
from .layers import (
    ACTIVATIONS,
    Dense,
    Elu,
    Gelu,
    LeakyRelu,
    LogSoftmax,
    Relu,
    Sigmoid,
    Silu,
    Softmax,
    Softplus,
    Tanh,
    from_rule,
)
from .models import GRUClassifier, LeNet, LSTMClassifier, TransformerLM, mlp
from .modes import BatchNorm, Dropout
from .recompute import remat, remat_serial
from .recurrent import GRU, LSTM, RNN, LastStep

__all__ = [
    "ACTIVATIONS",
    "GRU",
    "LSTM",
    "RNN",
    "AvgPool2D",
    "BatchNorm",
    "Context",
    "Conv2D",
    "Dense",
    "Dropout",
    "Elu",
    "Embedding",
    "Flatten",
    "GRUClassifier",
    "Gelu",
    "LSTMClassifier",
    "LastStep",
    "Layer",
    "LayerNorm",
    "LeNet",
    "LeakyRelu",
    "LogSoftmax",
    "MaxPool2D",
    "MultiHeadAttention",
    "PositionalEmbedding",
    "RMSNorm",
    "Relu",
    "Sigmoid",
    "Silu",
    "Softmax",
    "Softplus",
    "Tanh",
    "TransformerLM",
    "by_layer",
    "check_params",
    "check_state",
    "from_rule",
    "has_state",
    "mlp",
    "remat",
    "remat_serial",
    "residual",
    "serial",
]

"""Models by name: the classifiers ``manual-bp train --model`` builds, and how their error is
sent backward (``--feedback``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .. import credit, nn
from ..data import Dataset

__all__ = ["FEEDBACK", "MODELS", "build_model"]

MODELS = ("mlp", "cnn", "lstm", "gru")
"""The model kinds :func:`build_model` (and ``manual-bp train --model``) builds."""

FEEDBACK = ("backprop", "fa", "sign", "kp", "dfa")
"""How :func:`build_model` (and ``manual-bp train --feedback``) sends the error backward."""


def build_model(
    kind: str,
    data: Dataset,
    *,
    hidden: Sequence[int] = (128,),
    activation: str = "relu",
    dropout: float = 0.0,
    batch_norm: bool = True,
    feedback: str = "backprop",
) -> tuple[nn.Layer, Dataset]:
    """A classifier of ``kind`` for ``data``, and the data laid out for it.

    The datasets hold flat examples (n, d). ``mlp`` uses them as they are, with ``hidden`` as
    its widths. ``cnn`` is :func:`manual_bp.nn.LeNet` on square images (n, s, s, 1) when
    d = s², else on 1-D signals (n, d, 1, 1) with 5×1 kernels and 2×1 pools; its dense layer
    has ``hidden[0]`` units. ``lstm``/``gru`` read an image row by row (n, s, s), or a
    signal one value per step (n, d, 1), with ``hidden[0]`` units, then classify the last step.
    ``dropout`` goes to :func:`~manual_bp.nn.mlp` and LeNet; ``batch_norm`` to LeNet.
    ``feedback`` is how the error is sent backward (:data:`FEEDBACK`): ``"backprop"``, or a
    :func:`manual_bp.credit.feedback` variant on every weighted layer, or ``"dfa"``
    (:func:`manual_bp.credit.direct_feedback` over the model's layers).
    """
    if kind not in MODELS:
        raise ValueError(f"build_model: unknown model {kind!r}; choose one of {', '.join(MODELS)}")
    if feedback not in FEEDBACK:
        raise ValueError(f"build_model: feedback must be one of {FEEDBACK}, got {feedback!r}")
    if kind == "mlp":
        net = nn.mlp(hidden, data.num_classes, activation, dropout)
        return _with_feedback(net, feedback), data
    d = int(data.x_train.shape[1])
    side = math.isqrt(d)
    image = side * side == d
    width = int(hidden[0]) if len(hidden) else 64
    if kind == "cnn":
        shape = (side, side, 1) if image else (d, 1, 1)
        kernel, pool = ((3, 3), (2, 2)) if image else ((5, 1), (2, 1))
        net = nn.LeNet(
            data.num_classes,
            channels=(16, 32),
            hidden=width,
            activation=activation,
            kernel_size=kernel,
            pool=pool,
            batch_norm=batch_norm,
            dropout=dropout,
        )
    else:
        shape = (side, side) if image else (d, 1)
        make = nn.LSTMClassifier if kind == "lstm" else nn.GRUClassifier
        net = make(width, data.num_classes)

    def view(x: np.ndarray) -> np.ndarray:
        return np.reshape(x, (x.shape[0], *shape))

    net = _with_feedback(net, feedback)
    return net, data._replace(x_train=view(data.x_train), x_test=view(data.x_test))


def _with_feedback(net: nn.Layer, feedback: str) -> nn.Layer:
    """The model's top-level layers with their backward swapped (see :mod:`manual_bp.credit`)."""
    if feedback == "backprop":
        return net
    if feedback == "dfa":
        return credit.direct_feedback(*net.children, name=net.name)
    layers = [
        credit.feedback(c, feedback) if c.kind in credit.TRANSPORT else c for c in net.children
    ]
    return nn.serial(*layers, name=net.name)

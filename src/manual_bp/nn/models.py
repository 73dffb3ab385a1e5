"""Models built from the layers: an MLP, LeNet, the LSTM/GRU classifiers and a transformer LM.

Each is a :func:`~manual_bp.nn.serial` of named layers, so its deltas are named after them.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._checks import is_int, require_positive_int
from .attention import Embedding, LayerNorm, MultiHeadAttention, PositionalEmbedding
from .conv import Conv2D, Flatten, MaxPool2D
from .core import Layer, residual, serial
from .layers import ACTIVATIONS, Dense, Gelu
from .modes import BatchNorm, Dropout
from .recurrent import GRU, LSTM, LastStep

__all__ = ["GRUClassifier", "LSTMClassifier", "LeNet", "TransformerLM", "mlp"]


def mlp(
    hidden: Sequence[int], num_classes: int, activation: str = "relu", dropout: float = 0.0
) -> Layer:
    """A multilayer perceptron: ``serial(Dense(h₁), act, ..., Dense(h_k), act, Dense(c))``.

    Layers are named by position (``dense_0``, ``relu_1``, ..., ``dense_{2k}``). An empty
    ``hidden`` gives a linear model. ``activation`` is one of :data:`ACTIVATIONS`.
    ``dropout`` > 0 puts a :func:`~manual_bp.Dropout` after every hidden activation.
    """
    if isinstance(hidden, str) or not isinstance(hidden, Sequence):
        raise TypeError(f"mlp: hidden must be a sequence of ints, got {type(hidden).__name__}")
    bad = [h for h in hidden if not is_int(h) or h <= 0]
    if bad:
        raise ValueError(f"mlp: hidden sizes must be positive ints, got {list(hidden)!r}")
    num_classes = require_positive_int("mlp", "num_classes", num_classes)
    if activation not in ACTIVATIONS:
        known = ", ".join(ACTIVATIONS)
        raise ValueError(f"mlp: unknown activation {activation!r}; choose one of: {known}")
    drop = [Dropout(dropout)] if dropout else []
    layers: list[Layer] = []
    for h in hidden:
        layers += [Dense(int(h)), ACTIVATIONS[activation](), *drop]
    layers.append(Dense(int(num_classes)))
    return serial(*layers)


def LeNet(
    num_classes: int = 10,
    *,
    channels: tuple[int, int] = (6, 16),
    hidden: int = 64,
    activation: str = "relu",
    kernel_size: tuple[int, int] = (3, 3),
    pool: tuple[int, int] = (2, 2),
    batch_norm: bool = True,
    dropout: float = 0.0,
    name: str | None = None,
) -> Layer:
    """A LeNet-style classifier for small NHWC images (e.g. the (N, 8, 8, 1) digits):

    conv k SAME (no bias) → batch norm → act → max-pool p → conv k SAME (no bias) → batch norm →
    act → max-pool p → flatten → dense(hidden) → act → [dropout] → dense(num_classes), returning
    logits;
    k = ``kernel_size`` (3×3), p = ``pool`` (2×2). For 1-D signals laid out as (N, L, 1, 1) use
    e.g. k = (5, 1), p = (2, 1). ``batch_norm=False`` leaves the normalizations out (the
    network then has no state); ``dropout`` > 0 adds a :func:`~manual_bp.nn.Dropout` before
    the last dense layer.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"LeNet: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
        )
    if (
        not isinstance(channels, tuple | list)
        or len(channels) != 2
        or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels)
    ):
        raise ValueError(f"LeNet: channels must be two positive ints, got {channels!r}")
    num_classes = require_positive_int("LeNet", "num_classes", num_classes)
    hidden = require_positive_int("LeNet", "hidden", hidden)
    if not isinstance(batch_norm, bool):
        raise TypeError(f"LeNet: batch_norm must be a bool, got {batch_norm!r}")
    act = ACTIVATIONS[activation]
    norm = [BatchNorm] if batch_norm else []
    drop = [Dropout(dropout)] if dropout else []
    return serial(
        Conv2D(channels[0], tuple(kernel_size), use_bias=not batch_norm),
        *[n() for n in norm],
        act(),
        MaxPool2D(tuple(pool)),
        Conv2D(channels[1], tuple(kernel_size), use_bias=not batch_norm),
        *[n() for n in norm],
        act(),
        MaxPool2D(tuple(pool)),
        Flatten(),
        Dense(hidden),
        act(),
        *drop,
        Dense(num_classes),
        name=name,
    )


def LSTMClassifier(hidden: int, num_classes: int, *, name: str | None = None) -> Layer:
    """serial(LSTM(hidden), LastStep(), Dense(num_classes)): logits from the last hidden state."""
    return serial(LSTM(hidden), LastStep(), Dense(num_classes), name=name)


def GRUClassifier(hidden: int, num_classes: int, *, name: str | None = None) -> Layer:
    """serial(GRU(hidden), LastStep(), Dense(num_classes)): logits from the last hidden state."""
    return serial(GRU(hidden), LastStep(), Dense(num_classes), name=name)


def TransformerLM(
    vocab: int,
    *,
    max_len: int,
    features: int = 16,
    num_heads: int = 2,
    num_blocks: int = 2,
    mlp_ratio: int = 2,
    block_size: int | None = None,
    name: str | None = None,
) -> Layer:
    """A pre-LayerNorm causal language model: ids (N, T) -> logits (N, T, vocab).

    ``embed`` → ``pos`` → ``num_blocks`` × [``attn_i`` = x + MHA(LN(x)),
    ``mlp_i`` = x + Dense(Gelu(Dense(LN(x))))] → ``final_norm`` → ``head`` (Dense(vocab)).
    Inside block i the deltas are named ``attn_i/block/norm``, ``attn_i/block/mha``,
    ``mlp_i/block/up`` and so on.
    Pair it with ``softmax_cross_entropy`` on integer targets (N, T). With ``block_size`` the
    attention is the blockwise rule over blocks of that many keys (see
    :func:`~manual_bp.nn.MultiHeadAttention`): the same network, a tape linear in T.
    """
    require_positive_int("TransformerLM", "num_blocks", num_blocks)
    hidden = require_positive_int("TransformerLM", "mlp_ratio", mlp_ratio) * features
    layers = [Embedding(vocab, features, name="embed"), PositionalEmbedding(max_len, name="pos")]
    for i in range(num_blocks):
        attn = serial(
            LayerNorm(name="norm"),
            MultiHeadAttention(num_heads, causal=True, block_size=block_size, name="mha"),
            name="block",
        )
        mlp = serial(
            LayerNorm(name="norm"),
            Dense(hidden, name="up"),
            Gelu(name="gelu"),
            Dense(features, name="down"),
            name="block",
        )
        layers += [residual(attn, name=f"attn_{i}"), residual(mlp, name=f"mlp_{i}")]
    layers += [LayerNorm(name="final_norm"), Dense(vocab, name="head")]
    return serial(*layers, name=name)

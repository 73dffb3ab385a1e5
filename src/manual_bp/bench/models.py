"""The benchmarked models: the manual_bp network, a batch of data, its forward FLOPs and the
description of its PyTorch twin (built in :mod:`manual_bp.bench.baselines`).

Every model is a :class:`Case`. Sizes follow the suite's description; ``tiny=True`` shrinks
them to the smallest configuration the smoke test runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from .. import nn
from ..train import mlp

__all__ = ["LOSS", "Case", "build_cases"]

LOSS = "softmax_cross_entropy"
"""The loss of every benchmarked model."""


@dataclass(frozen=True)
class Case:
    """One benchmarked model.

    ``x_shape`` is the input batch's shape and ``x_kind`` says how to draw it (``"normal"``
    floats or ``"ids"`` integer token ids below ``vocab``); labels are ints below
    ``num_classes`` with shape ``y_shape``. ``forward_flops`` counts the multiply-adds of the
    matmuls and convolutions of one forward pass (×2); a training step is counted as three
    times that (forward, ∂C/∂(layer input) and ∂C/∂w) less ``input_grad_flops``, the
    ∂C/∂x of the first layer, which no one needs and which is not computed.
    ``torch_spec`` describes the PyTorch twin.
    """

    name: str
    title: str
    net: nn.Layer
    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    num_classes: int
    forward_flops: int
    torch_spec: dict[str, Any] = field(default_factory=dict)
    x_kind: str = "normal"
    vocab: int = 0
    mlp_widths: tuple[int, ...] = ()  # set for the MLPs: (in, h1, ..., out)
    mlp_activation: str = ""
    input_grad_flops: int = 0

    @property
    def step_flops(self) -> int:
        return 3 * self.forward_flops - self.input_grad_flops

    @property
    def stateful(self) -> bool:
        return nn.has_state(self.net)

    def batch(
        self, key: jax.Array, dtype: Any = jnp.float32, steps: int | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """One batch ``(x, y)``, or ``steps`` batches stacked on a leading axis."""
        lead = () if steps is None else (steps,)
        kx, ky = jax.random.split(key)
        if self.x_kind == "ids":
            x = jax.random.randint(kx, (*lead, *self.x_shape), 0, self.vocab, jnp.int32)
        else:
            x = jax.random.normal(kx, (*lead, *self.x_shape), jnp.float32).astype(dtype)
        y = jax.random.randint(ky, (*lead, *self.y_shape), 0, self.num_classes, jnp.int32)
        return x, y


def _mlp_case(name: str, title: str, widths: tuple[int, ...], activation: str, batch: int) -> Case:
    net = mlp(list(widths[1:-1]), widths[-1], activation)
    flops = sum(2 * batch * a * b for a, b in itertools.pairwise(widths))
    return Case(
        name,
        title,
        net,
        (batch, widths[0]),
        (batch,),
        widths[-1],
        flops,
        {"kind": "mlp", "widths": widths, "activation": activation},
        mlp_widths=widths,
        mlp_activation=activation,
        input_grad_flops=2 * batch * widths[0] * widths[1],
    )


def _conv_flops(n: int, h: int, w: int, k: int, c: int, o: int) -> int:
    return 2 * n * h * w * k * k * c * o


def build_cases(tiny: bool = False) -> dict[str, Case]:
    """Every model of the suite by name; ``tiny`` gives the smoke test's small sizes."""
    cases: list[Case] = []
    if tiny:
        cases.append(
            _mlp_case("wide_mlp", "wide MLP 32-64-64-10, B=16", (32, 64, 64, 10), "relu", 16)
        )
        cases.append(
            _mlp_case(
                "deep_mlp", "deep sigmoid MLP 3x16, B=16", (16, 16, 16, 16, 10), "sigmoid", 16
            )
        )
        cases.append(_mlp_case("tiny_mlp", "tiny MLP 64-128-10, B=8", (64, 128, 10), "relu", 8))
    else:
        cases.append(
            _mlp_case(
                "wide_mlp", "wide MLP 784-1024-1024-10, B=256", (784, 1024, 1024, 10), "relu", 256
            )
        )
        cases.append(
            _mlp_case(
                "deep_mlp",
                "deep sigmoid MLP 10x256, B=256",
                (256, *([256] * 10), 10),
                "sigmoid",
                256,
            )
        )
        cases.append(_mlp_case("tiny_mlp", "tiny MLP 64-128-10, B=64", (64, 128, 10), "relu", 64))

    # LeNet with batch norm on 8x8x1 digits-like images (the `manual-bp train --model cnn` net).
    n = 8 if tiny else 128
    c1, c2, hidden = 16, 32, 64
    flops = (
        _conv_flops(n, 8, 8, 3, 1, c1)
        + _conv_flops(n, 4, 4, 3, c1, c2)
        + 2 * n * (2 * 2 * c2 * hidden + hidden * 10)
    )
    cases.append(
        Case(
            "cnn",
            f"LeNet + batch norm, 8x8x1, B={n}",
            nn.LeNet(10, channels=(c1, c2), hidden=hidden),
            (n, 8, 8, 1),
            (n,),
            10,
            flops,
            {"kind": "cnn", "channels": (c1, c2), "hidden": hidden},
            input_grad_flops=_conv_flops(n, 8, 8, 3, 1, c1),
        )
    )

    # A small pre-LayerNorm causal transformer LM.
    n, t, f, heads, blocks, vocab = (2, 8, 16, 2, 1, 16) if tiny else (32, 64, 64, 4, 2, 64)
    per_block = 2 * n * t * (4 * f * f + 2 * f * 2 * f) + 2 * 2 * n * t * t * f
    cases.append(
        Case(
            "transformer",
            f"TransformerLM {blocks} blocks, D={f}, T={t}, B={n}",
            nn.TransformerLM(vocab, max_len=t, features=f, num_heads=heads, num_blocks=blocks),
            (n, t),
            (n, t),
            vocab,
            blocks * per_block + 2 * n * t * f * vocab,
            {
                "kind": "transformer",
                "features": f,
                "heads": heads,
                "blocks": blocks,
                "vocab": vocab,
            },
            x_kind="ids",
            vocab=vocab,
        )
    )

    # The LSTM classifier reading 8x8 images row by row.
    n, hidden = (8, 16) if tiny else (128, 64)
    cases.append(
        Case(
            "lstm",
            f"LSTM classifier, 8 steps of 8, H={hidden}, B={n}",
            nn.LSTMClassifier(hidden, 10),
            (n, 8, 8),
            (n,),
            10,
            2 * n * 8 * (8 + hidden) * 4 * hidden + 2 * n * hidden * 10,
            {"kind": "lstm", "hidden": hidden},
            input_grad_flops=2 * n * 8 * 8 * 4 * hidden,
        )
    )
    return {c.name: c for c in cases}

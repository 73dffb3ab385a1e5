"""The benchmarked models: the manual_bp network, a batch of data, its forward FLOPs, and the
same architecture in PyTorch and (for the MLPs) in plain numpy.

Every model is a :class:`Case`. Sizes follow the suite's description; ``tiny=True`` shrinks
them to the smallest configuration the smoke test runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from manual_bp import nn
from manual_bp.train import mlp

LOSS = "softmax_cross_entropy"


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

    def batch(self, key: jax.Array, dtype: Any = jnp.float32, steps: int | None = None):
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


# ---- PyTorch twins ---------------------------------------------------------------------------


def torch_model(case: Case) -> Any:
    """The same architecture as a ``torch.nn.Module`` (NCHW for the CNN), mapping the suite's
    inputs to logits (N, classes) or (N, T, vocab)."""
    import torch
    from torch import nn as tnn

    spec = case.torch_spec
    kind = spec["kind"]
    if kind == "mlp":
        widths, act = spec["widths"], {"relu": tnn.ReLU, "sigmoid": tnn.Sigmoid}[spec["activation"]]
        layers: list[Any] = []
        for a, b in itertools.pairwise(widths[:-1]):
            layers += [tnn.Linear(a, b), act()]
        layers.append(tnn.Linear(widths[-2], widths[-1]))
        return tnn.Sequential(*layers)
    if kind == "cnn":
        c1, c2 = spec["channels"]
        return tnn.Sequential(
            tnn.Conv2d(1, c1, 3, padding=1, bias=False),
            tnn.BatchNorm2d(c1),
            tnn.ReLU(),
            tnn.MaxPool2d(2),
            tnn.Conv2d(c1, c2, 3, padding=1, bias=False),
            tnn.BatchNorm2d(c2),
            tnn.ReLU(),
            tnn.MaxPool2d(2),
            tnn.Flatten(),
            tnn.Linear(c2 * 2 * 2, spec["hidden"]),
            tnn.ReLU(),
            tnn.Linear(spec["hidden"], 10),
        )
    if kind == "lstm":

        class LSTMClassifier(tnn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lstm = tnn.LSTM(8, spec["hidden"], batch_first=True)
                self.head = tnn.Linear(spec["hidden"], 10)

            def forward(self, x):
                hs, _ = self.lstm(x)
                return self.head(hs[:, -1])

        return LSTMClassifier()
    if kind == "transformer":
        f, heads, vocab, t = spec["features"], spec["heads"], spec["vocab"], case.x_shape[1]

        class Block(tnn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.norm1, self.norm2 = tnn.LayerNorm(f), tnn.LayerNorm(f)
                self.attn = tnn.MultiheadAttention(f, heads, batch_first=True)
                self.mlp = tnn.Sequential(tnn.Linear(f, 2 * f), tnn.GELU(), tnn.Linear(2 * f, f))

            def forward(self, x, mask):
                h = self.norm1(x)
                x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
                return x + self.mlp(self.norm2(x))

        class LM(tnn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = tnn.Embedding(vocab, f)
                self.pos = tnn.Parameter(torch.zeros(t, f))
                self.blocks = tnn.ModuleList(Block() for _ in range(spec["blocks"]))
                self.norm = tnn.LayerNorm(f)
                self.head = tnn.Linear(f, vocab)
                self.register_buffer("mask", torch.triu(torch.ones(t, t, dtype=torch.bool), 1))

            def forward(self, ids):
                x = self.embed(ids) + self.pos
                for block in self.blocks:
                    x = block(x, self.mask)
                return self.head(self.norm(x))

        return LM()
    raise ValueError(f"no PyTorch twin for {kind!r}")


def torch_batch(case: Case, x: Any, y: Any) -> tuple[Any, Any]:
    """The suite's batch as torch tensors (NHWC images become NCHW)."""
    import torch

    x, y = np.asarray(x), np.asarray(y)
    if case.torch_spec["kind"] == "cnn":
        x = np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))
    xt = torch.from_numpy(x.astype(np.int64) if case.x_kind == "ids" else x.astype(np.float32))
    return xt, torch.from_numpy(y.astype(np.int64))


def torch_step(case: Case, model: Any, lr: float) -> Callable[[Any, Any], Any]:
    """One training step (forward, backward, SGD update) of ``model`` on (x, y)."""
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ce = torch.nn.functional.cross_entropy

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = ce(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        return loss

    return step


# ---- plain numpy -----------------------------------------------------------------------------


def numpy_mlp_step(
    case: Case, lr: float, seed: int = 0
) -> Callable[[np.ndarray, np.ndarray], float]:
    """The lecture's algorithm in float32 numpy for an MLP case: forward keeping every
    activation, δ = σ'(z)·(W δ') from the output back, ∂C/∂W = aᵀδ, then SGD."""
    rng = np.random.default_rng(seed)
    widths = case.mlp_widths
    ws = [
        (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        for a, b in itertools.pairwise(widths)
    ]
    bs = [np.zeros(b, np.float32) for b in widths[1:]]
    sigmoid = case.mlp_activation == "sigmoid"

    def step(x: np.ndarray, y: np.ndarray) -> float:
        acts = [x]
        for w, b in zip(ws[:-1], bs[:-1], strict=True):
            z = acts[-1] @ w + b
            acts.append(1.0 / (1.0 + np.exp(-z)) if sigmoid else np.maximum(z, 0.0))
        logits = acts[-1] @ ws[-1] + bs[-1]
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        n = x.shape[0]
        loss = float(-np.log(p[np.arange(n), y] + 1e-30).mean())
        delta = p
        delta[np.arange(n), y] -= 1.0
        delta /= n
        for i in range(len(ws) - 1, -1, -1):
            a = acts[i]
            dw, db = a.T @ delta, delta.sum(axis=0)
            if i:
                da = delta @ ws[i].T
                delta = da * a * (1.0 - a) if sigmoid else da * (a > 0)
            ws[i] -= lr * dw
            bs[i] -= lr * db
        return loss

    return step

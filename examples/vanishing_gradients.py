"""Vanishing gradients: the reversed network's amplifiers, measured layer by layer.

The backward pass is a network of its own run from the output down (the lecture's reversed
network). For hidden Dense layer l, with pre-activation z_l = a_{l-1} W_l + b_l and
a_l = f(z_l), the delta is

    δ_l = ∂C/∂z_l = f'(z_l) ⊙ (δ_{l+1} W_{l+1}ᵀ),

so going down one layer multiplies the error by Wᵀ and then by the "amplifier" f'(z_l). For
the sigmoid, σ'(z) = σ(z)(1 − σ(z)) ≤ 1/4 everywhere, hence

    ‖∂C/∂z_l‖ ≤ ¼ ‖∂C/∂a_l‖    and    ‖δ_l‖ ≤ ¼ ‖W_{l+1}‖₂ ‖δ_{l+1}‖,

and unless the weights are large enough to make up for the factor ¼ at every layer, δ
shrinks geometrically with depth: the lower layers of a deep sigmoid network get tiny
gradients and barely learn. ReLU's amplifier is exactly 1 on active units (0 elsewhere), so
with He initialization (Var W = 2/fan-in) the norm is kept on average. A residual block
a ↦ a + g(a) adds an identity path to the backward too, ∂C/∂a = ∂C/∂(a + g(a)) · (I + ∂g/∂a),
so the error reaches every block undiminished whatever g does.

This script builds three networks with ``--depth`` (default 10) hidden layers of ``--width``
(default 64) units on the 8×8 digits: sigmoid (LeCun init), ReLU (He init) and a residual
network (a Dense–ReLU, then ``depth − 1`` blocks ``residual(serial(Dense(w), Relu()))``,
LeCun init), and reads every hidden layer's ‖∂C/∂z_l‖ from
``value_grad_and_deltas`` (C the mean cross-entropy over a fixed batch of 512 training
examples) at initialization and after ``--epochs`` epochs of SGD (momentum 0.9, the same
learning rate for all three). For the sigmoid network it also prints, per layer, the ratio
‖δ_l‖/‖δ_{l+1}‖ next to its bound ¼‖W_{l+1}‖₂ and the amplifier's own factor
‖∂C/∂z_l‖/‖∂C/∂a_l‖ (≤ ¼), and how much a_l still varies over the batch. The forward pass
loses the input at the same rate: a small change of a_{l-1} moves a_l by the Jacobian
(·W_l) ⊙ σ'(z_l), whose transpose is exactly the backward step above, so with weights this
size the top layers see nearly the same a for every input.

Run it with ``python examples/vanishing_gradients.py`` (well under a minute on a 2-core CPU)
or ``--quick`` (2 epochs). It writes ``delta_norms.png`` and ``results.json`` into ``--out``
(default ``runs/vanishing_gradients``) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from manual_bp import nn, value_grad_and_deltas
from manual_bp.data import Dataset, load_digits
from manual_bp.train import fit

LOSS = "softmax_cross_entropy"
NETWORKS = ("sigmoid", "relu", "residual")
COLORS = {"sigmoid": "tab:red", "relu": "tab:blue", "residual": "tab:green"}


def build(kind: str, depth: int, width: int, num_classes: int) -> nn.Layer:
    """The ``kind`` network with ``depth`` hidden Dense layers of ``width`` units."""
    if kind == "sigmoid":
        layers = [layer for _ in range(depth) for layer in (nn.Dense(width), nn.Sigmoid())]
    elif kind == "relu":
        he = jax.nn.initializers.he_normal()
        layers = [layer for _ in range(depth) for layer in (nn.Dense(width, w_init=he), nn.Relu())]
    else:
        blocks = [nn.residual(nn.serial(nn.Dense(width), nn.Relu())) for _ in range(depth - 1)]
        layers = [nn.Dense(width), nn.Relu(), *blocks]
    return nn.serial(*layers, nn.Dense(num_classes))


def dense_names(net: nn.Layer, prefix: str = "") -> Iterator[str]:
    """The names of ``net``'s Dense layers in forward order (``"residual_2/serial_0/dense_0"``
    for nested ones), the keys of their deltas and, split at "/", of their params."""
    for child in net.children:
        if child.kind == "dense":
            yield prefix + child.name
        else:
            yield from dense_names(child, f"{prefix}{child.name}/")


def _get(tree: dict[str, Any], path: str) -> Any:
    for part in path.split("/"):
        tree = tree[part]
    return tree


def measure(
    net: nn.Layer, f: Callable[..., Any], params: Any, x: jax.Array, y: jax.Array
) -> dict[str, Any]:
    """Per hidden Dense layer l (input side first): ‖∂C/∂z_l‖, and, where an activation
    layer follows, ‖∂C/∂a_l‖ (its delta); ``spectral_above`` holds ‖W_{l+1}‖₂ of the layer
    above. ``f`` is ``value_grad_and_deltas(net, loss)``, jitted once by the caller."""
    names = list(dense_names(net))
    _, _, deltas = f(params, x, y)
    z_norms = [float(jnp.linalg.norm(deltas[n])) for n in names]
    a_norms = []
    for n in names[:-1]:  # the activation right after dense_k is its sibling number k + 1
        parent, _, leaf = n.rpartition("/")
        after = [
            k
            for k in deltas
            if k.rpartition("/")[0] == parent
            and int(k.rpartition("_")[2]) == int(leaf.rpartition("_")[2]) + 1
        ]
        a_norms.append(float(jnp.linalg.norm(deltas[after[0]])) if after else float("nan"))
    spectral = [
        float(np.linalg.norm(np.asarray(_get(params, n)["w"], np.float64), 2)) for n in names[1:]
    ]
    return {
        "layers": names[:-1],
        "z": z_norms[:-1],
        "a": a_norms,
        "spectral_above": spectral,
    }


def spread(net: nn.Layer, params: Any, x: jax.Array) -> list[float]:
    """How much the input still moves each hidden layer: the standard deviation of its
    output a_l over the batch, averaged over units (after each top-level layer that is not
    a Dense one: the activations, or the residual blocks' outputs)."""
    out = []
    for child in net.children:
        x, _ = child.forward(params[child.name], x)
        if child.kind != "dense":
            out.append(float(jnp.mean(jnp.std(x, axis=0))))
    return out


def run(kind: str, args: argparse.Namespace, data: Dataset) -> dict[str, Any]:
    """Delta norms of the ``kind`` network at initialization and after training."""
    init_key, fit_key = jax.random.split(jax.random.key(args.seed))
    net = build(kind, args.depth, args.width, data.num_classes)
    d = int(data.x_train.shape[1])
    params = net.init(init_key, (args.batch_size, d), jnp.float32)
    x = jnp.asarray(data.x_train[:512], jnp.float32)
    y = jnp.asarray(data.y_train[:512], jnp.int32)
    f = jax.jit(value_grad_and_deltas(net, LOSS))
    at_init = {**measure(net, f, params, x, y), "spread": spread(net, params, x)}
    result = fit(
        net,
        LOSS,
        params,
        data,
        optimizer=optax.sgd(args.lr, momentum=0.9),
        epochs=args.epochs,
        batch_size=args.batch_size,
        key=fit_key,
    )
    return {
        "init": at_init,
        "trained": measure(net, f, result.params, x, y),
        "history": result.history,
    }


def plot(results: dict[str, dict[str, Any]], epochs: int, out: Path) -> None:
    """``delta_norms.png``: ‖∂C/∂z_l‖ against depth at initialization and after training
    (log scale), and the sigmoid network's per-layer ratios against the bound ¼."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, when, title in (
        (axes[0], "init", "at initialization"),
        (axes[1], "trained", f"after {epochs} epochs"),
    ):
        for kind, r in results.items():
            z = r[when]["z"]
            ax.semilogy(range(1, len(z) + 1), z, "o-", color=COLORS[kind], label=kind)
        ax.set(title=f"‖∂C/∂z‖ per layer, {title}", xlabel="hidden layer (1 = input side)")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    s = results["sigmoid"]["init"]
    layers = range(1, len(s["z"]))
    ratio = [s["z"][i] / s["z"][i + 1] for i in range(len(s["z"]) - 1)]
    amp = [s["z"][i] / s["a"][i] for i in range(len(s["z"]) - 1)]
    axes[2].plot(layers, ratio, "o-", color="tab:red", label="‖δ(l)‖ / ‖δ(l+1)‖")
    axes[2].plot(layers, amp, "s--", color="tab:orange", label="‖∂C/∂z(l)‖ / ‖∂C/∂a(l)‖")
    axes[2].axhline(0.25, color="grey", ls="--", lw=1, label="max σ' = 1/4")
    axes[2].set(
        title="sigmoid network at initialization",
        xlabel="hidden layer l",
        ylim=(0, 0.35),
    )
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "delta_norms.png", dpi=80)
    plt.close(fig)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 epochs: a smoke run")
    p.add_argument("--epochs", type=int, default=None, help="default 20 (2 with --quick)")
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/vanishing_gradients"))
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 2 if args.quick else 20
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = load_digits(seed=args.seed)
    results = {kind: run(kind, args, data) for kind in NETWORKS}
    plot(results, args.epochs, args.out)
    (args.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")

    print(f"‖∂C/∂z_l‖ of each hidden layer (1 = input side), init → after {args.epochs} epochs")
    print("\n| layer | " + " | ".join(NETWORKS) + " |")
    print("|---" * (1 + len(NETWORKS)) + "|")
    for i in range(args.depth):
        cells = [
            f"{results[k]['init']['z'][i]:.2e} → {results[k]['trained']['z'][i]:.2e}"
            for k in NETWORKS
        ]
        print(f"| {i + 1} | " + " | ".join(cells) + " |")
    first_last = [
        f"{results[k]['init']['z'][0] / results[k]['init']['z'][-1]:.2e}" for k in NETWORKS
    ]
    print("| ‖δ_1‖/‖δ_last‖ at init | " + " | ".join(first_last) + " |")
    accs = [f"{100 * results[k]['history'][-1]['test_accuracy']:.2f}%" for k in NETWORKS]
    print("| test accuracy | " + " | ".join(accs) + " |")

    s = results["sigmoid"]["init"]
    print("\nsigmoid network at initialization: each layer down multiplies δ by")
    print(
        "\n| layer l | ‖δ_l‖/‖δ_{l+1}‖ | bound ¼‖W_{l+1}‖₂ | ‖∂C/∂z_l‖/‖∂C/∂a_l‖ (≤ ¼) "
        "| std of a_l over the batch |"
    )
    print("|---|---|---|---|---|")
    for i in range(args.depth):
        if i + 1 < args.depth:
            ratio = f"{s['z'][i] / s['z'][i + 1]:.3f}"
            bound = f"{s['spectral_above'][i] / 4:.3f}"
        else:
            ratio = bound = "(output layer above)"
        amp = s["z"][i] / s["a"][i]
        print(f"| {i + 1} | {ratio} | {bound} | {amp:.3f} | {s['spread'][i]:.1e} |")
    print(
        f"\n{args.depth}x{args.width} networks on digits, SGD lr {args.lr} momentum 0.9, batch "
        f"{args.batch_size}, seed {args.seed}; total {time.perf_counter() - start:.0f}s; wrote "
        f"delta_norms.png, results.json in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

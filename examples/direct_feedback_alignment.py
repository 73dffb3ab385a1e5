"""Direct feedback alignment (Nøkland 2016): the output error sent straight to every layer.

Backprop reaches hidden layer l through every layer above it, the lecture's reversed network:

    δ_l = f'(z_l) ⊙ (δ_{l+1} W_{l+1}ᵀ)  =  f'(z_l) ⊙ ((f'(z_{l+1}) ⊙ (… e W_Lᵀ …)) W_{l+1}ᵀ),

with e = ∂C/∂(network output). Every factor f'(z) and Wᵀ on the way down scales the error; a
sigmoid's f' is at most 1/4, so in a deep sigmoid network the δ of the lower layers shrink
geometrically (vanishing gradients) and those layers barely learn. Direct feedback alignment
skips the chain altogether: each hidden layer gets the output error through its own fixed
random matrix B_l,

    δ_l = f'(z_l) ⊙ (e B_l),        ∂C/∂W_l = a_{l-1}ᵀ δ_l,

so the error reaching layer l passes through one f' only, however deep the network is. It is
not the gradient, but as with feedback alignment the forward weights come to align with the
feedback and the updates descend. ``direct_feedback(*layers)`` is ``serial(*layers)`` with
this backward pass.

This script trains a deep MLP (default 7 hidden layers of 240 units, Nøkland's MNIST
architecture) with tanh and with sigmoid units, each by backprop and by DFA, with the same
optimizer (SGD, momentum 0.9, batch 32). The learning rate is chosen per (dataset, network,
method) by a short sweep that looks only at the *training* loss: every rate of ``--lrs`` is
trained for ``--tune-epochs`` epochs and the one with the lowest training loss in its last
epoch is kept; the test split is not looked at until the final runs.

Run it with ``python examples/direct_feedback_alignment.py`` (both datasets, sweep included,
about two minutes on a 2-core CPU); ``--dataset digits|mnist1d`` for one; ``--no-tune`` to
skip the sweep and use ``--lr``; ``--quick`` for a 3-epoch smoke run on digits without the
sweep (width 64). It writes ``curves.png`` and ``results.json`` into ``--out`` (default
``runs/direct_feedback_alignment``) and prints the sweep and a table of final accuracies.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from manual_bp import nn
from manual_bp.credit import direct_feedback
from manual_bp.data import Dataset, load_digits, load_mnist1d
from manual_bp.train import fit

LOSS = "softmax_cross_entropy"
LOADERS = {"digits": load_digits, "mnist1d": load_mnist1d}
ACTIVATIONS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
RUNS = (("tanh", "backprop"), ("tanh", "dfa"), ("sigmoid", "backprop"), ("sigmoid", "dfa"))
"""(activation, method) pairs trained on every dataset."""
STYLE = {
    ("tanh", "backprop"): ("black", "-"),
    ("tanh", "dfa"): ("tab:red", "-"),
    ("sigmoid", "backprop"): ("black", ":"),
    ("sigmoid", "dfa"): ("tab:red", ":"),
}


def build(activation: str, method: str, depth: int, width: int, num_classes: int) -> nn.Layer:
    """``depth`` × (Dense(width), activation), then Dense(num_classes); trained by backprop
    (``serial``) or by direct feedback alignment (``direct_feedback``: every Dense but the
    first receives e B_l as the error of its input)."""
    layers: list[nn.Layer] = []
    for _ in range(depth):
        layers += [nn.Dense(width), ACTIVATIONS[activation]()]
    layers.append(nn.Dense(num_classes))
    return direct_feedback(*layers) if method == "dfa" else nn.serial(*layers)


def train(
    activation: str, method: str, lr: float, epochs: int, data: Dataset, args: argparse.Namespace
) -> list[dict[str, float]]:
    """One run; its per-epoch history (train loss, test loss and accuracy)."""
    init_key, fit_key = jax.random.split(jax.random.key(args.seed))
    net = build(activation, method, args.depth, args.width, data.num_classes)
    shape = (args.batch_size, int(data.x_train.shape[1]))
    params = net.init(init_key, shape, jnp.float32)
    result = fit(
        net,
        LOSS,
        params,
        data,
        optimizer=optax.sgd(lr, momentum=0.9),
        epochs=epochs,
        batch_size=args.batch_size,
        key=fit_key,
    )
    return result.history


def tune(
    activation: str, method: str, data: Dataset, args: argparse.Namespace
) -> tuple[float, dict[float, float]]:
    """The learning rate of ``args.lrs`` with the lowest training loss after
    ``args.tune_epochs`` epochs (a diverged run counts as +inf), and every rate's loss."""
    losses = {}
    for lr in args.lrs:
        loss = train(activation, method, lr, args.tune_epochs, data, args)[-1]["train_loss"]
        losses[lr] = loss if math.isfinite(loss) else math.inf
    return min(losses, key=losses.__getitem__), losses


def plot(results: dict[str, dict[str, Any]], out: Path) -> None:
    """``curves.png``: test accuracy and training loss per epoch, one column per dataset."""
    names = list(results)
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 6.4), squeeze=False)
    for col, ds in enumerate(names):
        for label, r in results[ds].items():
            color, ls = STYLE[tuple(label.split(" "))]
            epochs = [h["epoch"] for h in r["history"]]
            tag = f"{label} (lr {r['lr']:g})"
            acc = [100 * h["test_accuracy"] for h in r["history"]]
            axes[0, col].plot(epochs, acc, color=color, ls=ls, label=tag)
            axes[1, col].plot(epochs, [h["train_loss"] for h in r["history"]], color=color, ls=ls)
        axes[0, col].set(title=f"{ds}: test accuracy", ylabel="%", ylim=(0, 100))
        axes[1, col].set(title=f"{ds}: training loss", xlabel="epoch", yscale="log")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
        axes[0, col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=80)
    plt.close(fig)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset",
        choices=("digits", "mnist1d", "both"),
        default=None,
        help="default both (digits with --quick)",
    )
    p.add_argument("--quick", action="store_true", help="3 epochs on digits, no sweep")
    p.add_argument("--epochs", type=int, default=None, help="default 30 (3 with --quick)")
    p.add_argument("--depth", type=int, default=7, help="hidden layers (default 7)")
    p.add_argument(
        "--width", type=int, default=None, help="units per hidden layer (default 240; 64 quick)"
    )
    p.add_argument("--lrs", default="0.003,0.01,0.03,0.1", help="the sweep's learning rates")
    p.add_argument("--tune-epochs", type=int, default=5)
    p.add_argument("--no-tune", action="store_true", help="skip the sweep, use --lr for all")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/direct_feedback_alignment"))
    args = p.parse_args(argv)
    args.lrs = tuple(float(v) for v in args.lrs.split(","))
    if args.epochs is None:
        args.epochs = 3 if args.quick else 30
    if args.dataset is None:
        args.dataset = "digits" if args.quick else "both"
    if args.width is None:
        args.width = 64 if args.quick else 240
    args.tune = not (args.quick or args.no_tune)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    datasets = ("digits", "mnist1d") if args.dataset == "both" else (args.dataset,)
    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for ds in datasets:
        data = LOADERS[ds](seed=args.seed)
        results[ds] = {}
        for activation, method in RUNS:
            label = f"{activation} {method}"
            lr, sweep = args.lr, {}
            if args.tune:
                lr, sweep = tune(activation, method, data, args)
                losses = ", ".join(f"{k:g}: {v:.3f}" for k, v in sweep.items())
                print(f"{ds:8s} {label:16s} sweep (train loss) {losses} -> lr {lr:g}", flush=True)
            t0 = time.perf_counter()
            history = train(activation, method, lr, args.epochs, data, args)
            seconds = time.perf_counter() - t0
            results[ds][label] = {"lr": lr, "sweep": sweep, "history": history, "seconds": seconds}
            acc = 100 * history[-1]["test_accuracy"]
            print(f"{ds:8s} {label:16s} lr {lr:g}: test accuracy {acc:6.2f}%", flush=True)
    plot(results, args.out)
    (args.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")

    print(
        "\n| dataset | network | method | lr | test accuracy | best test accuracy (epoch) "
        "| train loss |"
    )
    print("|---|---|---|---|---|---|---|")
    for ds, runs in results.items():
        for label, r in runs.items():
            activation, method = label.split(" ")
            h = r["history"]
            best = max(h, key=lambda e: e["test_accuracy"])
            print(
                f"| {ds} | {args.depth}x{args.width} {activation} | {method} | {r['lr']:g} "
                f"| {100 * h[-1]['test_accuracy']:.2f}% "
                f"| {100 * best['test_accuracy']:.2f}% (epoch {best['epoch']}) "
                f"| {h[-1]['train_loss']:.4f} |"
            )
    how = f"lr swept over {args.lrs} for {args.tune_epochs} epochs" if args.tune else "no sweep"
    print(
        f"\n{args.epochs} epochs, SGD momentum 0.9, batch {args.batch_size}, {how}, seed "
        f"{args.seed}; total {time.perf_counter() - start:.0f}s; wrote curves.png, results.json "
        f"in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

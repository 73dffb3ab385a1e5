"""Feedback alignment (Lillicrap et al. 2016): learning with a random backward pass.

Backprop sends the error down through the transpose of the forward weights, the lecture's
reversed network: for a hidden layer l with pre-activation z_l and weights W_{l+1} above it,

    δ_l = ∂C/∂z_l = f'(z_l) ⊙ (δ_{l+1} W_{l+1}ᵀ),        ∂C/∂W_l = a_{l-1}ᵀ δ_l.

The brain cannot plausibly reuse W_{l+1} on the way back ("weight transport"). The variants
below keep the forward pass and the update a_{l-1}ᵀ δ_l and only change the matrix in the
recurrence, δ_l = f'(z_l) ⊙ (δ_{l+1} Bᵀ):

* ``backprop``: B = W (the exact gradient);
* ``fa``: feedback alignment, B a fixed random matrix (drawn once, kept in the network state);
* ``sign``: sign symmetry (Liao et al. 2016), B = sign(W): only the signs are transported;
* ``kp``: Kolen–Pollack, B is learned with W's own update, ΔB = ΔW, plus weight decay, so
  B − W shrinks geometrically and B comes to equal W.

Lillicrap et al.'s finding: with a random B the network still learns, because W comes to
align with B, so that the update it receives falls within 90° of backprop's, and the angle
keeps falling while it trains. Here every Dense layer of a 2-hidden-layer tanh MLP is wrapped
with ``feedback(nn.Dense(h), variant)``, each variant is trained with the same optimizer (SGD
with momentum 0.9 and weight decay), and after every epoch ``alignment(net, loss)`` measures,
on a fixed training batch and from a single forward pass, the angle between the weight
update a_{l-1}ᵀ δ_l that the variant produces and the one backprop would produce from the same
forward pass, for every layer. (The output layer always gets the true error, so its angle is
0°; the hidden layers are the interesting ones.)

Run it with ``python examples/feedback_alignment.py`` (both datasets, about a minute on a
2-core CPU), ``--dataset digits`` or ``--dataset mnist1d`` for one, ``--quick`` for a
few-epoch smoke run. It writes ``accuracy.png``, ``angles.png`` and ``results.json`` into
``--out`` (default ``runs/feedback_alignment``) and prints a table of final test accuracies
and angles.
"""

from __future__ import annotations

import argparse
import json
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
from manual_bp.credit import alignment, feedback
from manual_bp.data import Dataset, load_digits, load_mnist1d
from manual_bp.train import fit

VARIANTS = ("backprop", "fa", "sign", "kp")
LOSS = "softmax_cross_entropy"
LOADERS = {"digits": load_digits, "mnist1d": load_mnist1d}
COLORS = {"backprop": "black", "fa": "tab:red", "sign": "tab:blue", "kp": "tab:green"}


def build(variant: str, hidden: Sequence[int], num_classes: int) -> nn.Layer:
    """``Dense(h₁)–tanh–…–Dense(h_k)–tanh–Dense(c)`` with every Dense sending its error
    backward by ``variant``. Layers are named by position: ``dense_0``, ``tanh_1``, …"""
    layers: list[nn.Layer] = []
    for h in hidden:
        layers += [feedback(nn.Dense(h), variant), nn.Tanh()]
    layers.append(feedback(nn.Dense(num_classes), variant))
    return nn.serial(*layers)


def run_variant(variant: str, data: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """Train one variant; return its history and the per-epoch update angles per layer.

    ``angles[layer][e]`` is the angle in degrees between the variant's weight update and
    backprop's after e epochs (e = 0: at initialization), on the fixed batch of the first
    ``args.align_batch`` training examples; ``delta_angles[layer][e]`` the same for the
    deltas ∂C/∂z of the Dense layers.
    """
    key = jax.random.key(args.seed)
    init_key, fit_key = jax.random.split(key)
    d = int(data.x_train.shape[1])
    net = build(variant, args.hidden, data.num_classes)
    params = net.init(init_key, (args.batch_size, d), jnp.float32)
    state = net.init_state(fit_key, (args.batch_size, d), jnp.float32)  # FA's fixed B
    optimizer = optax.chain(
        optax.add_decayed_weights(args.weight_decay), optax.sgd(args.lr, momentum=0.9)
    )
    x = jnp.asarray(data.x_train[: args.align_batch], jnp.float32)
    y = jnp.asarray(data.y_train[: args.align_batch], jnp.int32)
    measure = jax.jit(alignment(net, LOSS))
    angles: dict[str, list[float]] = {}
    delta_angles: dict[str, list[float]] = {}

    def record(params: Any, state: Any) -> None:
        if variant == "backprop":  # the same backward twice: 0° up to rounding
            return
        result = measure(params, state, x, y)
        for name, value in result["grads"].items():
            angles.setdefault(name, []).append(float(value))
        for name, value in result["deltas"].items():
            if name.startswith("dense"):
                delta_angles.setdefault(name, []).append(float(value))

    record(params, state)
    start = time.perf_counter()
    result = fit(
        net,
        LOSS,
        params,
        data,
        optimizer=optimizer,
        epochs=args.epochs,
        batch_size=args.batch_size,
        key=fit_key,
        state=state,
        on_epoch_end=lambda epoch, params, opt_state, state: record(params, state),
    )
    return {
        "history": result.history,
        "angles": angles,
        "delta_angles": delta_angles,
        "seconds": time.perf_counter() - start,
    }


def plot(results: dict[str, dict[str, Any]], hidden_layers: list[str], out: Path) -> None:
    """``accuracy.png``: test accuracy per epoch for every variant, one panel per dataset;
    ``angles.png``: the update angle to backprop per hidden layer over epochs."""
    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    for ax, ds in zip(axes[0], names, strict=True):
        for variant, r in results[ds].items():
            epochs = [h["epoch"] for h in r["history"]]
            acc = [100 * h["test_accuracy"] for h in r["history"]]
            ax.plot(epochs, acc, label=variant, color=COLORS[variant])
        ax.set(title=f"{ds}: test accuracy", xlabel="epoch", ylabel="%")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(
        len(names), len(hidden_layers), figsize=(4.5 * len(hidden_layers), 3.4 * len(names)),
        squeeze=False,
    )  # fmt: skip
    for row, ds in zip(axes, names, strict=True):
        for ax, layer in zip(row, hidden_layers, strict=True):
            for variant, r in results[ds].items():
                if layer in r["angles"]:
                    ax.plot(r["angles"][layer], label=variant, color=COLORS[variant])
            ax.axhline(90, color="grey", ls="--", lw=1)
            ax.set(
                title=f"{ds}: {layer} update vs backprop",
                xlabel="epoch",
                ylabel="angle (degrees)",
                ylim=(0, 100),
            )
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(out / "angles.png", dpi=90)
    plt.close(fig)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset",
        choices=("digits", "mnist1d", "both"),
        default=None,
        help="default both (digits with --quick)",
    )
    p.add_argument("--quick", action="store_true", help="3 epochs on digits: a smoke run")
    p.add_argument("--epochs", type=int, default=None, help="default 40 (3 with --quick)")
    p.add_argument("--hidden", default="128,128", help="hidden widths (default 128,128)")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--weight-decay", type=float, default=5e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--align-batch", type=int, default=512, help="examples in the fixed batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/feedback_alignment"))
    args = p.parse_args(argv)
    args.hidden = tuple(int(h) for h in args.hidden.split(","))
    if args.epochs is None:
        args.epochs = 3 if args.quick else 40
    if args.dataset is None:
        args.dataset = "digits" if args.quick else "both"
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
        for variant in VARIANTS:
            r = run_variant(variant, data, args)
            results[ds][variant] = r
            acc = 100 * r["history"][-1]["test_accuracy"]
            print(
                f"{ds:8s} {variant:8s} test accuracy {acc:6.2f}%  ({r['seconds']:.1f}s)", flush=True
            )
    hidden_layers = [f"dense_{2 * i}" for i in range(len(args.hidden))]
    plot(results, hidden_layers, args.out)
    (args.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")

    head = " | ".join(f"∠ΔW {n} (init → end)" for n in hidden_layers)
    print(f"\n| dataset | variant | test accuracy | mean of last 5 | train loss | {head} |")
    print("|---" * (5 + len(hidden_layers)) + "|")
    for ds, by_variant in results.items():
        for variant, r in by_variant.items():
            last = r["history"][-1]
            cells = [
                f"{r['angles'][n][0]:.1f}° → {r['angles'][n][-1]:.1f}°" if r["angles"] else "0°"
                for n in hidden_layers
            ]
            tail = [h["test_accuracy"] for h in r["history"][-5:]]
            print(
                f"| {ds} | {variant} | {100 * last['test_accuracy']:.2f}% "
                f"| {100 * sum(tail) / len(tail):.2f}% "
                f"| {last['train_loss']:.4f} | {' | '.join(cells)} |"
            )
    print(
        f"\n{args.epochs} epochs, MLP {args.hidden} tanh, SGD lr {args.lr} momentum 0.9 "
        f"weight decay {args.weight_decay}, batch {args.batch_size}, seed {args.seed}; "
        f"total {time.perf_counter() - start:.0f}s; wrote accuracy.png, angles.png, "
        f"results.json in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

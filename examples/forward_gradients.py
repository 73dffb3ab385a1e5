"""Forward gradients: training with no backward pass, against backprop.

A forward gradient is an unbiased estimate of ∇C from forward-mode passes only:

* ``weight``-perturbed (Baydin et al. 2022, "Gradients without Backpropagation"): draw
  v ~ N(0, I) over all parameters, run one forward-mode pass for the directional derivative
  ∇C·v, and step along ĝ = (∇C·v) v. E[ĝ] = ∇C, but the noise grows with the number of
  parameters P: cos(ĝ, ∇C) is about 1/√P.
* ``activity``-perturbed (after Ren et al. 2023, "Scaling Forward Gradient With Local
  Losses", without their local losses): draw u ~ N(0, I) shaped like a weighted layer's
  output z, get ∇_z C·u from a forward-mode pass, estimate the delta ĝ_z = (∇_z C·u) u and
  turn it into the layer's weight gradient with that layer's own backward, aᵀ ĝ_z: the noise
  has the size of z (batch × width), not of W.

Both run the network's handwritten ``jvp`` (``manual_bp.forward_grad``); no backward pass
runs through the network. Every method trains the same MLP (tanh) with the same optimizer
(Adam, which divides out the estimates' scale), and after every epoch the cosine between each
estimator's ĝ and the true gradient of the handwritten backward is measured per layer on a
fixed training batch of a step's size, averaged over ``--draws`` draws of the noise.

Run it with ``python examples/forward_gradients.py`` (digits and MNIST-1D, a few minutes on a
2-core CPU), ``--dataset digits`` or ``--dataset mnist1d`` for one, ``--quick`` for a
few-epoch smoke run. It writes ``accuracy.png``, ``cosines.png`` and ``results.json`` into
``--out`` (default ``runs/forward_gradients``) and prints a table of final test accuracies
and cosines. ``manual-bp train --grad forward`` (or ``forward-activity``) trains the CLI's
models the same way.
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

from manual_bp import forward_grad, nn
from manual_bp.data import Dataset, load_digits, load_mnist1d
from manual_bp.train import fit

METHODS = ("backprop", "weight", "activity")
ESTIMATORS = ("weight", "activity")
LOSS = "softmax_cross_entropy"
LOADERS = {"digits": load_digits, "mnist1d": load_mnist1d}
COLORS = {"backprop": "black", "weight": "tab:red", "activity": "tab:blue"}


def build(hidden: Sequence[int], num_classes: int) -> nn.Layer:
    """``Dense(h₁)–tanh–…–Dense(c)``, layers named by position: ``dense_0``, ``tanh_1``, …"""
    return nn.mlp(tuple(hidden), num_classes, "tanh")


def cosine_meter(net: nn.Layer, draws: int):
    """``f(params, state, x, y, key) -> {estimator: {layer: mean cos}}``: the mean over
    ``draws`` noise draws of cos(ĝ, ∇C) per weighted layer, for both estimators."""
    angles = {e: forward_grad.alignment(net, LOSS, e) for e in ESTIMATORS}

    @jax.jit
    def f(params, state, x, y, key):
        keys = jax.random.split(key, draws)
        out = {}
        for e, angle in angles.items():
            deg = jax.vmap(lambda k, angle=angle: angle(params, state, x, y, k)["grads"])(keys)
            out[e] = jax.tree.map(lambda d: jnp.mean(jnp.cos(jnp.radians(d))), deg)
        return out

    return f


def run_method(method: str, data: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """Train with ``method``; return its history and the per-epoch cosines of both
    estimators with the true gradient (``cosines[estimator][layer][e]``, e = 0 at init)."""
    key = jax.random.key(args.seed)
    init_key, fit_key, meter_key = jax.random.split(key, 3)
    d = int(data.x_train.shape[1])
    net = build(args.hidden, data.num_classes)
    params = net.init(init_key, (args.batch_size, d), jnp.float32)
    state = net.init_state(fit_key, (args.batch_size, d), jnp.float32)
    x = jnp.asarray(data.x_train[: args.batch_size], jnp.float32)  # a batch like a step's
    y = jnp.asarray(data.y_train[: args.batch_size], jnp.int32)
    meter = cosine_meter(net, args.draws)
    cosines: dict[str, dict[str, list[float]]] = {e: {} for e in ESTIMATORS}

    def record(params: Any, state: Any) -> None:
        for e, by_layer in meter(params, state, x, y, meter_key).items():
            for name, value in by_layer.items():
                cosines[e].setdefault(name, []).append(float(value))

    record(params, state)
    start = time.perf_counter()
    result = fit(
        net,
        LOSS,
        params,
        data,
        optimizer=optax.adam(args.lr),
        epochs=args.epochs,
        batch_size=args.batch_size,
        key=fit_key,
        state=state,
        grad_fn=None if method == "backprop" else forward_grad.as_grad_fn(method),
        on_epoch_end=lambda epoch, params, opt_state, state: record(params, state),
    )
    return {
        "history": result.history,
        "cosines": cosines,
        "seconds": time.perf_counter() - start,
    }


def plot(results: dict[str, dict[str, Any]], layers: list[str], out: Path) -> None:
    """``accuracy.png``: test accuracy per epoch for every method, one panel per dataset;
    ``cosines.png``: each estimator's cos(ĝ, ∇C) per layer over epochs, along the backprop
    run's trajectory."""
    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    for ax, ds in zip(axes[0], names, strict=True):
        for method, r in results[ds].items():
            epochs = [h["epoch"] for h in r["history"]]
            acc = [100 * h["test_accuracy"] for h in r["history"]]
            label = method if method == "backprop" else f"{method}-perturbed"
            ax.plot(epochs, acc, label=label, color=COLORS[method])
        ax.set(title=f"{ds}: test accuracy", xlabel="epoch", ylabel="%")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(
        len(names), len(layers), figsize=(4.5 * len(layers), 3.4 * len(names)), squeeze=False
    )
    for row, ds in zip(axes, names, strict=True):
        for ax, layer in zip(row, layers, strict=True):
            for e in ESTIMATORS:
                values = results[ds]["backprop"]["cosines"][e][layer]
                ax.plot(values, label=f"{e}-perturbed", color=COLORS[e])
            ax.axhline(0.0, color="grey", lw=1)
            ax.set(title=f"{ds}: {layer}, mean cos(ĝ, ∇C)", xlabel="epoch (backprop run)")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(out / "cosines.png", dpi=90)
    plt.close(fig)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset",
        choices=("digits", "mnist1d", "both"),
        default=None,
        help="default both (digits with --quick)",
    )
    p.add_argument("--quick", action="store_true", help="2 epochs on digits: a smoke run")
    p.add_argument("--epochs", type=int, default=None, help="default 30 (2 with --quick)")
    p.add_argument("--hidden", default="64", help="hidden widths (default 64)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--draws", type=int, default=32, help="noise draws per cosine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/forward_gradients"))
    args = p.parse_args(argv)
    args.hidden = tuple(int(h) for h in args.hidden.split(","))
    if args.epochs is None:
        args.epochs = 2 if args.quick else 30
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
        for method in METHODS:
            r = run_method(method, data, args)
            results[ds][method] = r
            acc = 100 * r["history"][-1]["test_accuracy"]
            print(f"{ds:8s} {method:8s} test accuracy {acc:6.2f}%  ({r['seconds']:.1f}s)")
    layers = [f"dense_{2 * i}" for i in range(len(args.hidden) + 1)]
    plot(results, layers, args.out)
    (args.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")

    head = " | ".join(f"cos {n}: weight, activity" for n in layers)
    print(f"\n| dataset | trained with | test accuracy | train loss | seconds | {head} |")
    print("|---" * (5 + len(layers)) + "|")
    for ds, by_method in results.items():
        for method, r in by_method.items():
            last = r["history"][-1]
            c = r["cosines"]
            cells = [f"{c['weight'][n][-1]:.4f}, {c['activity'][n][-1]:.4f}" for n in layers]
            name = method if method == "backprop" else f"{method}-perturbed"
            print(
                f"| {ds} | {name} | {100 * last['test_accuracy']:.2f}% "
                f"| {last['train_loss']:.4f} | {r['seconds']:.1f} | {' | '.join(cells)} |"
            )
    print(
        f"\n{args.epochs} epochs, MLP {args.hidden} tanh, Adam lr {args.lr}, batch "
        f"{args.batch_size}, seed {args.seed}; cosines on the first {args.batch_size} training "
        f"examples, mean of {args.draws} draws, at the end of each run; total "
        f"{time.perf_counter() - start:.0f}s; wrote accuracy.png, cosines.png, results.json "
        f"in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

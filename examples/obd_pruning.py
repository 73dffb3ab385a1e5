"""Optimal Brain Damage against magnitude pruning on the digits MLP.

LeCun, Denker & Solla (1990), "Optimal Brain Damage": with the loss near a minimum, deleting
weight k (setting it to 0) raises the loss by about its saliency

.. math:: s_k = ½\\, h_{kk}\\, w_k^2, \\qquad h_{kk} = ∂^2 C / ∂w_k^2,

the Hessian's diagonal from :func:`manual_bp.curvature.hessian_diag` (exact, by
backpropagating per-example Hessians through the handwritten backward pass, with each
activation's second derivative). The network is trained to convergence (Adam), then the
fraction f of its weights (every Dense weight, not the biases) with the smallest score is set
to zero, without retraining, and the test accuracy measured, for three scores:

* ``magnitude``: |w_k|;
* ``OBD (Hessian)``: ½ h_kk w_k², the Hessian's diagonal on the training set;
* ``OBD (GGN)``: ½ G_kk w_k², the generalized Gauss–Newton diagonal instead
  (:func:`manual_bp.curvature.diag_ggn`), which drops the activations' σ'' terms.

The MLP is 64 → 128 → 10 with tanh, whose σ'' ≠ 0 makes the Hessian and the GGN differ (with
relu they are equal). The diagonals are computed over the training set in chunks, each
weighted by its share of the mean loss.

Run it with ``python examples/obd_pruning.py`` (about a minute on a 2-core CPU), or
``--quick`` for a short smoke run. It writes ``pruning.png`` and ``results.json`` into
``--out`` (default ``runs/obd_pruning``) and prints a table.
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
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from manual_bp import curvature, nn
from manual_bp.data import load_digits
from manual_bp.train import fit

LOSS = "softmax_cross_entropy"
SCORES = ("magnitude", "OBD (Hessian)", "OBD (GGN)")
COLORS = {"magnitude": "black", "OBD (Hessian)": "tab:red", "OBD (GGN)": "tab:blue"}
FRACTIONS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)


def training_set_diagonal(fn: Any, params: Any, x: Any, y: Any, chunk: int) -> Any:
    """Σ over chunks of (chunk size / N) · diagonal of that chunk's mean loss: the diagonal of
    the whole training set's mean loss."""
    n = len(x)
    total = None
    for start in range(0, n, chunk):
        xb, yb = jnp.asarray(x[start : start + chunk]), jnp.asarray(y[start : start + chunk])
        share = len(xb) / n
        d = jax.tree.map(lambda v, share=share: share * v, fn(params, xb, yb))
        total = d if total is None else jax.tree.map(jnp.add, total, d)
    return total


def prune(params: Any, scores: Any, fraction: float) -> Any:
    """params with the ``fraction`` of Dense weights of the smallest score set to 0 (one
    global ranking over all layers; biases kept)."""
    flat = np.concatenate([np.ravel(scores[k]["w"]) for k in sorted(scores)])
    k = round(fraction * flat.size)
    if k == 0:
        return params
    threshold = np.partition(flat, k - 1)[k - 1]
    out = dict(params)
    for name in scores:
        keep = np.asarray(scores[name]["w"]) > threshold
        out[name] = {**params[name], "w": jnp.where(keep, params[name]["w"], 0)}
    return out


def experiment(epochs: int, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Train for ``epochs``, score every weight three ways, prune, measure test accuracy."""
    net = nn.mlp((args.hidden,), data.num_classes, "tanh")
    params = net.init(jax.random.key(args.seed), (32, 64), jnp.float32)
    trained = fit(
        net,
        LOSS,
        params,
        data,
        optimizer=optax.adam(1e-3),
        epochs=epochs,
        batch_size=32,
        key=jax.random.key(args.seed + 1),
    )
    params = trained.params
    x, y = np.asarray(data.x_train, np.float32), np.asarray(data.y_train)
    t0 = time.perf_counter()
    hess = training_set_diagonal(
        jax.jit(curvature.hessian_diag(net, LOSS)), params, x, y, args.chunk
    )
    hessian_seconds = time.perf_counter() - t0
    ggn = training_set_diagonal(jax.jit(curvature.diag_ggn(net, LOSS)), params, x, y, args.chunk)
    weights = {k: v for k, v in params.items() if "w" in v}
    scores = {
        "magnitude": {k: {"w": jnp.abs(v["w"])} for k, v in weights.items()},
        "OBD (Hessian)": {k: {"w": 0.5 * hess[k]["w"] * v["w"] ** 2} for k, v in weights.items()},
        "OBD (GGN)": {k: {"w": 0.5 * ggn[k]["w"] * v["w"] ** 2} for k, v in weights.items()},
    }
    predict = jax.jit(lambda p, xs: jnp.argmax(net.forward(p, xs)[0], axis=-1))
    x_test, y_test = jnp.asarray(data.x_test, jnp.float32), np.asarray(data.y_test)
    accuracy = {}
    for score in SCORES:
        accuracy[score] = [
            float(np.mean(np.asarray(predict(prune(params, scores[score], f), x_test)) == y_test))
            for f in FRACTIONS
        ]
    return {
        "accuracy": accuracy,
        "train_loss": trained.history[-1]["train_loss"],
        "trained_test_accuracy": trained.history[-1]["test_accuracy"],
        "weights": sum(int(v["w"].size) for v in weights.values()),
        "negative_hessian_entries": sum(int(jnp.sum(hess[k]["w"] < 0)) for k in weights),
        "hessian_seconds": hessian_seconds,
    }


def plot(runs: dict[int, dict[str, Any]], hidden: int, out: Path) -> None:
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.8), squeeze=False)
    pct = [100 * f for f in FRACTIONS]
    for ax, (epochs, r) in zip(axes[0], runs.items(), strict=True):
        for score in SCORES:
            acc = [100 * a for a in r["accuracy"][score]]
            ax.plot(pct, acc, "o-", ms=3, label=score, color=COLORS[score])
        ax.set(
            title=f"64-{hidden}-10 tanh, {epochs} epochs (train loss {r['train_loss']:.3f})",
            xlabel="weights pruned (%)",
            ylabel="test accuracy (%)",
        )
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "pruning.png", dpi=90)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one 5-epoch training: a smoke run")
    p.add_argument(
        "--epochs", default=None, help="training lengths, comma-separated (default 5,20,60)"
    )
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=256, help="examples per Hessian evaluation")
    p.add_argument("--out", type=Path, default=Path("runs/obd_pruning"))
    args = p.parse_args(argv)
    lengths = [int(e) for e in (args.epochs or ("5" if args.quick else "5,20,60")).split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = load_digits(seed=args.seed)
    runs = {e: experiment(e, data, args) for e in lengths}
    plot(runs, args.hidden, args.out)
    results = {"fractions": list(FRACTIONS), "hidden": args.hidden, "runs": runs}
    (args.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")

    print("| epochs | weights pruned | " + " | ".join(SCORES) + " |")
    print("|---" * (2 + len(SCORES)) + "|")
    for epochs, r in runs.items():
        for i, f in enumerate(FRACTIONS):
            cells = " | ".join(f"{100 * r['accuracy'][s][i]:.2f}%" for s in SCORES)
            print(f"| {epochs} | {100 * f:.0f}% | {cells} |")
    for epochs, r in runs.items():
        print(
            f"\n{epochs} epochs: train loss {r['train_loss']:.4f}, test accuracy "
            f"{100 * r['trained_test_accuracy']:.2f}% before pruning; {r['weights']} weights, "
            f"{r['negative_hessian_entries']} with a negative Hessian diagonal; the training "
            f"set's Hessian diagonal took {r['hessian_seconds']:.1f}s (compile included)"
        )
    print(
        f"\nMLP 64-{args.hidden}-10 tanh, Adam 1e-3, batch 32, seed {args.seed}; total "
        f"{time.perf_counter() - start:.0f}s; wrote pruning.png, results.json in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

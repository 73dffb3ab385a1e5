"""Run outputs: ``metrics.jsonl`` (one JSON record per epoch) and PNG plots.

Plots are drawn with matplotlib's Agg backend (no display needed): ``loss.png`` and
``accuracy.png`` (curves per epoch) and ``layer_norms.png`` (per-layer ‖∂C/∂z‖, ‖∂C/∂W‖ and
‖a‖ averaged over each epoch's training steps, the lecture's backward pass made visible), and
for a network trained with feedback alignment and friends ``alignment.png`` (the angle between
each layer's update and backprop's).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["layer_norms", "read_metrics", "write_metrics", "write_plots"]


def layer_norms(grads: Any, deltas: dict[str, Any]) -> dict[str, dict[str, float]]:
    """L2 norms of every layer's delta (mean over the batch of the per-example norm) and of
    every layer's parameter gradient (all its leaves together)."""
    delta_norms = {}
    for name, d in deltas.items():
        d = jnp.reshape(d, (d.shape[0], -1)) if d.ndim > 1 else jnp.reshape(d, (1, -1))
        delta_norms[name] = float(jnp.mean(jnp.sqrt(jnp.sum(d * d, axis=1))))
    grad_norms = {}

    def walk(tree, prefix):
        if isinstance(tree, dict) and any(isinstance(v, dict) for v in tree.values()):
            for k, v in tree.items():
                walk(v, f"{prefix}{k}/")
            return
        leaves = jax.tree.leaves(tree)
        if leaves:
            grad_norms[prefix.rstrip("/")] = float(
                jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in leaves))
            )

    walk(grads, "")
    return {"delta": delta_norms, "grad": grad_norms}


def write_metrics(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> None:
    """Write all records, one JSON object per line, atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (an empty list when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {i} is not JSON: {e}") from None
    return records


def write_plots(folder: str | os.PathLike[str], records: list[dict[str, Any]]) -> list[Path]:
    """Draw the loss, accuracy and per-layer norm plots; return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    epochs = [r["epoch"] for r in records]
    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        written.append(folder / name)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["train_loss"] for r in records], label="train")
    ax.plot(epochs, [r["test_loss"] for r in records], label="test")
    ax.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    ax.legend()
    save(fig, "loss.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [100 * r["test_accuracy"] for r in records], label="test")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="test accuracy")
    save(fig, "accuracy.png")

    norms = [r.get("norms") for r in records]
    if all(norms):
        panels = [
            ("delta", "‖∂C/∂(layer output)‖ per example"),
            ("grad", "‖∂C/∂W‖ per layer"),
            ("activation", "‖layer output‖ per example"),
        ]
        panels = [(k, t) for k, t in panels if all(k in n for n in norms)]
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
        for ax, (kind, title) in zip(axes[0], panels, strict=True):
            for name in norms[0][kind]:
                ax.plot(epochs, [np.maximum(n[kind][name], 1e-30) for n in norms], label=name)
            ax.set(xlabel="epoch", yscale="log", title=title)
            ax.legend(fontsize="small")
        save(fig, "layer_norms.png")

    angles = [r.get("alignment") for r in records]
    if all(angles):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in angles[0]["grads"]:
            ax.plot(epochs, [a["grads"][name] for a in angles], label=name)
        ax.axhline(90.0, color="gray", linestyle=":", linewidth=1)
        ax.set(xlabel="epoch", ylabel="degrees", ylim=(0, 180))
        ax.set_title("angle between each layer's update and backprop's")
        ax.legend(fontsize="small")
        save(fig, "alignment.png")
    return written

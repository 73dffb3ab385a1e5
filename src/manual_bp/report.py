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
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import require_array

__all__ = ["PLOTS", "layer_norms", "read_metrics", "write_metrics", "write_plots"]

PLOTS = ("loss.png", "accuracy.png", "layer_norms.png", "alignment.png")
"""The files :func:`write_plots` may write (the last two only with norms or angles)."""


def layer_norms(grads: Any, deltas: dict[str, Any]) -> dict[str, dict[str, float]]:
    """L2 norms of every layer's delta (mean over the batch of the per-example norm) and of
    every layer's parameter gradient (all its leaves together)."""
    for arg, tree in (("grads", grads), ("deltas", deltas)):
        if not isinstance(tree, dict):
            raise TypeError(f"layer_norms: {arg} must be a dict, got {type(tree).__name__}")
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
        require_array("layer_norms", f"grads{jax.tree_util.keystr(path)}", leaf)
    for name, d in deltas.items():
        require_array("layer_norms", f"deltas[{name!r}]", d)
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


def _atomic_write(path: Path, write: Any, mode: str = "w") -> None:
    """``write(f)`` into a new temporary file beside ``path`` (created exclusively, so a link
    planted there is never followed), fsync, then rename over ``path``: a symbolic link at
    ``path`` is replaced, not written through, and a crash leaves the old file whole."""
    umask = os.umask(0)
    os.umask(umask)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            os.fchmod(f.fileno(), 0o666 & ~umask)  # mkstemp's 0600 would hide them from others
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_path(where: str, path: Any, *, folder: bool = False) -> Path:
    """``path`` as a Path: a file path in an existing folder, or (``folder``) an existing folder."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{where}: path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if folder and not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise ValueError(f"{where}: expected an existing folder, got {path}, which {what}")
    if not folder and path.is_dir() and not path.is_symlink():  # a link is replaced
        raise ValueError(f"{where}: expected a file path, got {path}, which is a directory")
    if not folder and not path.parent.is_dir():
        raise ValueError(f"{where}: folder {path.parent} of {path.name} does not exist")
    return path


def _check_records(where: str, records: Any) -> None:
    if not isinstance(records, list):
        raise TypeError(f"{where}: records must be a list of dicts, got {type(records).__name__}")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise TypeError(f"{where}: records[{i}] must be a dict, got {type(r).__name__}")


def write_metrics(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> None:
    """Write all records, one JSON object per line, atomically (temporary file + rename)."""
    path = _check_path("write_metrics", path)
    _check_records("write_metrics", records)
    lines = []
    for i, r in enumerate(records):
        try:
            lines.append(json.dumps(r) + "\n")
        except (TypeError, ValueError) as e:
            raise TypeError(f"write_metrics: records[{i}] is not JSON-serializable: {e}") from None

    def write(f):
        f.writelines(lines)

    _atomic_write(path, write)


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (an empty list when it does not exist)."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(
            f"read_metrics: path must be a str or os.PathLike, got {type(path).__name__}"
        )
    path = Path(path)
    if not path.exists():
        return []
    if path.is_dir():
        raise ValueError(f"read_metrics: expected a metrics.jsonl file, got {path}, a directory")
    records = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"read_metrics: {path}: line {i} is not JSON: {e}") from None
                if not isinstance(record, dict):
                    raise ValueError(
                        f"read_metrics: {path}: line {i} must be a JSON object, got "
                        f"{type(record).__name__}"
                    )
                records.append(record)
    return records


def write_plots(folder: str | os.PathLike[str], records: list[dict[str, Any]]) -> list[Path]:
    """Draw the loss, accuracy and per-layer norm plots; return the files written."""
    folder = _check_path("write_plots", folder, folder=True)
    _check_records("write_plots", records)
    if not records:
        raise ValueError("write_plots: records is empty, expected at least one epoch's record")
    need = ("epoch", "train_loss", "test_loss", "test_accuracy")
    for i, r in enumerate(records):
        missing = [k for k in need if k not in r]
        if missing:
            raise ValueError(
                f"write_plots: records[{i}] lacks {missing} (each record needs {list(need)}), "
                f"got keys {list(r)}"
            )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    written = []

    def save(fig, name):
        fig.tight_layout()
        _atomic_write(folder / name, lambda f: fig.savefig(f, format="png", dpi=100), "wb")
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

"""Run outputs: the per-layer norms each epoch records, ``metrics.jsonl`` (one JSON record per
epoch) and PNG plots, each file written atomically (a temporary file renamed over the old one).

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

from .. import nn
from .._checks import require_array
from .._files import atomic_write

__all__ = ["PLOTS", "layer_norms", "read_metrics", "step_norms", "write_metrics", "write_plots"]

PLOTS = ("loss.png", "accuracy.png", "layer_norms.png", "alignment.png")
"""The files :func:`write_plots` may write (the last two only with norms or angles)."""


def _wide(a: Any) -> Any:
    """float16/bfloat16 (and integer) arrays as float32, wider ones as they are."""
    floating = jnp.issubdtype(a.dtype, jnp.floating)
    return a if floating and jnp.dtype(a.dtype).itemsize >= 4 else a.astype(jnp.float32)


def _mean_norm(a: Any) -> Any:
    """Mean over the batch (first axis) of the per-example L2 norm, in float32 or wider."""
    a = _wide(a)
    a = jnp.reshape(a, (a.shape[0], -1)) if a.ndim > 1 else jnp.reshape(a, (1, -1))
    return jnp.mean(jnp.sqrt(jnp.sum(a * a, axis=1)))


def _total_norm(tree: Any) -> Any:
    """The L2 norm of all of ``tree``'s arrays together, in float32 or wider."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(_wide(leaf))) for leaf in jax.tree.leaves(tree)))


def _check_norm_inputs(where: str, grads: Any, deltas: Any, outputs: Any = None) -> None:
    named = {"deltas": deltas, "outputs": {} if outputs is None else outputs}
    for arg, tree in (("grads", grads), *named.items()):
        if not isinstance(tree, dict):
            raise TypeError(f"{where}: {arg} must be a dict, got {type(tree).__name__}")
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
        require_array(where, f"grads{jax.tree_util.keystr(path)}", leaf)
    for arg, tree in named.items():
        for name, a in tree.items():
            if name in deltas:  # the taps of other layers are not read
                require_array(where, f"{arg}[{name!r}]", a)


def _norms(grads: Any, deltas: dict[str, Any], outputs: dict[str, Any] | None) -> dict[str, Any]:
    norms = {"delta": {name: _mean_norm(d) for name, d in deltas.items()}}
    if outputs is not None:
        norms["activation"] = {name: _mean_norm(a) for name, a in outputs.items() if name in deltas}
    norms["grad"] = {name: _total_norm(g) for name, g in nn.by_layer(grads).items()}
    return norms


def step_norms(
    grads: Any, deltas: dict[str, Any], outputs: dict[str, Any] | None = None
) -> dict[str, dict[str, jax.Array]]:
    """One step's per-layer norms, as arrays (works under ``jit``): ``delta`` ‖∂C/∂(output)‖
    and, with ``outputs`` (the forward pass's taps), ``activation`` ‖a‖, each the mean over the
    batch of the per-example L2 norm, for every layer in ``deltas``; and ``grad`` ‖∂C/∂θ‖, all
    of a layer's gradient arrays together (layers as :func:`manual_bp.nn.by_layer` finds
    them). Half-precision arrays are summed in float32."""
    _check_norm_inputs("step_norms", grads, deltas, outputs)
    return _norms(grads, deltas, outputs)


def layer_norms(grads: Any, deltas: dict[str, Any]) -> dict[str, dict[str, float]]:
    """L2 norms of every layer's delta (mean over the batch of the per-example norm) and of
    every layer's parameter gradient (all its leaves together), as floats: the ``delta`` and
    ``grad`` parts of :func:`step_norms`."""
    _check_norm_inputs("layer_norms", grads, deltas)
    norms = _norms(grads, deltas, None)
    return {kind: {name: float(v) for name, v in of.items()} for kind, of in norms.items()}


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

    atomic_write(path, write)


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
        atomic_write(folder / name, lambda f: fig.savefig(f, format="png", dpi=100), "wb")
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
    panels = [
        ("delta", "‖∂C/∂(layer output)‖ per example"),
        ("grad", "‖∂C/∂W‖ per layer"),
        ("activation", "‖layer output‖ per example"),
    ]
    panels = [(k, t) for k, t in panels if all(norms) and all(k in n for n in norms)]
    if panels:  # a panel per kind of norm every record has
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

"""Attention against sequence length T: memory and step time of one training step.

A one-block :func:`~manual_bp.nn.TransformerLM` (D = 64, 4 heads, batch 2, vocabulary 64,
causal) trained with softmax cross-entropy, in three variants:

* ``blockwise``: the handwritten backward with the blockwise rule (``block_size=B``,
  :func:`~manual_bp.rules.flash_attention`);
* ``plain rule``: the handwritten backward with :func:`~manual_bp.rules.multi_head_attention`,
  whose tape keeps the T×T probabilities;
* ``jax.grad``: ``jax.grad`` of the reference network (plain attention).

For each T: XLA's memory of the compiled step, compiled and not run (temp, argument and
output bytes and their ``total``: :func:`~manual_bp.bench.timing.compiled_memory`), the
handwritten tape's bytes from the forward's shapes (each distinct array once), and, up to
``--time-up-to``, the step time, measured interleaved
(:func:`~manual_bp.bench.timing.measure_interleaved`) and reported as a ratio to
``jax.grad``'s in the same run. :func:`causal_speedup` times the blockwise rule
alone, forward and backward, with and without its causal mask (which skips the key blocks
above the diagonal). :func:`plot_attention` draws memory and time against T on log–log axes
(matplotlib, Agg; the ``data`` extra).

    python -m benchmarks.attention_scaling --lengths 64 128 ... 8192 --time-up-to 2048 --plot
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import reference

from .. import nn
from .._files import atomic_write
from ..grad import value_and_grad
from ..rules import flash_attention
from .timing import call_runner, compiled_memory, measure_interleaved

__all__ = [
    "ATTENTION_VARIANTS",
    "attention_markdown",
    "causal_speedup",
    "main",
    "measure_length",
    "plot_attention",
    "tape_bytes",
]

D, HEADS, BATCH, VOCAB = 64, 4, 2, 64
LOSS = "softmax_cross_entropy"

ATTENTION_VARIANTS = ("blockwise", "plain rule", "jax.grad")
"""The variants of :func:`measure_length`, in table order."""


def _net(t: int, block_size: int | None) -> nn.Layer:
    return nn.TransformerLM(
        VOCAB, max_len=t, features=D, num_heads=HEADS, num_blocks=1, block_size=block_size
    )


def tape_bytes(net: nn.Layer, params: Any, x: Any) -> int:
    """Bytes of the arrays on ``net``'s tape for input ``x``, from the forward's shapes only
    (:func:`jax.eval_shape`, nothing computed); an array held at several places of the tape
    (a layer's output is the next one's input) counts once, and the parameters not at all."""

    def leaves(p, x):
        _, tape = net.forward(p, x)
        params_ids = {id(a) for a in jax.tree.leaves(p)}
        distinct: dict[int, Any] = {}
        for a in jax.tree.leaves(tape):
            if isinstance(a, jax.Array) and id(a) not in params_ids:
                distinct.setdefault(id(a), a)
        return list(distinct.values())

    shapes = jax.eval_shape(leaves, params, x)
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in shapes)


def measure_length(
    t: int, block: int = 128, timed: bool = True, repeats: int = 3, block_s: float = 0.0
) -> dict[str, dict[str, Any]]:
    """One T: per variant of :data:`ATTENTION_VARIANTS`, XLA's memory of the compiled step
    (``xla_memory_bytes``: :func:`~manual_bp.bench.timing.compiled_memory`), the tape's bytes
    (``tape_bytes``, ``None`` for ``jax.grad``) and, when ``timed``, the step time
    (``step``: :func:`~manual_bp.bench.timing.measure_interleaved`'s statistics, ``repeats``
    rounds of about ``block_s`` seconds, at least one step each) and ``over_jax_grad``."""
    ids = jnp.zeros((BATCH, t), jnp.int32)
    flash, plain = _net(t, min(block, t)), _net(t, None)
    variants = {
        "blockwise": (flash, value_and_grad(flash, LOSS)),
        "plain rule": (plain, value_and_grad(plain, LOSS)),
        "jax.grad": (plain, reference.value_and_grad(plain, LOSS)),
    }
    rows: dict[str, dict[str, Any]] = {}
    runners = {}
    for name, (net, fn) in variants.items():
        params = net.init(jax.random.key(0), ids.shape)
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(params, ids, ids).compile()
        rows[name] = {
            "compile_s": time.perf_counter() - t0,
            "xla_memory_bytes": compiled_memory(compiled),
        }
        rows[name]["tape_bytes"] = None if name == "jax.grad" else tape_bytes(net, params, ids)
        runners[name] = call_runner(compiled, params, ids, ids)
    if timed:
        steps = measure_interleaved(runners, repeats, block_s)
        for name, row in rows.items():
            row["step"] = steps[name]
            row["over_jax_grad"] = steps[name]["median_s"] / steps["jax.grad"]["median_s"]
    return rows


def causal_speedup(
    lengths: Sequence[int], block: int = 128, repeats: int = 3, block_s: float = 0.0
) -> dict[str, dict[str, Any]]:
    """The blockwise rule alone (forward and backward, jitted; N = 2, D = 64, 4 heads), with
    and without its causal mask, timed interleaved: the causal one visits the nb(nb+1)/2 block
    pairs on or below the diagonal, the other all nb² (nb = T/B). Per T the two statistics and
    ``causal_over_full``, the ratio of their medians."""
    out = {}
    for t in lengths:
        rng = np.random.default_rng(t)
        x = jnp.asarray(rng.standard_normal((BATCH, t, D)), jnp.float32)
        ws = [jnp.asarray(0.2 * rng.standard_normal((D, D)), jnp.float32) for _ in range(4)]
        bs = [jnp.zeros((D,), jnp.float32)] * 4
        g = jnp.asarray(rng.standard_normal((BATCH, t, D)), jnp.float32)
        runners = {}
        for causal in (True, False):
            static = {"num_heads": HEADS, "causal": causal, "block_size": min(block, t)}

            def fwd_bwd(x, ws, bs, g, static=static):
                y, res = flash_attention.fwd(x, *ws, *bs, None, **static)
                return y, flash_attention.bwd(res, g, **static)[:9]

            compiled = jax.jit(fwd_bwd).lower(x, ws, bs, g).compile()
            runners["causal" if causal else "full"] = call_runner(compiled, x, ws, bs, g)
        steps = measure_interleaved(runners, repeats, block_s)
        ratio = steps["causal"]["median_s"] / steps["full"]["median_s"]
        out[str(t)] = {**steps, "causal_over_full": ratio}
    return out


def _mib(b: float | None) -> str:
    return "—" if b is None else f"{b / 2**20:.1f}"


def attention_markdown(results: dict[str, Any]) -> str:
    """The tables of a run of :func:`main`: memory and step time against T, and the causal
    speed-up."""
    lines = [
        "| T | variant | peak MiB (XLA) | temp MiB (XLA) | tape MiB | step ms | step / jax.grad |",
        "|---|---|---|---|---|---|---|",
    ]
    for t, rows in results["lengths"].items():
        for name, r in rows.items():
            step = r.get("step")
            ms = "—" if step is None else f"{1e3 * step['median_s']:.1f}"
            ratio = "—" if step is None else f"{r['over_jax_grad']:.2f}"
            mem = r["xla_memory_bytes"]
            lines.append(
                f"| {t} | {name} | {_mib(mem['total'])} | {_mib(mem['temp'])} | "
                f"{_mib(r['tape_bytes'])} | {ms} | {ratio} |"
            )
    if results.get("causal"):
        lines += [
            "",
            "| T | blockwise rule, causal (ms) | without the mask (ms) | causal / full |",
            "|---|---|---|---|",
        ]
        for t, r in results["causal"].items():
            lines.append(
                f"| {t} | {1e3 * r['causal']['median_s']:.1f} | "
                f"{1e3 * r['full']['median_s']:.1f} | {r['causal_over_full']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def plot_attention(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Draw ``attention_memory.png`` (XLA peak and temp bytes and the tape's bytes against T)
    and ``attention_time.png`` (step time against T, and as a ratio to ``jax.grad``) under
    ``out_dir``, log–log; returns their paths. Needs matplotlib (the ``data`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    lengths = results["lengths"]
    colors = dict(zip(ATTENTION_VARIANTS, ("tab:blue", "tab:orange", "tab:green"), strict=True))

    def series(name, get):
        pts = [(int(t), get(rows[name])) for t, rows in lengths.items() if name in rows]
        pts = [(t, v) for t, v in pts if v is not None]
        return [t for t, _ in pts], [v for _, v in pts]

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name in ATTENTION_VARIANTS:
        ax.plot(
            *series(name, lambda r: r["xla_memory_bytes"]["total"] / 2**20),
            "o-",
            color=colors[name],
            label=f"{name}: XLA peak",
        )
        ts, tape = series(
            name, lambda r: None if r["tape_bytes"] is None else r["tape_bytes"] / 2**20
        )
        if ts:
            ax.plot(ts, tape, "s--", color=colors[name], label=f"{name}: tape")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="sequence length T",
        ylabel="MiB",
        title="One training step: memory against T",
    )
    ax.set_xscale("log", base=2)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    memory = out_dir / "attention_memory.png"
    fig.savefig(memory, dpi=120)
    plt.close(fig)

    fig, (ax, ax_ratio) = plt.subplots(1, 2, figsize=(10, 4.2))
    for name in ATTENTION_VARIANTS:
        ts, ms = series(name, lambda r: 1e3 * r["step"]["median_s"] if "step" in r else None)
        ax.plot(ts, ms, "o-", color=colors[name], label=name)
        ts, ratio = series(name, lambda r: r.get("over_jax_grad"))
        ax_ratio.plot(ts, ratio, "o-", color=colors[name], label=name)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="sequence length T",
        ylabel="step ms (median)",
        title="Step time against T",
    )
    ax_ratio.set(
        xscale="log",
        yscale="log",
        xlabel="sequence length T",
        ylabel="step / jax.grad's, same run",
        title="Step time / jax.grad",
    )
    for a in (ax, ax_ratio):
        a.set_xscale("log", base=2)
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    timing = out_dir / "attention_time.png"
    fig.savefig(timing, dpi=120)
    plt.close(fig)
    return [memory, timing]


def main(argv: Sequence[str] | None = None, out: Path | None = None) -> int:
    """``python -m benchmarks.attention_scaling``: measure, print the tables, write
    ``attention_scaling.json`` and ``.md`` under ``--out``; ``--plot DIR`` draws the figures
    (from ``--from-json FILE`` instead of measuring, when given)."""
    parser = argparse.ArgumentParser(description="Attention memory and step time against T.")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--block", type=int, default=128, help="the blockwise rule's block")
    parser.add_argument("--time-up-to", type=int, default=1024, help="longest T timed")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per T")
    parser.add_argument(
        "--causal-lengths",
        type=int,
        nargs="*",
        default=[],
        help="T values of the causal speed-up (the rule alone)",
    )
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="DIR",
        help="draw attention_memory.png and attention_time.png there",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        metavar="FILE",
        help="plot (and print) a previous run's attention_scaling.json",
    )
    args = parser.parse_args(argv)
    if args.from_json is not None:
        results = json.loads(args.from_json.read_text(encoding="utf-8"))
    else:
        from .runner import machine_info

        results = {
            "machine": machine_info(),
            "config": {
                "block": args.block,
                "time_up_to": args.time_up_to,
                "repeats": args.repeats,
                "model": f"TransformerLM, 1 block, D={D}, {HEADS} heads, batch {BATCH}, "
                f"vocabulary {VOCAB}, float32",
            },
            "lengths": {},
        }
        for t in args.lengths:
            t0 = time.perf_counter()
            results["lengths"][str(t)] = measure_length(
                t, args.block, t <= args.time_up_to, args.repeats
            )
            print(f"T={t}: {time.perf_counter() - t0:.0f} s", flush=True)
        if args.causal_lengths:
            results["causal"] = causal_speedup(args.causal_lengths, args.block, args.repeats)
    text = attention_markdown(results)
    print(text)
    if args.out is not None and args.from_json is None:
        args.out.mkdir(parents=True, exist_ok=True)
        dump = json.dumps(results, indent=1) + "\n"
        atomic_write(args.out / "attention_scaling.json", lambda f: f.write(dump))
        atomic_write(args.out / "attention_scaling.md", lambda f: f.write(text))
        print(
            f"wrote {args.out / 'attention_scaling.json'} and {args.out / 'attention_scaling.md'}"
        )
    if args.plot is not None:
        for path in plot_attention(results, args.plot):
            print(f"wrote {path}")
    return 0

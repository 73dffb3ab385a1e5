"""One training step of a one-block transformer (D = 64, 4 heads, batch 2) against T: the
blockwise rule, today's rule and jax.grad of the reference. Peak memory from XLA's compiled
``memory_analysis`` (temp + argument bytes, compiled, not run), the tape bytes from the
forward's shapes, and the step time where ``--time-up-to`` allows. Prints a markdown table.

    python -m benchmarks.attention_scaling --lengths 128 256 512 1024 2048 4096 --time-up-to 1024
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import reference
from manual_bp import nn, value_and_grad

D, HEADS, BATCH, VOCAB = 64, 4, 2, 64
LOSS = "softmax_cross_entropy"


def _net(t, block_size):
    return nn.TransformerLM(
        VOCAB, max_len=t, features=D, num_heads=HEADS, num_blocks=1, block_size=block_size
    )


def _variants(t, block):
    flash, plain = _net(t, block), _net(t, None)
    return {
        "blockwise": (flash, value_and_grad(flash, LOSS)),
        "today's rule": (plain, value_and_grad(plain, LOSS)),
        "jax.grad (reference)": (plain, reference.value_and_grad(plain, LOSS)),
    }


def _tape_bytes(net, params, ids):
    _, tape = jax.eval_shape(lambda p, x: net.forward(p, x), params, ids)
    return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tape))


def measure(t, block, timed):
    ids = jnp.zeros((BATCH, t), jnp.int32)
    rows = {}
    for name, (net, fn) in _variants(t, block).items():
        params = net.init(jax.random.key(0), ids.shape)
        compiled = jax.jit(fn).lower(params, ids, ids).compile()
        mem = compiled.memory_analysis()
        peak = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
        tape = _tape_bytes(net, params, ids) if name != "jax.grad (reference)" else None
        step = None
        if timed:
            jax.block_until_ready(compiled(params, ids, ids))
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                jax.block_until_ready(compiled(params, ids, ids))
                best = min(best, time.perf_counter() - start)
            step = best
        rows[name] = (peak, tape, step)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--time-up-to", type=int, default=1024)
    args = parser.parse_args()
    print("| T | variant | peak MiB (XLA) | tape MiB | step ms | step / jax.grad |")
    print("|---|---|---|---|---|---|")
    for t in args.lengths:
        rows = measure(t, min(args.block, t), t <= args.time_up_to)
        ref_step = rows["jax.grad (reference)"][2]
        for name, (peak, tape, step) in rows.items():
            tape_s = "—" if tape is None else f"{tape / 2**20:.1f}"
            step_s = "—" if step is None else f"{1e3 * step:.1f}"
            ratio = "—" if step is None or ref_step is None else f"{step / ref_step:.2f}"
            print(f"| {t} | {name} | {peak / 2**20:.1f} | {tape_s} | {step_s} | {ratio} |")


if __name__ == "__main__":
    main()

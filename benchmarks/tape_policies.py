"""Tape policies against time: one training step of a deep tanh MLP (32 × Dense(256) + Tanh,
batch 4096, float32) with the full tape, with ``nn.remat_serial(..., every=k)``, with
``jax.grad`` of the reference and with ``jax.checkpoint`` applied to the reference per group of
k layers (JAX's default policy, and ``dots_saveable``); and of a 4-block ``TransformerLM``
(D = 64, 4 heads, T = 512, batch 2, the plain attention rule) with every residual block under
``nn.remat`` against ``jax.checkpoint`` per block. XLA's compiled temp memory and the
step time, measured interleaved, as a ratio to ``jax.grad``'s in the same run.

    python benchmarks/tape_policies.py [--repeats 3]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import reference
from manual_bp import nn, value_and_grad
from manual_bp.bench.timing import call_runner, compiled_memory, measure_interleaved
from reference.ops import softmax_cross_entropy

LAYERS, WIDTH, BATCH, LOSS = 32, 256, 4096, "softmax_cross_entropy"


def _stack():
    layers = []
    for i in range(LAYERS):
        layers += [nn.Dense(WIDTH, name=f"d{i}"), nn.Tanh(name=f"t{i}")]
    return layers


def _checkpointed(net, policy):
    """jax.grad of the reference with each top-level group of ``net`` under jax.checkpoint."""

    def c(p, x, y):
        h = x
        for g in net.children:
            h = jax.checkpoint(lambda pp, hh, g=g: reference.forward(g, pp, hh), policy=policy)(
                p[g.name], h
            )
        return softmax_cross_entropy(h, y)

    return jax.value_and_grad(c)


def _mlp_variants():
    x = jax.random.normal(jax.random.key(1), (BATCH, WIDTH), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (BATCH,), 0, WIDTH)
    full = nn.serial(*_stack())
    p_full = full.init(jax.random.key(0), x.shape)
    variants = {
        "full tape": (value_and_grad(full, LOSS), p_full),
        "jax.grad": (reference.value_and_grad(full, LOSS), p_full),
    }
    for k in (2, 6, 8):
        net = nn.remat_serial(*_stack(), every=k)
        params = net.init(jax.random.key(0), x.shape)
        variants[f"remat_serial every={k}"] = (value_and_grad(net, LOSS), params)
        if k == 8:
            variants["jax.checkpoint per 8"] = (_checkpointed(net, None), params)
            dots = jax.checkpoint_policies.dots_saveable
            variants["jax.checkpoint per 8, dots_saveable"] = (_checkpointed(net, dots), params)
    return variants, x, y


def _transformer_variants():
    t = 512
    full = nn.TransformerLM(64, max_len=t, features=64, num_heads=4, num_blocks=4)
    light = nn.serial(
        *[nn.remat(c) if c.name.startswith(("attn_", "mlp_")) else c for c in full.children]
    )
    ids = jax.random.randint(jax.random.key(3), (2, t), 0, 64)
    params = full.init(jax.random.key(0), ids.shape)
    dots = jax.checkpoint_policies.dots_saveable
    variants = {
        "full tape": (value_and_grad(full, LOSS), params),
        "jax.grad": (reference.value_and_grad(full, LOSS), params),
        "remat per block": (value_and_grad(light, LOSS), params),
        "jax.checkpoint per block": (_checkpointed(full, None), params),
        "jax.checkpoint per block, dots_saveable": (_checkpointed(full, dots), params),
    }
    return variants, ids, ids


def _measure(title, variants, x, y, repeats):
    temp, runners = {}, {}
    for name, (fn, params) in variants.items():
        compiled = jax.jit(fn).lower(params, x, y).compile()
        temp[name] = compiled_memory(compiled)["temp"] / 2**20
        runners[name] = call_runner(compiled, params, x, y)
    steps = measure_interleaved(runners, repeats, 0.0)
    base = steps["jax.grad"]["median_s"]
    print(f"\n{title}\n")
    print("| variant | XLA temp MiB | step ms | step / jax.grad |")
    print("|---|---|---|---|")
    for name in variants:
        ms = steps[name]["median_s"]
        print(f"| {name} | {temp[name]:.0f} | {1e3 * ms:.1f} | {ms / base:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    _measure("32-layer tanh MLP, width 256, batch 4096", *_mlp_variants(), args.repeats)
    _measure("TransformerLM, 4 blocks, T = 512", *_transformer_variants(), args.repeats)


if __name__ == "__main__":
    main()

"""Data-parallel step time on 1 vs N forced CPU devices (not a timed test).

One training step is forward, handwritten backward and an Adam update of an MLP on one batch,
jit-compiled; with N > 1 devices the batch is split over a ``("data",)`` mesh
(:func:`manual_bp.parallel.data_parallel_value_and_grad`'s machinery) and parameters and
optimizer state are replicated. The device count is fixed when JAX starts, so each count runs
in its own subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``.

    python benchmarks/data_parallel.py                     # 1 vs 8 devices
    python benchmarks/data_parallel.py --devices 1 2 4 8 --batch 1024 --hidden 512,512

Forced CPU devices share the machine's cores, so this measures the overhead of the
partitioned program and its all-reduce, not a speed-up: on real accelerators each device
brings its own compute. Each step is waited for before the next is dispatched: with forced
CPU devices, back-to-back dispatch of a program holding an all-reduce deadlocked XLA's
in-process CPU collectives here (jaxlib 0.10.2; see docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _measure(args: argparse.Namespace) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from manual_bp import nn, parallel, value_and_grad

    n = jax.device_count()
    widths = [int(w) for w in args.hidden.split(",")]
    layers = []
    for w in widths:
        layers += [nn.Dense(w), nn.Relu()]
    net = nn.serial(*layers, nn.Dense(10))
    k = jax.random.split(jax.random.key(0), 3)
    params = net.init(k[0], (args.batch, args.features), jnp.float32)
    x = jax.random.normal(k[1], (args.batch, args.features), jnp.float32)
    y = jax.random.randint(k[2], (args.batch,), 0, 10)
    opt = optax.adam(1e-3)
    grad = value_and_grad(net, "softmax_cross_entropy")
    mesh = parallel.data_parallel_mesh() if n > 1 else None

    def step(p, s, x, y):
        x, y = parallel.constrain_batch((x, y), mesh)
        c, g = grad(p, x, y)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, c

    state = opt.init(params)
    if mesh is not None:
        params, state = parallel.replicate((params, state), mesh)
        x, y = parallel.shard_batch((x, y), mesh)
        step = jax.jit(step, out_shardings=parallel.replicated_sharding(mesh))
    else:
        step = jax.jit(step)
    start = time.perf_counter()
    params, state, c = step(params, state, x, y)
    c.block_until_ready()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):  # one step at a time (see the module's docstring)
            params, state, c = step(params, state, x, y)
            c.block_until_ready()
        times.append((time.perf_counter() - start) / args.steps)
    return {"devices": n, "step_ms": 1e3 * min(times), "first_call_s": compile_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", default="256,256")
    parser.add_argument("--steps", type=int, default=50, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many repeats")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args)))
        return
    print(
        f"MLP {args.features}-{args.hidden.replace(',', '-')}-10, float32, batch {args.batch}, "
        f"Adam; best of {args.repeats} x {args.steps} steps; {os.cpu_count()} CPU cores"
    )
    print(f"{'devices':>7} {'rows/device':>11} {'step (ms)':>10} {'first call (s)':>15}")
    for n in args.devices:
        if args.batch % n:
            print(f"{n:>7} skipped: batch {args.batch} is not divisible by {n}")
            continue
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        env["JAX_PLATFORMS"] = "cpu"
        argv = [sys.executable, __file__, "--child", *sys.argv[1:]]
        run = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
        r = json.loads(run.stdout.strip().splitlines()[-1])
        print(
            f"{r['devices']:>7} {args.batch // n:>11} {r['step_ms']:>10.2f} "
            f"{r['first_call_s']:>15.2f}"
        )


if __name__ == "__main__":
    main()

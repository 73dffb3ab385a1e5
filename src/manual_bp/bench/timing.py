"""Timing: interleaved measurement of several runners, and the matmul ceiling.

A *runner* performs k units of work and returns how many training steps that was; every
variant of a model is one. Variants are measured interleaved (a fresh random order every
repeat, so drift in the machine's load hits all of them), after a warm-up, and reported as the
median and interquartile range of the per-step time over the repeats.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Runner",
    "call_runner",
    "compiled_memory",
    "matmul_ceiling",
    "matmul_runner",
    "measure_interleaved",
    "time_steps",
]

Runner = Callable[[int], int]
"""``run(k)`` performs k units of work (steps, or scanned epochs), waits for the result and
returns how many training steps that was."""


def call_runner(fn: Callable[..., Any], *args: Any) -> Runner:
    """The runner that calls ``fn(*args)`` k times (one step each) and waits for the last."""

    def run(k: int) -> int:
        out = None
        for _ in range(k):
            out = fn(*args)
        jax.block_until_ready(out)
        return k

    return run


def compiled_memory(compiled: Any) -> dict[str, int]:
    """XLA's memory analysis of a compiled program, compiled and not run: ``temp``,
    ``argument``, ``output`` and ``alias`` bytes, and ``total`` = temp + argument + output −
    alias (the buffers live at once); ``{}`` on a backend that does not report it."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # some backends do not report it
        return {}
    if m is None:
        return {}
    fields = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")
    out = {f.removesuffix("_size_in_bytes"): int(getattr(m, f, 0)) for f in fields}
    out["alias"] = int(getattr(m, "alias_size_in_bytes", 0))
    out["total"] = out["temp"] + out["argument"] + out["output"] - out["alias"]
    return out


def _stats(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, min and max of per-step seconds."""
    xs = sorted(samples)
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {
        "median_s": statistics.median(xs),
        "q1_s": q1,
        "q3_s": q3,
        "min_s": xs[0],
        "max_s": xs[-1],
        "repeats": len(xs),
    }


def measure_interleaved(
    runners: dict[str, Runner], repeats: int, block_s: float, pause_s: float = 0.0, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Per-step time of every runner, measured in ``repeats`` rounds.

    Each runner is warmed up, then calibrated so that one timed block takes about ``block_s``
    seconds. Every round runs each runner's block once, in a fresh random order (seeded), so
    a slow phase of the machine is shared out among them and no runner always follows the
    same one. ``pause_s`` of idle time after each block lets the thread pools of the block
    before (OpenBLAS and OpenMP workers spin for a while after their work) go to sleep.
    """
    units: dict[str, int] = {}
    for name, run in runners.items():
        run(1)  # warm-up (compilation already happened)
        t0 = time.perf_counter()
        run(1)
        once = max(time.perf_counter() - t0, 1e-7)
        units[name] = max(1, min(100_000, round(block_s / once)))
    samples: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    rng = np.random.default_rng(seed)
    for _ in range(repeats):
        for i in rng.permutation(len(names)):
            name = names[i]
            t0 = time.perf_counter()
            steps = runners[name](units[name])
            samples[name].append((time.perf_counter() - t0) / steps)
            if pause_s:
                time.sleep(pause_s)
    return {name: _stats(s) for name, s in samples.items()}


def time_steps(step: Callable, *args: Any, seconds: float = 0.05) -> float:
    """Seconds per call of ``step(*args)`` over at least ``seconds``."""
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or n < 2:
        step(*args)
        n += 1
    return elapsed / n


# ---- the matmul ceiling ----------------------------------------------------------------------


def matmul_runner(n: int, dtype: Any) -> Runner:
    """A jitted square n×n×n product in ``dtype``, as a runner (k products per call)."""
    k1, k2 = jax.random.split(jax.random.key(n))
    a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(k2, (n, n), jnp.float32).astype(dtype)
    return call_runner(jax.jit(jnp.dot), a, b)


def matmul_ceiling(
    dtype: Any, sizes: Sequence[int], repeats: int, block_s: float
) -> dict[str, Any]:
    """The measured matmul rate in ``dtype`` (GFLOP/s of a jitted square n×n×n product, its
    best repeat), best over ``sizes``."""
    per_size = {}
    for n in sizes:
        s = measure_interleaved({"dot": matmul_runner(n, dtype)}, repeats, block_s)["dot"]
        per_size[str(n)] = {"seconds": s, "gflops": 2 * n**3 / s["min_s"] / 1e9}
    best = max(per_size.values(), key=lambda v: v["gflops"])["gflops"]
    return {"dtype": jnp.dtype(dtype).name, "sizes": per_size, "gflops": best}

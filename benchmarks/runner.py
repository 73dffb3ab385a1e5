"""Side-by-side benchmarks: the handwritten backward (manual_bp) against ``jax.grad`` of the
reference, PyTorch (eager and ``torch.compile``) and plain numpy, measured in one process.

Every timed variant runs a training step — forward, backward and an SGD update — on the same
model, batch size and dtype. Variants are measured interleaved (the order rotates every
repeat, so drift in the machine's load hits all of them), after a warm-up, and reported as
the median and interquartile range of the per-step time over the repeats. Ratios are
computed from the medians. Nothing here is a test: speed is read from the tables.

    python -m benchmarks [--quick] [--out DIR] [--models NAME ...] [--dtype bfloat16]
    manual-bp bench [--quick] [--out DIR] [--models NAME ...]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import manual_bp
import reference
from manual_bp import nn
from manual_bp.bench import MODELS, add_arguments

from .models import LOSS, Case, build_cases, numpy_mlp_step, torch_batch, torch_model, torch_step

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
LR = 0.01

Runner = Callable[[int], int]
"""``run(k)`` performs k units of work (steps, or scanned epochs), waits for the result and
returns how many training steps that was."""


# ---- timing ----------------------------------------------------------------------------------


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


# ---- JAX training steps ----------------------------------------------------------------------


def _grad_fn(case: Case, kind: str) -> Callable[..., Any]:
    make = manual_bp.value_and_grad if kind == "manual" else reference.value_and_grad
    return make(case.net, LOSS, has_state=case.stateful)


def make_step(case: Case, kind: str, optimizer: optax.GradientTransformation) -> Callable:
    """``step(carry, batch) -> (carry, loss)`` with ``carry = (params, opt_state, state)``:
    forward, the backward of ``kind`` ("manual" or "reference") and an optax update."""
    f = _grad_fn(case, kind)
    stateful = case.stateful

    def step(carry, batch):
        params, opt_state, state = carry
        x, y = batch
        if stateful:
            (c, state), grads = f(params, state, x, y)
        else:
            c, grads = f(params, x, y)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return (params, opt_state, state), c

    return step


def _own_copy(tree: Any) -> Any:
    """A copy of every array: each runner donates (consumes) its own carry."""
    return jax.tree.map(jnp.copy, tree)


def _loop_runner(step: Callable, carry: Any, batch: Any) -> Runner:
    """A Python loop of jitted steps; each step donates its carry (params, optimizer state,
    network state) to the next, as a training loop does."""
    jitted = jax.jit(step, donate_argnums=0)
    box = [_own_copy(carry)]

    def run(k: int) -> int:
        carry = box[0]
        for _ in range(k):
            carry, c = jitted(carry, batch)
        jax.block_until_ready(c)
        box[0] = carry
        return k

    return run


def _scan_runner(step: Callable, carry: Any, batches: Any, steps: int) -> Runner:
    """Epochs of ``steps`` steps, each one jitted ``lax.scan`` (donating its carry)."""
    epoch = jax.jit(lambda carry, xs: lax.scan(step, carry, xs), donate_argnums=0)
    box = [_own_copy(carry)]

    def run(k: int) -> int:
        carry = box[0]
        for _ in range(k):
            carry, losses = epoch(carry, batches)
        jax.block_until_ready(losses)
        box[0] = carry
        return k * steps

    return run


def _memory(compiled: Any) -> dict[str, int]:
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


def compile_report(step: Callable, carry: Any, batch: Any) -> dict[str, Any]:
    """Seconds to trace, lower and compile a fresh jit of ``step``, and XLA's memory figures."""
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(carry, batch).compile()
    return {"compile_s": time.perf_counter() - t0, "xla_memory_bytes": _memory(compiled)}


def _leaf_bytes(leaves: Sequence[Any], distinct: int, params: int) -> dict[str, int]:
    """Bytes of a tape's leaves: all of them; the first ``distinct`` (the distinct arrays);
    and of those, the first ``params`` (the parameters themselves, held by reference)."""
    return {
        "bytes": sum(int(a.nbytes) for a in leaves),
        "distinct_bytes": sum(int(a.nbytes) for a in leaves[:distinct]),
        "param_bytes": sum(int(a.nbytes) for a in leaves[:params]),
        "arrays": len(leaves),
        "distinct_arrays": distinct,
    }


def _split_forward(fn: Callable[..., Any]) -> Callable[..., tuple[list[Any], int, int]]:
    """``jit(fn)`` returning the leaves of its output tree, reordered: the distinct ones first
    (an array that appears at several places of the tree — a layer's output is also the next
    layer's input — is one value, kept once), starting with those that are leaves of the
    first argument (the parameters); then the repeats. Returns ``(leaves, number of distinct
    leaves, number of them that are parameters)``."""
    counts: list[tuple[int, int]] = []

    def traced(params, *args):
        leaves = jax.tree.leaves(fn(params, *args))
        param_ids = {id(p) for p in jax.tree.leaves(params)}
        first: dict[int, Any] = {}
        repeats = []
        for a in leaves:
            if id(a) in first:
                repeats.append(a)
            else:
                first[id(a)] = a
        own = [a for a in first.values() if id(a) in param_ids]
        rest = [a for a in first.values() if id(a) not in param_ids]
        counts.append((len(first), len(own)))
        return own + rest + repeats

    jitted = jax.jit(traced)

    def run(*args):
        leaves = jitted(*args)
        return leaves, *counts[-1]

    return run


def tape_report(case: Case, params: Any, state: Any, batch: Any) -> dict[str, Any]:
    """What a split forward keeps for its backward when forward and backward are two jitted
    calls: the manual tape (the network's tape and the loss's residuals) against the residuals
    of ``jax.vjp`` of the reference loss (the leaves of the function it returns).

    ``bytes`` sums every leaf; ``distinct_bytes`` counts an array held at several places of
    the tree once (for both sides alike): that is what a split forward needs to keep.
    ``param_bytes`` are the parameters among them (``jax.vjp``'s pullback closes over the
    weights; the manual backward takes them as an argument), and ``activation_ratio``
    compares the rest.
    """
    x, y = batch
    loss_rule = manual_bp.get_rule(LOSS)
    loss_ref = reference.FORWARD[LOSS]
    stateful = case.stateful

    def manual_forward(params, state, x, y):
        ctx = nn.Context(train=True, state=state if stateful else None)
        out, tape = case.net.forward(params, x, ctx)
        _, loss_res = loss_rule.fwd(out, y)
        return tape, loss_res

    def vjp_forward(params, state, x, y):
        def c(p):
            out, _ = reference.forward_with_state(
                case.net, p, x, state=state if stateful else None, train=True
            )
            return loss_ref(out, y)

        _, pullback = jax.vjp(c, params)
        return pullback

    manual = _leaf_bytes(*_split_forward(manual_forward)(params, state, x, y))
    vjp = _leaf_bytes(*_split_forward(vjp_forward)(params, state, x, y))

    def activations(side: dict[str, int]) -> int:
        return side["distinct_bytes"] - side["param_bytes"]

    return {
        "manual": manual,
        "vjp": vjp,
        "ratio": manual["distinct_bytes"] / vjp["distinct_bytes"],
        "all_leaves_ratio": manual["bytes"] / vjp["bytes"],
        "activation_ratio": activations(manual) / activations(vjp) if activations(vjp) else None,
    }


# ---- the matmul ceiling ----------------------------------------------------------------------


def _matmul_runner(n: int, dtype: Any) -> Runner:
    """A jitted square n×n×n product in ``dtype``, as a runner (k products per call)."""
    k1, k2 = jax.random.split(jax.random.key(n))
    a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(k2, (n, n), jnp.float32).astype(dtype)
    dot = jax.jit(jnp.dot)

    def run(k: int) -> int:
        for _ in range(k):
            c = dot(a, b)
        jax.block_until_ready(c)
        return k

    return run


def matmul_ceiling(dtype: Any, sizes: Sequence[int], repeats: int, block_s: float) -> dict:
    """The measured matmul rate in ``dtype`` (GFLOP/s of a jitted square n×n×n product, its
    best repeat), best over ``sizes``."""
    per_size = {}
    for n in sizes:
        s = measure_interleaved({"dot": _matmul_runner(n, dtype)}, repeats, block_s)["dot"]
        per_size[str(n)] = {"seconds": s, "gflops": 2 * n**3 / s["min_s"] / 1e9}
    best = max(per_size.values(), key=lambda v: v["gflops"])["gflops"]
    return {"dtype": jnp.dtype(dtype).name, "sizes": per_size, "gflops": best}


# ---- one model -------------------------------------------------------------------------------


_TORCH_DEFAULT_THREADS: dict[str, int] = {}


def _time_steps(step: Callable, *args: Any, seconds: float = 0.05) -> float:
    """Seconds per call of ``step(*args)`` over at least ``seconds``."""
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or n < 2:
        step(*args)
        n += 1
    return elapsed / n


def _torch_runners(
    case: Case, x: Any, y: Any, compile_torch: bool, threads: int | None
) -> tuple[dict[str, Runner], dict[str, Any]]:
    """PyTorch eager (and compiled) step runners, or none with the reason.

    Each variant runs once per thread count (``name@threads``: 1 and PyTorch's default, or
    ``threads``); :func:`_best_torch` keeps the faster. On a busy machine PyTorch's OpenMP
    barriers make 2 threads slower than 1 at times, so neither count is always right.
    """
    try:
        import torch
    except ImportError:
        return {}, {"skipped": "PyTorch is not installed (pip install '.[bench]')"}
    torch.manual_seed(0)
    default = _TORCH_DEFAULT_THREADS.setdefault("n", torch.get_num_threads())
    counts = [threads] if threads else sorted({1, default})
    info: dict[str, Any] = {"version": torch.__version__, "threads_tried": counts}
    xt, yt = torch_batch(case, x, y)
    steps = {"torch_eager": torch_step(case, torch_model(case), LR)}
    if compile_torch:
        try:
            step = torch_step(case, torch.compile(torch_model(case)), LR)
            t0 = time.perf_counter()
            step(xt, yt)
            step(xt, yt)
            info["compile_s"] = time.perf_counter() - t0
            steps["torch_compile"] = step
        except Exception as e:  # a missing compiler toolchain, an unsupported op, ...
            info["compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    runners: dict[str, Runner] = {}
    for name, step in steps.items():
        for _ in range(3):  # first calls initialize the allocator and kernels
            step(xt, yt)
        for n in counts:

            def run(k: int, step: Callable = step, n: int = n) -> int:
                torch.set_num_threads(n)
                for _ in range(k):
                    step(xt, yt)
                return k

            runners[f"{name}@{n}"] = run
    return runners, info


def _best_torch(times: dict[str, dict[str, Any]]) -> None:
    """Replace the ``name@threads`` entries of ``times`` by ``name``, the faster thread count
    (its ``threads`` recorded; the others kept under ``others``)."""
    for name in ("torch_eager", "torch_compile"):
        variants = {k: times.pop(k) for k in list(times) if k.startswith(name + "@")}
        if variants:
            best = min(variants, key=lambda k: variants[k]["median_s"])
            times[name] = dict(variants[best], threads=int(best.split("@")[1]))
            times[name]["others"] = {k: v["median_s"] for k, v in variants.items() if k != best}


def _blas_limit(threads: int | None) -> Any:
    """A context limiting numpy's BLAS threads (a no-op for ``None`` or without
    threadpoolctl)."""
    if threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(threads, user_api="blas")


def _numpy_threads(step: Callable, *args: Any) -> int | None:
    """numpy's best BLAS thread count here, 1 or the default (``None``)."""
    tried = {}
    for n in (None, 1):
        with _blas_limit(n):
            step(*args)
            tried[n] = min(_time_steps(step, *args) for _ in range(3))
    return min(tried, key=lambda n: tried[n])


def bench_model(case: Case, cfg: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of one model. Achieved GFLOP/s are compared with a square matmul
    measured interleaved with the model's steps (``fraction_of_ceiling``)."""
    dtype = jnp.dtype(cfg.dtype)
    key = jax.random.key(0)
    k_init, k_data, k_epoch = jax.random.split(key, 3)
    params = case.net.init(k_init, case.x_shape, dtype)
    state = case.net.init_state(k_init, case.x_shape, dtype) if case.stateful else {}
    batch = case.batch(k_data, dtype)
    optimizer = optax.sgd(LR)
    carry = (params, optimizer.init(params), state)
    steps = {kind: make_step(case, kind, optimizer) for kind in ("manual", "reference")}

    result: dict[str, Any] = {
        "title": case.title,
        "step_flops": case.step_flops,
        "x_shape": list(case.x_shape),
        "stateful": case.stateful,
    }
    # compile time and XLA memory, on fresh closures (no tracing cache shared with the timing)
    result["compile"] = {
        kind: compile_report(make_step(case, kind, optimizer), carry, batch)
        for kind in ("manual", "reference")
    }
    result["tape"] = tape_report(case, params, state, batch)

    runners: dict[str, Runner] = {
        "manual": _loop_runner(steps["manual"], carry, batch),
        "reference": _loop_runner(steps["reference"], carry, batch),
    }
    epoch_steps = cfg.epoch_steps
    batches = case.batch(k_epoch, dtype, steps=epoch_steps)
    runners["manual_scan"] = _scan_runner(steps["manual"], carry, batches, epoch_steps)
    runners["reference_scan"] = _scan_runner(steps["reference"], carry, batches, epoch_steps)
    if cfg.torch:
        torch_runners, result["torch"] = _torch_runners(
            case, *batch, cfg.torch_compile, cfg.torch_threads
        )
        runners.update(torch_runners)
    if cfg.numpy and case.mlp_widths:
        np_step = numpy_mlp_step(case, LR)
        xn = np.asarray(batch[0], np.float32)
        yn = np.asarray(batch[1])

        blas_threads = _numpy_threads(np_step, xn, yn)
        result["numpy"] = {"blas_threads": blas_threads}

        def run_numpy(k: int) -> int:
            for _ in range(k):
                np_step(xn, yn)
            return k

        runners["numpy"] = run_numpy
    # the matmul ceiling again, interleaved with this model's steps (same machine conditions);
    # as a ceiling, its best repeat counts
    n = cfg.ceiling_sizes[0]
    runners["matmul"] = _matmul_runner(n, dtype)
    with _blas_limit(result.get("numpy", {}).get("blas_threads")):  # numpy's BLAS only
        times = measure_interleaved(runners, cfg.repeats, cfg.block_s, cfg.pause_s)
    _best_torch(times)
    matmul = times.pop("matmul")
    matmul["gflops"] = 2 * n**3 / matmul["min_s"] / 1e9
    matmul["median_gflops"] = 2 * n**3 / matmul["median_s"] / 1e9
    matmul["n"] = n
    result["matmul"] = matmul

    for _name, s in times.items():
        s["steps_per_s"] = 1.0 / s["median_s"]
        s["gflops"] = case.step_flops / s["median_s"] / 1e9
        s["fraction_of_ceiling"] = s["gflops"] / matmul["gflops"]  # measured alongside
    result["step"] = times
    med = {name: s["median_s"] for name, s in times.items()}
    ratios = {"manual_over_reference": med["manual"] / med["reference"]}
    ratios["scan_over_loop"] = med["manual_scan"] / med["manual"]
    ratios["manual_scan_over_reference_scan"] = med["manual_scan"] / med["reference_scan"]
    for other in ("torch_eager", "torch_compile", "numpy"):
        if other in med:
            ratios[f"manual_over_{other}"] = med["manual"] / med[other]
            ratios[f"manual_scan_over_{other}"] = med["manual_scan"] / med[other]
    result["ratios"] = ratios
    return result


# ---- the whole suite -------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    dev = jax.devices()[0]
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "devices": jax.device_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's targets, each with its measured value and whether it is met."""
    models = results["models"]
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, goal: str, met: bool | None, detail: str = "") -> None:
        out.append({"target": name, "value": value, "goal": goal, "met": met, "detail": detail})

    ratios = {m: r["ratios"]["manual_over_reference"] for m, r in models.items()}
    if ratios:
        worst = max(ratios, key=ratios.get)
        med = statistics.median(ratios.values())
        add("manual / jax.grad step time, median over models", med, "<= 1.00", med <= 1.00)
        add(
            "manual / jax.grad step time, worst model",
            ratios[worst],
            "<= 1.05",
            ratios[worst] <= 1.05,
            worst,
        )
    if "wide_mlp" in models:
        frac = models["wide_mlp"]["step"]["manual"]["fraction_of_ceiling"]
        add("wide MLP step, fraction of the matmul ceiling", frac, ">= 0.90", frac >= 0.90)
    if "tiny_mlp" in models and "torch_eager" in models["tiny_mlp"]["step"]:
        s = models["tiny_mlp"]["step"]
        speed = s["manual_scan"]["steps_per_s"] / s["torch_eager"]["steps_per_s"]
        add("tiny MLP, scanned epoch steps/s over PyTorch eager", speed, ">= 4", speed >= 4)
    tapes = {m: r["tape"]["ratio"] for m, r in models.items() if r["tape"]["ratio"]}
    if tapes:
        worst = max(tapes, key=tapes.get)
        add(
            "split-jit tape / jax.vjp residual bytes, worst model",
            tapes[worst],
            "<= 0.60",
            tapes[worst] <= 0.60,
            worst,
        )
    if "cnn" in models and "torch_eager" in models["cnn"]["step"]:
        r = models["cnn"]["ratios"]["manual_over_torch_eager"]
        add("CNN step time, manual / PyTorch eager", r, "<= 1.00", r <= 1.00)
    return out


def run_suite(cfg: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    cases = build_cases(tiny=cfg.tiny)
    unknown = [m for m in cfg.models if m not in cases]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {', '.join(cases)}")
    dtype = jnp.dtype(cfg.dtype)
    log(f"matmul ceiling ({dtype.name}, sizes {cfg.ceiling_sizes}) ...")
    ceiling = matmul_ceiling(dtype, cfg.ceiling_sizes, cfg.repeats, cfg.block_s)
    log(f"  {ceiling['gflops']:.1f} GFLOP/s")
    results: dict[str, Any] = {
        "machine": machine_info(),
        "config": {
            "quick": cfg.quick,
            "tiny": cfg.tiny,
            "dtype": dtype.name,
            "repeats": cfg.repeats,
            "block_s": cfg.block_s,
            "pause_s": cfg.pause_s,
            "epoch_steps": cfg.epoch_steps,
            "torch": cfg.torch,
            "torch_compile": cfg.torch_compile,
            "command": cfg.invocation,
        },
        "ceiling": ceiling,
        "models": {},
    }
    for name in cfg.models:
        t0 = time.perf_counter()
        log(f"{name}: {cases[name].title} ...")
        results["models"][name] = r = bench_model(cases[name], cfg)
        log(
            f"  manual {r['step']['manual']['median_s'] * 1e3:.3f} ms, jax.grad "
            f"{r['step']['reference']['median_s'] * 1e3:.3f} ms "
            f"(ratio {r['ratios']['manual_over_reference']:.3f}); {time.perf_counter() - t0:.0f} s"
        )
    # a second ceiling measurement at the end; the best rate seen anywhere is the ceiling
    end = matmul_ceiling(dtype, cfg.ceiling_sizes, cfg.repeats, cfg.block_s)
    if end["gflops"] > ceiling["gflops"]:
        results["ceiling"] = end
    results["ceiling"]["first_gflops"] = ceiling["gflops"]
    results["ceiling"]["last_gflops"] = end["gflops"]
    best = max(
        [results["ceiling"]["gflops"]] + [r["matmul"]["gflops"] for r in results["models"].values()]
    )
    results["ceiling"]["best_gflops"] = best
    for r in results["models"].values():
        for s in r["step"].values():
            s["fraction_of_best_ceiling"] = s["gflops"] / best
    results["targets"] = evaluate_targets(results)
    results["machine"]["load_average_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    )
    return results


# ---- output ----------------------------------------------------------------------------------


def _ms(s: dict[str, float] | None) -> str:
    if s is None:
        return "—"
    scale, unit = (1e3, "ms") if s["median_s"] >= 1e-3 else (1e6, "µs")
    return f"{s['median_s'] * scale:.3g} {unit} ({s['q1_s'] * scale:.3g}–{s['q3_s'] * scale:.3g})"


def _torch_ms(s: dict[str, Any] | None) -> str:
    return _ms(s) if s is None else f"{_ms(s)}, {s['threads']} thr."


def _kib(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 10 * 2**20 else f"{n / 2**20:,.1f} MiB"


def to_markdown(results: dict[str, Any]) -> str:
    m, cfg, ceil = results["machine"], results["config"], results["ceiling"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, backend {m['backend']} ({m['device']}); "
        f"jax {m['jax']}, torch {m['torch'] or 'not installed'}; {m['date_utc']} UTC, "
        f"load average {', '.join(f'{v:.1f}' for v in m['load_average'] or [])} at the start.",
        f"Command: `{cfg['command']}` (dtype {cfg['dtype']}, {cfg['repeats']} interleaved "
        f"repeats; times are the median per training step, (interquartile range); PyTorch "
        f"at its faster thread count, measured both ways).",
        f"Matmul ceiling ({ceil['dtype']}): square jnp.dot, best {ceil['best_gflops']:.1f} "
        f"GFLOP/s over the run (sizes {', '.join(ceil['sizes'])}: {ceil['first_gflops']:.1f} "
        f"before the models, {ceil['last_gflops']:.1f} after); each model's rate is compared "
        f"with the best repeat of an n = {min(int(k) for k in ceil['sizes'])} matmul "
        f"measured interleaved with its own steps.",
        "",
        "| model | manual (jit) | jax.grad (jit) | manual / jax.grad | manual, scanned epoch "
        "| jax.grad, scanned epoch | PyTorch eager | torch.compile | numpy "
        "| manual GFLOP/s (of the matmul alongside) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["models"].values():
        s = r["step"]
        lines.append(
            f"| {r['title']} | {_ms(s['manual'])} | {_ms(s['reference'])} "
            f"| **{r['ratios']['manual_over_reference']:.2f}** | {_ms(s['manual_scan'])} "
            f"| {_ms(s['reference_scan'])} "
            f"| {_torch_ms(s.get('torch_eager'))} | {_torch_ms(s.get('torch_compile'))} "
            f"| {_ms(s.get('numpy'))} "
            f"| {s['manual']['gflops']:.1f} ({100 * s['manual']['fraction_of_ceiling']:.0f}% "
            f"of {r['matmul']['gflops']:.0f}) |"
        )
    lines += [
        "",
        "| model | compile s, manual / jax.grad | XLA temp, manual / jax.grad "
        "| split-jit tape: manual / jax.vjp residuals | ratio "
        "| same, without the weights jax.vjp holds | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        c, t = r["compile"], r["tape"]
        mm = c["manual"]["xla_memory_bytes"].get("temp")
        mr = c["reference"]["xla_memory_bytes"].get("temp")
        temp = "—" if mm is None or mr is None else f"{_kib(mm)} / {_kib(mr)}"
        lines.append(
            f"| {name} | {c['manual']['compile_s']:.2f} / {c['reference']['compile_s']:.2f} "
            f"| {temp} | {_kib(t['manual']['distinct_bytes'])} "
            f"/ {_kib(t['vjp']['distinct_bytes'])} "
            f"| {t['ratio']:.2f} "
            f"| {_kib(t['manual']['distinct_bytes'] - t['manual']['param_bytes'])} "
            f"/ {_kib(t['vjp']['distinct_bytes'] - t['vjp']['param_bytes'])} "
            f"| {t['activation_ratio']:.2f} |"
        )
    skipped = {
        r.get("torch", {}).get("skipped") or r.get("torch", {}).get("compile_error")
        for r in results["models"].values()
    } - {None}
    for reason in sorted(skipped):
        lines.append(f"\nPyTorch: {reason}")
    lines += ["", "| target | goal | measured | met |", "|---|---|---|---|"]
    for t in results["targets"]:
        detail = f" ({t['detail']})" if t["detail"] else ""
        lines.append(
            f"| {t['target']}{detail} | {t['goal']} | {t['value']:.3g} "
            f"| {'yes' if t['met'] else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if results["config"]["dtype"] == "float32" else f"-{results['config']['dtype']}"
    json_path, md_path = out / f"results{suffix}.json", out / f"results{suffix}.md"
    json_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    md_path.write_text(to_markdown(results), encoding="utf-8")
    return json_path, md_path


# ---- command line ----------------------------------------------------------------------------


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_arguments(p)
    return p


def configure(args: argparse.Namespace, invocation: str = "python -m benchmarks") -> None:
    """Fill in the settings that depend on --quick/--tiny, and the command that reproduces
    the run (``invocation`` followed by the options given)."""
    if args.tiny:
        defaults = {"repeats": 1, "block_s": 0.002, "epoch_steps": 2, "ceiling_sizes": (64,)}
        defaults["pause_s"] = 0.0
        args.torch_compile = False
    elif args.quick:
        defaults = {"repeats": 3, "block_s": 0.03, "epoch_steps": 8, "ceiling_sizes": (1024,)}
        defaults["pause_s"] = 0.02
        args.torch_compile = False
    else:
        defaults = {"repeats": 15, "block_s": 0.1, "epoch_steps": 32, "ceiling_sizes": (1024, 2048)}
        defaults["pause_s"] = 0.1
    if not args.tiny and jax.default_backend() == "gpu":  # a GPU needs larger products
        defaults["ceiling_sizes"] = (4096,) if args.quick else (4096, 8192)
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    args.out = DEFAULT_OUT if args.out is None else Path(args.out)
    options = []
    if args.quick:
        options.append("--quick")
    if args.tiny:
        options.append("--tiny")
    if list(args.models) != list(MODELS):
        options += ["--models", *args.models]
    if args.dtype != "float32":
        options += ["--dtype", args.dtype]
    args.invocation = " ".join([invocation, *options])


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the suite with options set by :func:`configure`, write ``results.json`` and
    ``results.md`` under ``args.out`` and return the results."""
    results = run_suite(args, log)
    json_path, md_path = write_results(results, args.out)
    log("")
    log(to_markdown(results))
    log(f"wrote {json_path} and {md_path}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args)
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

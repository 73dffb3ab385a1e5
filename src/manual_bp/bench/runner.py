"""The benchmark suite: every measurement of one model, the whole run, and its settings.

The handwritten backward (manual_bp) against ``jax.grad`` of the reference, PyTorch (eager and
``torch.compile``) and plain numpy, measured in one process. Every timed variant runs a
training step — forward, backward and an SGD update — on the same model, batch size and
dtype. Variants are measured interleaved (in a fresh random order every repeat, so drift in
the machine's load hits all of them), after a warm-up, and reported as the median and
interquartile range of the per-step time over the repeats. Ratios are computed from the
medians. For the networks without state, forward mode too: (C, ∇C·v) from
:func:`manual_bp.value_and_jvp` against ``jax.jvp`` of the reference loss, and a training step
on a weight-perturbed forward gradient against the backprop step. Nothing here is a test:
speed is read from the tables.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .baselines import best_torch, blas_limit, numpy_runner, torch_runners
from .models import Case, build_cases
from .options import DEFAULT_OUT, MODELS
from .steps import LR, compile_report, jvp_runner, loop_runner, make_step, scan_runner
from .tables import to_markdown, write_results
from .tape import tape_report
from .timing import Runner, matmul_ceiling, matmul_runner, measure_interleaved

__all__ = [
    "bench_model",
    "configure",
    "evaluate_targets",
    "machine_info",
    "run",
    "run_suite",
]


# ---- one model -------------------------------------------------------------------------------


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
        "manual": loop_runner(steps["manual"], carry, batch),
        "reference": loop_runner(steps["reference"], carry, batch),
    }
    if not case.stateful:  # forward mode: (C, ∇C·v), and a training step on a forward gradient
        runners["manual_jvp"] = jvp_runner(case, "manual", params, batch)
        runners["reference_jvp"] = jvp_runner(case, "reference", params, batch)
        runners["forward_grad"] = loop_runner(
            make_step(case, "forward_grad", optimizer), carry, batch
        )
    epoch_steps = cfg.epoch_steps
    batches = case.batch(k_epoch, dtype, steps=epoch_steps)
    runners["manual_scan"] = scan_runner(steps["manual"], carry, batches, epoch_steps)
    runners["reference_scan"] = scan_runner(steps["reference"], carry, batches, epoch_steps)
    if cfg.torch:
        torch, result["torch"] = torch_runners(
            case, *batch, LR, cfg.torch_compile, cfg.torch_threads
        )
        runners.update(torch)
    if cfg.numpy and case.mlp_widths:
        runners["numpy"], result["numpy"] = numpy_runner(case, *batch, LR)
    # the matmul ceiling again, interleaved with this model's steps (same machine conditions);
    # as a ceiling, its best repeat counts
    n = cfg.ceiling_sizes[0]
    runners["matmul"] = matmul_runner(n, dtype)
    with blas_limit(result.get("numpy", {}).get("blas_threads")):  # numpy's BLAS only
        times = measure_interleaved(runners, cfg.repeats, cfg.block_s, cfg.pause_s)
    best_torch(times)
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
    if "manual_jvp" in med:
        ratios["manual_jvp_over_reference_jvp"] = med["manual_jvp"] / med["reference_jvp"]
        ratios["forward_grad_over_manual"] = med["forward_grad"] / med["manual"]
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
    """The CPU, the JAX backend and device, library versions, the load average and the date."""
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
    """Every model of ``cfg.models`` between two measurements of the matmul ceiling, and the
    targets; ``log`` receives one line per step of the way."""
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


# ---- settings and the run --------------------------------------------------------------------


def configure(args: argparse.Namespace, invocation: str = "manual-bp bench") -> None:
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

"""The Markdown report of a benchmark run, and writing it with the JSON results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._files import atomic_write

__all__ = ["to_markdown", "write_results"]


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
    forward = {n: r for n, r in results["models"].items() if "manual_jvp" in r["step"]}
    if forward:
        lines += [
            "",
            "| model | value_and_jvp (jit) | jax.jvp of the reference (jit) | ratio "
            "| forward-gradient step (weight-perturbed) | backprop step (manual) | ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in forward.items():
            s, q = r["step"], r["ratios"]
            lines.append(
                f"| {name} | {_ms(s['manual_jvp'])} | {_ms(s['reference_jvp'])} "
                f"| **{q['manual_jvp_over_reference_jvp']:.2f}** | {_ms(s['forward_grad'])} "
                f"| {_ms(s['manual'])} | {q['forward_grad_over_manual']:.2f} |"
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
    text = json.dumps(results, indent=1) + "\n"
    atomic_write(json_path, lambda f: f.write(text))
    atomic_write(md_path, lambda f: f.write(to_markdown(results)))
    return json_path, md_path

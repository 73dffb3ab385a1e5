"""The cost of each curvature quantity relative to one gradient, on the benchmark models.

For every model, every quantity of :mod:`manual_bp.curvature` that applies to it is jitted and
timed interleaved with the handwritten gradient (:func:`manual_bp.value_and_grad`) of the same
batch (:func:`~manual_bp.bench.timing.measure_interleaved`); the table reports each median as a
multiple of the gradient's median, with its compile time:

* ``diag_ggn`` exact and Monte-Carlo (one sampled label per output position): the generic
  route, N·L·C per-example backward passes; skipped where its per-example gradients would not
  fit in :data:`MEMORY_BUDGET` (N·L·C·P numbers);
* ``dense_diag_ggn`` (networks of Dense layers): L·C backward passes of the batch;
* ``hessian_diag`` (networks of Dense, Conv2D, pooling and activations);
* ``ggn_vector_product`` and :func:`manual_bp.hvp` (forward over the handwritten backward);
* ``kfac_factors`` KFLR (exact) and KFAC (one sample), expand setting, for the layers that have
  Kronecker factors;
* one K-FAC optimizer step (factors, moving averages, inverses every step: the upper bound) and
  one Adam step, both including the gradient;
* with kfac-jax installed (the ``kfac`` extra), its factor computation on the same model (the
  reference network, whose Dense and Conv2D layers kfac-jax finds by pattern matching): one
  ``update_curvature_matrix_estimate`` in its ``ggn_exact`` (KFLR) and ``fisher_gradients``
  (KFAC, one sample) modes, for the models whose weighted layers are all Dense or Conv2D. The
  run records how far kfac-jax's exact factors are from ``kfac_factors``' KFLR factors (their
  Kronecker products, fitted with one scale per layer: kfac-jax divides a convolution's factors
  by its P output positions where :func:`~manual_bp.curvature.kfac_factors` does not).

L is the number of output positions per example, C the number of factor columns (K classes for
the exact quantities, 1 sample for the Monte-Carlo ones). Quantities whose L·C batch passes
exceed :data:`MAX_COLUMNS` are skipped and say so. The batch sizes are the suite's, smaller for
the models whose per-example routes would not fit (``CurvatureCase.batch``).

    python -m benchmarks.curvature [--quick] [--models tiny_mlp cnn ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import reference

from .. import curvature, nn
from .._files import atomic_write
from ..grad import hvp, value_and_grad
from .models import LOSS, Case, build_cases
from .timing import Runner, call_runner, measure_interleaved

__all__ = [
    "CURVATURE_MODELS",
    "KFAC_JAX_MODES",
    "MAX_COLUMNS",
    "MEMORY_BUDGET",
    "curvature_cases",
    "curvature_markdown",
    "kfac_jax_agreement",
    "kron_misfit",
    "main",
    "measure_model",
    "quantities",
]

MEMORY_BUDGET = 2**28
"""The most numbers (N·L·C·P) the generic per-example routes may hold at once (1 GiB in float32)."""

MAX_COLUMNS = 1024
"""The most factor columns (L·C) pushed through the batch's backward pass at once."""

CURVATURE_MODELS = ("tiny_mlp", "deep_mlp", "wide_mlp", "cnn", "lenet", "lstm", "transformer")
"""The models, in table order: the suite's, plus ``lenet`` (LeNet without batch norm, which
the Kronecker factors and the Hessian diagonal need)."""

_BATCH = {"wide_mlp": 32, "deep_mlp": 64, "cnn": 32, "lenet": 128, "transformer": 8}
"""Smaller batches than the speed suite's where the per-example routes would not fit."""


def _resized(case: Case, batch: int) -> Case:
    x_shape, y_shape = (batch, *case.x_shape[1:]), (batch, *case.y_shape[1:])
    scale = batch / case.x_shape[0]
    return dataclasses.replace(
        case,
        title=case.title.rsplit("B=", 1)[0] + f"B={batch}",
        x_shape=x_shape,
        y_shape=y_shape,
        forward_flops=round(case.forward_flops * scale),
        input_grad_flops=round(case.input_grad_flops * scale),
    )


def curvature_cases(tiny: bool = False) -> dict[str, Case]:
    """The models of the curvature table by name (``tiny``: the smoke test's sizes)."""
    cases = build_cases(tiny=tiny)
    cnn = cases["cnn"]
    lenet = dataclasses.replace(
        cnn,
        name="lenet",
        title=cnn.title.replace("LeNet + batch norm", "LeNet, no batch norm"),
        net=nn.LeNet(10, channels=(16, 32), hidden=64, batch_norm=False),
    )
    cases["lenet"] = lenet
    out = {}
    for name in CURVATURE_MODELS:
        case = cases[name]
        if not tiny and name in _BATCH:
            case = _resized(case, _BATCH[name])
        out[name] = case
    return out


def _positions(case: Case) -> int:
    """L, the output positions per example (the label's shape after the batch axis)."""
    return int(np.prod(case.y_shape[1:], dtype=np.int64))


def _weighted_layers(net: nn.Layer, params: Any, path: str = "") -> dict[str, str]:
    """``{path: kind}`` of the layers that have parameters, inside serial and residual."""
    if net.kind in ("serial", "residual"):
        out: dict[str, str] = {}
        for child in net.children:
            child_path = f"{path}/{child.name}" if path else child.name
            out |= _weighted_layers(child, params[child.name], child_path)
        return out
    return {path: net.kind} if jax.tree.leaves(params) else {}


def quantities(
    case: Case, params: Any, state: Any
) -> tuple[dict[str, Callable[..., Any]], dict[str, str]]:
    """``({name: f(params, x, y, key)}, {name: why it is skipped})`` for ``case``: every
    quantity that applies (module docstring), each a function to jit."""
    net, stateful = case.net, case.stateful
    n, l_pos, k = case.x_shape[0], _positions(case), case.num_classes
    p = sum(int(a.size) for a in jax.tree.leaves(params))
    fns: dict[str, Callable[..., Any]] = {}
    skipped: dict[str, str] = {}
    weighted = _weighted_layers(net, params)
    kinds = set(weighted.values())

    grad = value_and_grad(net, LOSS, has_state=stateful)
    if stateful:
        fns["gradient"] = lambda prm, x, y, key: grad(prm, state, x, y)
    else:
        fns["gradient"] = lambda prm, x, y, key: grad(prm, x, y)

    for label, samples in (("diag GGN, exact", None), ("diag GGN, MC-1", 1)):
        cols = k if samples is None else samples
        numbers = n * l_pos * cols * p
        if numbers > MEMORY_BUDGET:
            skipped[label] = f"N·L·C·P = {numbers:.2e} numbers > {MEMORY_BUDGET:.2e}"
            continue
        f = curvature.diag_ggn(net, LOSS, mc_samples=samples)
        fns[label] = lambda prm, x, y, key, f=f: f(prm, x, y, key=key, state=state)

    plain = not stateful
    if plain and kinds == {"dense"}:
        if l_pos * k <= MAX_COLUMNS:
            f = curvature.dense_diag_ggn(net, LOSS)
            fns["diag GGN, Dense route"] = lambda prm, x, y, key, f=f: f(prm, x, y)
        else:
            skipped["diag GGN, Dense route"] = f"L·C = {l_pos * k} > {MAX_COLUMNS}"
    try:  # batch norm, recurrent and attention layers are refused, naming the reason
        f = curvature.hessian_diag(net, LOSS)
        jax.eval_shape(f, params, *case.batch(jax.random.key(0)))
    except (ValueError, TypeError) as err:
        skipped["Hessian diagonal"] = str(err).split(";")[0]
    else:
        fns["Hessian diagonal"] = lambda prm, x, y, key, f=f: f(prm, x, y)

    ggn_v = curvature.ggn_vector_product(net, LOSS)
    hess_v = hvp(net, LOSS, has_state=stateful)
    v = jax.tree.map(lambda a: jnp.ones_like(a) * 0.01, params)
    if stateful:
        fns["GGN-vector product"] = lambda prm, x, y, key: ggn_v(prm, x, y, v, state=state)
        fns["Hessian-vector product"] = lambda prm, x, y, key: hess_v(prm, state, x, y, v)
    else:
        fns["GGN-vector product"] = lambda prm, x, y, key: ggn_v(prm, x, y, v)
        fns["Hessian-vector product"] = lambda prm, x, y, key: hess_v(prm, x, y, v)

    for label, kind, cols in (("KFLR factors", "kflr", k), ("KFAC factors, MC-1", "kfac", 1)):
        if not plain:
            skipped[label] = "batch statistics couple the examples"
            continue
        if l_pos * cols > MAX_COLUMNS:
            skipped[label] = f"L·C = {l_pos * cols} > {MAX_COLUMNS}"
            continue
        try:
            f = curvature.kfac_factors(net, LOSS, kind=kind)
            shapes = jax.eval_shape(f, params, *case.batch(jax.random.key(0)), jax.random.key(0))
            covered = sorted(shapes)
            if len(covered) < len(weighted):
                others = sorted(set(weighted) - set(covered))
                skipped[f"{label}, layers without factors"] = ", ".join(others)
        except ValueError as err:
            skipped[label] = str(err).split(":", 1)[-1].strip()
            continue
        fns[label] = lambda prm, x, y, key, f=f: f(prm, x, y, key)

    if "KFAC factors, MC-1" in fns:
        opt = optax.chain(curvature.kfac(net, LOSS, inverse_every=1), optax.sgd(0.01))
        opt_state = opt.init(params)

        def kfac_step(prm, x, y, key):
            _, g = grad(prm, x, y)
            with jax.numpy_dtype_promotion("standard"):  # optax mixes Python and int32 counts
                updates, new = opt.update(g, opt_state, prm, x=x, y=y, key=key)
                return optax.apply_updates(prm, updates), new

        fns["K-FAC step (inverses every step)"] = kfac_step
    adam = optax.adam(1e-3)
    adam_state = adam.init(params)

    def adam_step(prm, x, y, key):
        _, g = fns["gradient"](prm, x, y, key)
        with jax.numpy_dtype_promotion("standard"):
            updates, new = adam.update(g, adam_state, prm)
            return optax.apply_updates(prm, updates), new

    fns["Adam step"] = adam_step

    for label, mode in KFAC_JAX_MODES.items():
        if not plain or not kinds <= {"dense", "conv2d"}:
            skipped[label] = "layers other than Dense and Conv2D" if plain else "batch norm"
            continue
        kfac_jax = _kfac_jax()
        if kfac_jax is None:
            skipped[label] = "kfac-jax is not installed (pip install 'manual_bp[kfac]')"
            continue
        fns[label] = _kfac_jax_update(kfac_jax, case, params, mode)
    return fns, skipped


KFAC_JAX_MODES = {
    "kfac-jax KFLR factors": "ggn_exact",
    "kfac-jax KFAC factors, MC-1": "fisher_gradients",
}
"""kfac-jax's estimation modes timed against ``kfac_factors``' kinds (``kflr``, ``kfac``)."""


def _kfac_jax() -> Any:
    """kfac-jax, or None. Its release 0.0.8 reads ``Primitive.get_bind_params`` as a pair
    (sub-functions, parameters); JAX 0.10 returns the parameters alone, so its one function that
    reads it is given a version that takes either."""
    try:
        import jax.extend as jex
        import kfac_jax
        from kfac_jax._src import tag_graph_matcher
    except ImportError:
        return None

    def eval_jaxpr_eqn(eqn: Any, in_values: list[Any]) -> list[Any]:
        bind = eqn.primitive.get_bind_params(eqn.params)
        subfuns, params = bind if isinstance(bind, tuple) else ((), bind)
        with jex.source_info_util.user_context(eqn.source_info.traceback):
            out = eqn.primitive.bind(*subfuns, *in_values, **params)
        return out if isinstance(out, list) else [out]

    tag_graph_matcher.eval_jaxpr_eqn = eval_jaxpr_eqn
    return kfac_jax


def _kfac_jax_estimator(kfac_jax: Any, case: Case, mode: str) -> Any:
    def loss(prm, batch):
        x, y = batch
        logits = reference.forward(case.net, prm, x)
        kfac_jax.register_softmax_cross_entropy_loss(logits, y)
        return reference.FORWARD[LOSS](logits, y)

    return kfac_jax.BlockDiagonalCurvature(func=loss, default_estimation_mode=mode)


def _kfac_jax_update(kfac_jax: Any, case: Case, params: Any, mode: str) -> Callable[..., Any]:
    """One factor estimate by kfac-jax from a fresh state (no moving average, no inverse)."""
    estimator = _kfac_jax_estimator(kfac_jax, case, mode)
    x, y = case.batch(jax.random.key(0))
    state0 = estimator.init(jax.random.key(0), (params, (x, y)), None, None)
    n = case.x_shape[0]

    def f(prm, x, y, key):
        return estimator.update_curvature_matrix_estimate(
            state0, 0.0, 1.0, 0.0, n, key, (prm, (x, y))
        )

    return f


def kfac_jax_agreement(case: Case, params: Any, x: Any, y: Any) -> float | None:
    """The largest relative difference, over the layers, between kron(A, G) of kfac-jax's
    ``ggn_exact`` factors and of ``kfac_factors(kind="kflr")``, each layer's pair fitted with
    one scale; None without kfac-jax."""
    kfac_jax = _kfac_jax()
    if kfac_jax is None:
        return None
    estimator = _kfac_jax_estimator(kfac_jax, case, "ggn_exact")
    key = jax.random.key(0)
    state = estimator.init(key, (params, (x, y)), None, None)
    state = estimator.update_curvature_matrix_estimate(
        state, 0.0, 1.0, 0.0, x.shape[0], key, (params, (x, y))
    )
    theirs = [[np.asarray(f.value) for f in b.factors] for b in state.blocks_states]
    ours = curvature.kfac_factors(case.net, LOSS, kind="kflr")(params, x, y)
    worst = 0.0
    # kfac-jax's blocks follow the parameter tree's leaves, whose dict keys JAX sorts
    # ("dense_10" before "dense_2"), not the forward order.
    if len(theirs) != len(ours):
        raise ValueError(f"kfac-jax found {len(theirs)} layers, kfac_factors {len(ours)}")
    for name, (a, g) in zip(sorted(ours), theirs, strict=True):
        k = ours[name]
        if (a.shape, g.shape) != (k.a.shape, k.g.shape):
            raise ValueError(
                f"{name}: kfac-jax's factors are {a.shape} and {g.shape}, "
                f"kfac_factors' {k.a.shape} and {k.g.shape}"
            )
        worst = max(worst, kron_misfit(a, g, np.asarray(k.a), np.asarray(k.g)))
    return worst


def kron_misfit(a: np.ndarray, g: np.ndarray, b: np.ndarray, h: np.ndarray) -> float:
    r"""min over s of ‖A ⊗ G − s B ⊗ H‖ / ‖A ⊗ G‖, without forming a Kronecker product (a
    257² by 256² one is 34 GB).

    With â = A/‖A‖ etc. and cosines c_A = ⟨â, b̂⟩, c_G = ⟨ĝ, ĥ⟩, the cosine of the products is
    c = c_A c_G and the misfit is √(1 − c²). It is evaluated as √((d_A + d_G − d_A d_G)(1 + c))
    with d = 1 − c = ‖â − b̂‖²/2, which keeps misfits near 1e-8 from cancelling away."""

    def unit(m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, np.float64)
        return m / np.linalg.norm(m)

    def distance(x: np.ndarray, z: np.ndarray) -> tuple[float, float]:
        x, z = unit(x), unit(z)
        return float(np.sum((x - z) ** 2) / 2), float(np.vdot(x, z))

    d_a, c_a = distance(a, b)
    d_g, c_g = distance(g, h)
    return float(np.sqrt(max(d_a + d_g - d_a * d_g, 0.0) * (1 + c_a * c_g)))


def measure_model(case: Case, repeats: int, block_s: float) -> dict[str, Any]:
    """Every applicable quantity of one model: median seconds, its ratio to the gradient,
    compile seconds; and the quantities skipped, with why."""
    key = jax.random.key(0)
    k_init, k_data, k_mc = jax.random.split(key, 3)
    params = case.net.init(k_init, case.x_shape)
    state = case.net.init_state(k_init, case.x_shape) if case.stateful else None
    x, y = case.batch(k_data)
    fns, skipped = quantities(case, params, state)
    runners: dict[str, Runner] = {}
    compile_s: dict[str, float] = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(params, x, y, k_mc).compile()
        compile_s[name] = time.perf_counter() - t0
        runners[name] = call_runner(compiled, params, x, y, k_mc)
    times = measure_interleaved(runners, repeats, block_s)
    base = times["gradient"]["median_s"]
    rows = {
        name: {
            "median_s": s["median_s"],
            "q1_s": s["q1_s"],
            "q3_s": s["q3_s"],
            "over_gradient": s["median_s"] / base,
            "compile_s": compile_s[name],
        }
        for name, s in times.items()
    }
    agreement = None
    if any(name in fns for name in KFAC_JAX_MODES):
        agreement = kfac_jax_agreement(case, params, x, y)
    return {
        "title": case.title,
        "kfac_jax_kflr_relative_difference": agreement,
        "positions": _positions(case),
        "classes": case.num_classes,
        "parameters": sum(int(a.size) for a in jax.tree.leaves(params)),
        "quantities": rows,
        "skipped": skipped,
    }


def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s >= 1e-3 else f"{s * 1e6:.3g} µs"


def curvature_markdown(results: dict[str, Any]) -> str:
    """The cost table: one row per quantity, one column per model, each cell the median as a
    multiple of that model's gradient (— where the quantity does not apply)."""
    models = results["models"]
    names: list[str] = []
    for r in models.values():
        names += [q for q in r["quantities"] if q not in names]
    head = "| quantity | " + " | ".join(models) + " |"
    lines = [head, "|---|" + "---|" * len(models)]
    for q in names:
        cells = []
        for r in models.values():
            row = r["quantities"].get(q)
            if q == "gradient" and row:
                cells.append(_fmt_s(row["median_s"]))
            elif row:
                cells.append(f"{row['over_gradient']:.2f}×")
            else:
                cells.append("—")
        lines.append(f"| {q} | " + " | ".join(cells) + " |")
    lines.append("")
    for m, r in models.items():
        line = f"* **{m}**: {r['title']}, {r['parameters']:,} parameters"
        if r.get("kfac_jax_kflr_relative_difference") is not None:
            diff = r["kfac_jax_kflr_relative_difference"]
            line += f"; kfac-jax's exact factors against KFLR: relative difference {diff:.1e}"
        lines.append(line + ".")
    for m, r in models.items():
        for q, why in r["skipped"].items():
            if q.endswith("layers without factors"):
                lines.append(f"* {m}, {q}: {why}.")
            else:
                lines.append(f"* {m}, {q}: skipped ({why}).")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None, out: Path | None = None) -> int:
    """``python -m benchmarks.curvature``: measure, print the table, write ``curvature.json``
    and ``curvature.md`` under ``--out``."""
    import json

    parser = argparse.ArgumentParser(description="The cost of curvature quantities.")
    parser.add_argument("--models", nargs="+", default=list(CURVATURE_MODELS))
    parser.add_argument("--quick", action="store_true", help="3 repeats of 0.03 s blocks")
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes, 1 repeat")
    parser.add_argument("--out", type=Path, default=out)
    args = parser.parse_args(argv)
    cases = curvature_cases(tiny=args.tiny)
    unknown = [m for m in args.models if m not in cases]
    if unknown:
        raise ValueError(
            f"curvature benchmark: unknown model(s) {unknown}; choose from {list(cases)}"
        )
    repeats, block_s = (1, 0.002) if args.tiny else (3, 0.03) if args.quick else (9, 0.1)
    from .runner import machine_info

    results: dict[str, Any] = {"machine": machine_info(), "models": {}}
    for name in args.models:
        t0 = time.perf_counter()
        print(f"{name}: {cases[name].title} ...", flush=True)
        results["models"][name] = measure_model(cases[name], repeats, block_s)
        print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    text = curvature_markdown(results)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        dump = json.dumps(results, indent=1) + "\n"
        atomic_write(args.out / "curvature.json", lambda f: f.write(dump))
        atomic_write(args.out / "curvature.md", lambda f: f.write(text))
        print(f"wrote {args.out / 'curvature.json'} and {args.out / 'curvature.md'}")
    return 0

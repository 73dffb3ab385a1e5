"""How often the checks are wrong: false alarms on correct code, and the power to catch bugs.

A checker that calls correct code wrong gets switched off; one that passes a wrong rule is
worse than none. Both rates are measured here on the audit table (:mod:`~manual_bp.verify.table`)
and the bundled networks (:data:`~manual_bp.verify.audit.NETWORKS`):

* **false alarms** — every row × dtype × input domain (|x| ≈ 1e3 included, in bfloat16 too)
  × ``seeds`` fresh draws of inputs and cotangents through :func:`~manual_bp.verify.check_rule`,
  and every bundled network × dtype × seed through :func:`~manual_bp.verify.check_network`, all
  on correct code: every failure is an alarm. The goal is none.
* **detection power** — the same rule cases with a bug planted in one primal's cotangent, of
  relative size ``s`` ∈ {1e-1, 1e-2, 1e-3, 1e-4} and of four kinds, with M = max|cotangent|:
  ``scale`` (the whole cotangent × (1 + s)), ``element`` (one element + s·M), ``row`` (one
  row along the primal's first axis + s·M in proportion to that row) and ``term`` (a smooth
  extra term s·M·n, n a random field with max|n| = 1). A bug is caught when the comparison
  every check runs fails: against ``jax.vjp`` of the rule's own forward and of the reference,
  with the rule tolerance of the dtype on the scale of the computation
  (:func:`~manual_bp.verify.tolerances.compare`, the floors of
  :func:`~manual_bp.verify.rule.comparison_floors`). Bugs are planted on ordinary inputs:
  where a rule saturates (tanh at |x| ≈ 1e3, a softmax of extreme logits) its cotangent is
  negligible against the computation's scale, and so is any relative bug in it. Primals whose
  true cotangent is identically zero (attention's key bias) have no relative size to plant
  and are left out.

:func:`survey` runs both and :func:`to_markdown` writes the table of ``docs/reliability.md``;
``manual-bp verify --survey`` is the command.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import require_positive_int
from ..rules import RULES
from .audit import NETWORKS, check_one_network
from .oracles import evaluator, reference_forward
from .rule import check_rule, comparison_floors
from .table import ROWS, Row
from .tolerances import compare, f64, tolerance_for

__all__ = ["KINDS", "SIZES", "detection_power", "false_alarms", "survey", "to_markdown"]

SIZES = (1e-1, 1e-2, 1e-3, 1e-4)
"""The relative sizes of the planted bugs."""

KINDS = ("scale", "element", "row", "term")
"""The kinds of planted bug (see the module docstring)."""

Progress = Callable[[str], None] | None


def _rng(*key: Any) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _cases(rows: Sequence[Row], dtypes: Sequence[str] | None, seeds: int, domains=None):
    """(row, dtype, shape, domain, seed) for every case the survey draws (in ``domains`` only,
    if given)."""
    for row in rows:
        for dtype in row.dtypes:
            name = np.dtype(dtype).name
            if dtypes and name not in dtypes:
                continue
            for shape in row.shapes:
                for domain in row.domains():
                    if domains is not None and domain not in domains:
                        continue
                    for seed in range(seeds):
                        yield row, dtype, shape, domain, seed


def _check_arguments(where: str, seeds: Any, dtypes: Any, progress: Any) -> None:
    require_positive_int(where, "seeds", seeds)
    known = ("float64", "float32", "bfloat16")
    if isinstance(dtypes, str) or not (dtypes is None or all(d in known for d in dtypes)):
        raise ValueError(f"{where}: dtypes must be a sequence of {known} (or None), got {dtypes!r}")
    if progress is not None and not callable(progress):
        raise TypeError(
            f"{where}: progress must be callable or None, got {type(progress).__name__}"
        )


def false_alarms(
    seeds: int = 50,
    dtypes: Sequence[str] | None = None,
    rows: Sequence[Row] = ROWS,
    networks: bool = True,
    progress: Progress = None,
) -> dict[str, Any]:
    """Run every check on correct code over ``seeds`` draws; count the checks that fail.

    Returns ``{"checks": n, "alarms": [description, ...], "by_dtype": {dtype: [checks,
    alarms]}}``. Rule cases check against ``jax.vjp`` of the rule's forward, of the reference,
    and (float64, ordinary inputs) finite differences, as ``manual-bp verify`` does.
    """
    _check_arguments("false_alarms", seeds, dtypes, progress)
    checks, alarms, by_dtype = 0, [], {}
    with jax.enable_x64(True):
        for row, dtype, shape, domain, seed in _cases(rows, dtypes, seeds):
            name = np.dtype(dtype).name
            primals = row.make(
                _rng("survey", row.id, shape, name, domain, seed), shape, dtype, domain
            )
            report = check_rule(
                RULES[row.rule],
                *primals,
                num_cotangents=2,
                seed=seed,
                finite_differences=name == "float64" and domain == "normal",
                **row.static,
            )
            tally = by_dtype.setdefault(name, [0, 0])
            checks, tally[0] = checks + 1, tally[0] + 1
            if not report.ok:
                tally[1] += 1
                alarms.append(f"{row.id} {name} {shape} {domain} seed {seed}: {report.diagnoses}")
            if progress and seed == seeds - 1:
                progress(f"{row.id} {name} {shape} {domain}: {len(alarms)} alarm(s) so far")
        if networks:
            for net_name in NETWORKS:
                for name in ("float64", "float32"):
                    if dtypes and name not in dtypes:
                        continue
                    for seed in range(seeds):
                        result = check_one_network(net_name, name, seed)
                        tally = by_dtype.setdefault(name, [0, 0])
                        checks, tally[0] = checks + 1, tally[0] + 1
                        if not result["ok"]:
                            tally[1] += 1
                            alarms.append(f"{net_name} {name} seed {seed}: {result['diagnoses']}")
                    if progress:
                        progress(f"{net_name} {name}: {len(alarms)} alarm(s) so far")
    return {"checks": checks, "alarms": alarms, "by_dtype": by_dtype}


def _plant(a: np.ndarray, kind: str, size: float, rng: np.random.Generator) -> np.ndarray:
    """``a`` (C stacked cotangents of one primal) with a bug of ``kind`` and relative ``size``."""
    top = np.max(np.abs(a.reshape(a.shape[0], -1)), axis=1).reshape((-1,) + (1,) * (a.ndim - 1))
    if kind == "scale":
        return a * (1 + size)
    if kind == "term":
        n = rng.standard_normal(a.shape[1:])
        return a + size * top * n / np.max(np.abs(n))
    b = a.copy()
    if kind == "element":
        j = tuple(int(rng.integers(0, d)) for d in a.shape[1:])
        b[(slice(None), *j)] += size * top[(slice(None), *(0,) * len(j))]
        return b
    r = int(rng.integers(0, a.shape[1])) if a.ndim > 1 else 0
    row = b[:, r] if a.ndim > 1 else b
    shape = (-1,) + (1,) * (row.ndim - 1)
    row_top = np.max(np.abs(row.reshape(row.shape[0], -1)), axis=1).reshape(shape)
    direction = np.where(row_top > 0, row / np.where(row_top > 0, row_top, 1), 1.0)
    bumped = row + size * top.reshape(shape) * direction
    if a.ndim > 1:
        b[:, r] = bumped
        return b
    return bumped


def detection_power(
    seeds: int = 3,
    dtypes: Sequence[str] | None = None,
    rows: Sequence[Row] = ROWS,
    sizes: Sequence[float] = SIZES,
    kinds: Sequence[str] = KINDS,
    progress: Progress = None,
) -> dict[str, dict[str, list[int]]]:
    """Plant bugs of each kind and size in every rule case; count the ones caught.

    Returns ``{dtype: {f"{kind} {size:g}": [caught, planted]}}``.
    """
    _check_arguments("detection_power", seeds, dtypes, progress)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"detection_power: unknown kinds {unknown}; choose from {KINDS}")
    power: dict[str, dict[str, list[int]]] = {}
    with jax.enable_x64(True):
        for row, dtype, shape, domain, seed in _cases(rows, dtypes, seeds, ("normal",)):
            name = np.dtype(dtype).name
            rng = _rng("plant", row.id, shape, name, domain, seed)
            primals = row.make(rng, shape, dtype, domain)
            rule = RULES[row.rule]
            out = jax.eval_shape(lambda *p, rule=rule, row=row: rule(*p, **row.static), *primals)
            cts = jnp.asarray(rng.standard_normal((2, *out.shape)) + 0.1, out.dtype)
            key = tuple(sorted(row.static.items()))
            ref_fn = reference_forward(rule)
            _, ours, theirs, _, ref_cts, _ = evaluator(rule, key, row.diff, ref_fn)(primals, cts)
            tol = tolerance_for(dtype)
            floors = comparison_floors(
                rule, key, row.diff, ref_fn, primals, cts, theirs, ref_cts, tol
            )
            oracles = [theirs] if ref_cts is None else [theirs, ref_cts]
            table = power.setdefault(name, {})
            for k, i in enumerate(row.diff):
                a = f64(ours[i])
                if i in row.zero or not np.any(a):
                    continue
                expected = [f64(o[k]) for o in oracles]
                for kind in kinds:
                    for size in sizes:
                        planted = _plant(a, kind, size, rng)
                        caught = any(
                            not compare(planted, e, dtype, tol, floors[k], "", "").ok
                            for e in expected
                        )
                        tally = table.setdefault(f"{kind} {size:g}", [0, 0])
                        tally[0] += int(caught)
                        tally[1] += 1
            if progress and seed == seeds - 1:
                progress(f"{row.id} {name} {shape} {domain}")
    return power


def survey(
    seeds: int = 50,
    detection_seeds: int = 3,
    dtypes: Sequence[str] | None = None,
    rows: Sequence[Row] = ROWS,
    networks: bool = True,
    progress: Progress = None,
) -> dict[str, Any]:
    """:func:`false_alarms` over ``seeds`` draws and :func:`detection_power` over
    ``detection_seeds``, with the time they took."""
    _check_arguments("survey", seeds, dtypes, progress)
    require_positive_int("survey", "detection_seeds", detection_seeds)
    start = time.perf_counter()
    alarms = false_alarms(seeds, dtypes, rows, networks, progress)
    power = detection_power(detection_seeds, dtypes, rows, progress=progress)
    return {
        "seeds": seeds,
        "detection_seeds": detection_seeds,
        "false_alarms": alarms,
        "detection": power,
        "seconds": time.perf_counter() - start,
    }


def to_markdown(result: dict[str, Any]) -> str:
    """The survey as two Markdown tables: false alarms per thousand checks by dtype, and the
    fraction of planted bugs caught by kind, size and dtype."""
    keys = ("seeds", "detection_seeds", "false_alarms", "detection")
    if not isinstance(result, dict) or not all(k in result for k in keys):
        raise TypeError(
            f"to_markdown: expected what survey() returns, a dict with keys {keys}, "
            f"got {type(result).__name__}"
        )
    fa = result["false_alarms"]
    lines = [
        f"False alarms ({result['seeds']} seeds per case):",
        "",
        "| dtype | checks | alarms | per 1000 |",
        "|---|---|---|---|",
    ]
    for dtype, (n, bad) in sorted(fa["by_dtype"].items()):
        lines.append(f"| {dtype} | {n} | {bad} | {1000 * bad / max(n, 1):.2f} |")
    power = result["detection"]
    dtypes = sorted(power)
    lines += [
        "",
        f"Planted bugs caught ({result['detection_seeds']} seeds per case):",
        "",
        "| bug | " + " | ".join(dtypes) + " |",
        "|---|" + "---|" * len(dtypes),
    ]
    for kind in KINDS:
        for size in SIZES:
            label = f"{kind} {size:g}"
            cells = []
            for d in dtypes:
                caught, planted = power[d].get(label, [0, 0])
                cells.append(f"{100 * caught / planted:.1f}% of {planted}" if planted else "–")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

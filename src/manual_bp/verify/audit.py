"""The full audit behind ``manual-bp verify``: every registered rule in every dtype of the audit
table, and the bundled networks, checked with :mod:`manual_bp.verify`."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import nn
from .._checks import require_int
from .._files import atomic_write
from ..rules import RULES, Rule
from .network import check_network
from .rule import RuleReport, check_rule
from .table import ROWS, Row

__all__ = [
    "NETWORKS",
    "audit",
    "audit_module",
    "audit_networks",
    "check_case",
    "check_one_network",
    "load_module",
    "load_rules",
    "row_cases",
    "rules_of",
    "write_json",
]


def _mlp(act: Callable[[], nn.Layer], depth: int = 2) -> nn.Layer:
    layers: list[nn.Layer] = []
    for _ in range(depth):
        layers += [nn.Dense(6), act()]
    return nn.serial(*layers, nn.Dense(3))


NETWORKS: dict[str, tuple[Callable[[], nn.Layer], str]] = {
    "mlp-sigmoid-deep": (lambda: _mlp(nn.Sigmoid, 4), "mse"),
    "mlp-tanh": (lambda: _mlp(nn.Tanh), "softmax_cross_entropy"),
    "mlp-relu": (lambda: _mlp(nn.Relu), "softmax_cross_entropy"),
    "mlp-gelu": (lambda: _mlp(nn.Gelu), "sigmoid_binary_cross_entropy"),
    "nested": (
        lambda: nn.serial(
            nn.Dense(6), nn.Silu(), nn.serial(nn.Dense(5), nn.Elu(), name="block"), nn.Dense(3)
        ),
        "softmax_cross_entropy",
    ),
    "batch-norm-dropout": (
        lambda: nn.serial(
            nn.Dense(6), nn.BatchNorm(), nn.Tanh(), nn.Dropout(0.25), nn.Dense(5), nn.Dense(3)
        ),
        "softmax_cross_entropy",
    ),
}
"""Bundled networks audited against the reference: (constructor, loss). Networks with state or
dropout run in training mode, with their initial state and a fixed key."""


def _seed(*key: Any) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _targets(loss: str, rng: np.random.Generator, n: int, dtype: Any) -> Any:
    if loss == "softmax_cross_entropy":
        return jnp.asarray(rng.integers(0, 3, n), jnp.int32)
    if loss == "sigmoid_binary_cross_entropy":
        return jnp.asarray(rng.uniform(size=(n, 3)), dtype)
    return jnp.asarray(rng.standard_normal((n, 3)), dtype)


def audit(
    rules: Sequence[str] | None = None,
    dtypes: Sequence[str] | None = None,
    networks: bool | Sequence[str] = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
    shapes: int | None = 1,
) -> list[dict[str, Any]]:
    """Check rules (every table row and input domain, the first ``shapes`` shapes of each row;
    ``None`` for all) and networks; one result per (row, dtype) and per (network, dtype).
    ``networks``: ``True`` for every bundled network unless ``rules`` are named, ``False``
    for none, or the names of bundled networks to check. Runs with float64 enabled. The test
    suite covers every shape."""
    if isinstance(rules, str):
        raise TypeError(f"verify: rules must be a sequence of rule names, got {rules!r}")
    unknown = sorted(set(rules or ()) - set(RULES))
    if unknown:
        raise ValueError(f"verify: unknown rule(s) {unknown}; registered: {sorted(RULES)}")
    if not isinstance(networks, bool) and (
        isinstance(networks, str)
        or not isinstance(networks, Sequence)
        or not set(networks) <= set(NETWORKS)
    ):
        raise TypeError(
            f"verify: networks must be a bool or a sequence of bundled network names "
            f"{sorted(NETWORKS)}, got {networks!r}"
        )
    results = _audit_rows(ROWS, RULES, rules, dtypes, progress, shapes)
    if isinstance(networks, bool):
        names = list(NETWORKS) if networks and not rules else []
    else:
        names = list(networks)
    net_dtypes = [d for d in dtypes or ("float64", "float32") if d in ("float64", "float32")]
    if names and net_dtypes:
        results += audit_networks(net_dtypes, progress, names)
    return results


def check_case(row: Row, rule: Rule, shape: Any, dtype: Any, domain: str) -> RuleReport:
    """One case of an audit table as ``manual-bp verify`` checks it: ``rule`` at the primals
    ``row.make`` draws for (``shape``, ``dtype``, ``domain``) from a seed of the case, with two
    random cotangents and, in float64's normal domain, float64 finite differences."""
    if not isinstance(row, Row):
        raise TypeError(f"check_case: row must be a manual_bp.verify.Row, got {type(row).__name__}")
    if not isinstance(rule, Rule):
        raise TypeError(f"check_case: rule must be a manual_bp.Rule, got {type(rule).__name__}")
    if domain not in row.domains():
        raise ValueError(f"check_case: domain must be one of {row.domains()}, got {domain!r}")
    name = np.dtype(dtype).name
    with jax.enable_x64(True):
        primals = row.make(_seed(row.id, shape, name, domain), shape, dtype, domain)
        return check_rule(
            rule,
            *primals,
            num_cotangents=2,
            finite_differences=name == "float64" and domain == "normal",
            **row.static,
        )


def row_cases(row: Row, shapes: int | None = None) -> list[tuple[Any, Any, str]]:
    """Every (dtype, shape, domain) of ``row`` that the audit checks (the first ``shapes``
    shapes; ``None`` for all); ``extreme`` inputs are not drawn in bfloat16."""
    if not isinstance(row, Row):
        raise TypeError(f"row_cases: row must be a manual_bp.verify.Row, got {type(row).__name__}")
    return [
        (dtype, shape, domain)
        for dtype in row.dtypes
        for shape in row.shapes[:shapes]
        for domain in row.domains()
        if not (domain == "extreme" and np.dtype(dtype).name == "bfloat16")
    ]


def _audit_rows(rows, lookup, rules, dtypes, progress, shapes) -> list[dict[str, Any]]:
    """One result per (row, dtype) of ``rows``, each rule looked up in ``lookup`` by name."""
    known = sorted({np.dtype(d).name for row in rows for d in row.dtypes})
    if isinstance(dtypes, str):
        raise TypeError(
            f"verify: dtypes must be a sequence of names such as {known}, got {dtypes!r}"
        )
    bad = sorted(str(d) for d in (dtypes or ()) if d not in known)
    if bad:
        raise ValueError(f"verify: unknown dtype(s) {bad}; the audit table has {known}")
    if shapes is not None and (
        isinstance(shapes, bool) or not isinstance(shapes, int) or shapes < 1
    ):
        raise ValueError(f"verify: shapes must be a positive int or None (all), got {shapes!r}")
    if progress is not None and not callable(progress):
        raise TypeError(f"verify: progress must be callable or None, got {type(progress).__name__}")
    results = []
    for row in rows:
        if rules and row.rule not in rules:
            continue
        for dtype in row.dtypes:
            name = np.dtype(dtype).name
            if dtypes and name not in dtypes:
                continue
            start = time.perf_counter()
            worst = {"max_abs": 0.0, "max_rel": 0.0, "max_ulp": 0.0}
            problems: list[str] = []
            ok, checks = True, 0
            for _, shape, domain in [c for c in row_cases(row, shapes) if c[0] == dtype]:
                report = check_case(row, lookup[row.rule], shape, dtype, domain)
                checks += 1
                ok = ok and report.ok
                for c in report.comparisons:
                    if c.against.startswith("finite"):
                        continue
                    for k in worst:
                        worst[k] = max(worst[k], getattr(c, k))
                problems += [f"{shape} {domain}: {d}" for d in report.diagnoses]
            result = {
                "kind": "rule",
                "name": row.id,
                "rule": row.rule,
                "dtype": name,
                "checks": checks,
                **worst,
                "ok": ok,
                "diagnoses": problems,
                "seconds": time.perf_counter() - start,
            }
            results.append(result)
            if progress:
                progress(result)
    return results


def audit_networks(
    dtypes: Sequence[str] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Check every bundled network of :data:`NETWORKS` (or those ``names``) with
    :func:`~manual_bp.verify.check_network` in float64 and float32 (or the ``dtypes`` named);
    one result per (network, dtype), as :func:`audit` reports them."""
    if isinstance(dtypes, str) or not (
        dtypes is None or all(d in ("float64", "float32") for d in dtypes)
    ):
        raise ValueError(
            f"audit_networks: dtypes must be a sequence of 'float64' and 'float32' (or None), "
            f"got {dtypes!r}"
        )
    if progress is not None and not callable(progress):
        raise TypeError(
            f"audit_networks: progress must be callable or None, got {type(progress).__name__}"
        )
    if isinstance(names, str) or not set(names or ()) <= set(NETWORKS):
        raise ValueError(
            f"audit_networks: names must be a sequence of {sorted(NETWORKS)}, got {names!r}"
        )
    results = []
    with jax.enable_x64(True):
        for net_name in names or NETWORKS:
            for name in ("float64", "float32"):
                if dtypes and name not in dtypes:
                    continue
                result = check_one_network(net_name, name)
                results.append(result)
                if progress:
                    progress(result)
    return results


def check_one_network(net_name: str, dtype: str, seed: int = 0) -> dict[str, Any]:
    """Check the bundled network ``net_name`` in ``dtype`` ("float64" or "float32") on inputs
    and targets drawn from ``seed``, in training mode with its initial state and a fixed key;
    one result as :func:`audit` reports it."""
    if net_name not in NETWORKS:
        raise ValueError(
            f"check_one_network: unknown network {net_name!r}; bundled: {sorted(NETWORKS)}"
        )
    if dtype not in ("float64", "float32"):
        raise ValueError(f"check_one_network: dtype must be 'float64' or 'float32', got {dtype!r}")
    require_int("check_one_network", "seed", seed, "an int >= 0", at_least=0)
    make, loss = NETWORKS[net_name]
    start = time.perf_counter()
    rng = _seed(net_name, dtype) if seed == 0 else _seed(net_name, dtype, seed)
    net = make()
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((8, 4)), dtype)
        params = net.init(jax.random.key(seed), x.shape, dtype)
        state = net.init_state(jax.random.key(seed), x.shape, dtype)
        report = check_network(
            net,
            loss,
            params,
            x,
            _targets(loss, rng, 8, dtype),
            state=state if nn.has_state(net) else None,
            key=jax.random.key(seed + 1),
        )
    worst = max(report.leaves, key=lambda c: c.max_rel)
    return {
        "kind": "network",
        "name": net_name,
        "rule": loss,
        "dtype": dtype,
        "checks": len(report.layers),
        "max_abs": max(c.max_abs for c in report.leaves),
        "max_rel": worst.max_rel,
        "worst": worst.primal,
        "max_ulp": float("nan"),
        "ok": report.ok,
        "diagnoses": [] if report.ok else [_summary(report), *report.diagnoses],
        "seconds": time.perf_counter() - start,
    }


def _summary(report: Any) -> str:
    if report.parameter:
        return f"first divergent gradient: layer {report.culprit!r}, parameter {report.parameter!r}"
    return (
        f"first divergent delta {report.first_divergent!r} "
        f"(from the backward of {report.culprit!r})"
    )


def load_rules(
    module: str | os.PathLike[str] | ModuleType,
) -> tuple[tuple[Row, ...], dict[str, Rule]]:
    """The audit table of a module of the user's own: its ``ROWS`` (a sequence of
    :class:`~manual_bp.verify.table.Row`) and its rules, ``RULES`` (a dict of
    :class:`~manual_bp.Rule` by name) where it has one, else the registered rules its rows
    name. ``module`` is a module, an importable name (``"mypkg.rules"``) or a ``.py`` file."""
    module = load_module(module)
    where = f"verify --module {module.__name__}"
    rows, rules = getattr(module, "ROWS", None), getattr(module, "RULES", None)
    if rows is None:
        raise ValueError(
            f"{where}: the module has no ROWS; a module audited by manual-bp verify exposes "
            "ROWS (a tuple of manual_bp.verify.Row) and optionally RULES (a dict of Rule by name)"
        )
    return tuple(rows), rules_of(rows, rules, where)


def rules_of(
    rows: Sequence[Row], rules: Mapping[str, Rule] | None = None, where: str = "rules_of"
) -> dict[str, Rule]:
    """The rule of every row by name: from ``rules`` (a dict of :class:`~manual_bp.Rule` by
    name) where given, else from the registry; errors name ``where``."""
    if (
        isinstance(rows, str | Row)
        or not isinstance(rows, Sequence)
        or not all(isinstance(r, Row) for r in rows)
    ):
        raise TypeError(f"{where}: ROWS must be a tuple of manual_bp.verify.Row, got {rows!r}")
    if rules is not None and (
        not isinstance(rules, Mapping) or not all(isinstance(r, Rule) for r in rules.values())
    ):
        raise TypeError(f"{where}: RULES must be a dict of manual_bp.Rule by name, got {rules!r}")
    table = (
        dict(rules)
        if rules is not None
        else {r.rule: RULES[r.rule] for r in rows if r.rule in RULES}
    )
    missing = sorted({r.rule for r in rows} - set(table))
    if missing:
        raise ValueError(
            f"{where}: rows name rule(s) {missing}, which are neither in RULES nor registered"
        )
    return table


def load_module(module: str | os.PathLike[str] | ModuleType) -> ModuleType:
    """``module`` itself, or the module of that importable name (``"mypkg.rules"``) or
    ``.py`` file, imported once; ValueError if it cannot be imported."""
    if isinstance(module, ModuleType):
        return module
    if not isinstance(module, str | os.PathLike):
        raise TypeError(
            f"load_module: module must be a module, a module name or a .py path, got "
            f"{type(module).__name__}"
        )
    name = os.fspath(module)
    where = f"verify --module {name}"
    path = Path(name)
    if path.suffix == ".py" and not path.is_file():
        raise ValueError(f"{where}: no such file {path}")
    try:
        if path.suffix == ".py":
            known = sys.modules.get(path.stem)
            if known is not None and Path(getattr(known, "__file__", "")) == path.resolve():
                return known
            spec = importlib.util.spec_from_file_location(path.stem, path.resolve())
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module  # dataclasses and pickling look the module up
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[path.stem]
                raise
            return module
        return importlib.import_module(name)
    except Exception as e:  # the user's module failed to import: say so in one line
        raise ValueError(f"{where}: cannot import it: {type(e).__name__}: {e}") from None


def audit_module(
    module: str | os.PathLike[str] | ModuleType,
    rules: Sequence[str] | None = None,
    dtypes: Sequence[str] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    shapes: int | None = 1,
) -> list[dict[str, Any]]:
    """:func:`audit` of a module's own table (:func:`load_rules`): every row × dtype × input
    domain, the first ``shapes`` shapes (``None``: all), with the same checks and the same
    results; a rule of the module's ``RULES`` without a row is a failing result."""
    rows, table = load_rules(module)
    if isinstance(rules, str):
        raise TypeError(f"verify: rules must be a sequence of rule names, got {rules!r}")
    unknown = sorted(set(rules or ()) - set(table))
    if unknown:
        raise ValueError(f"verify: unknown rule(s) {unknown}; the module has {sorted(table)}")
    with jax.enable_x64(True):
        results = _audit_rows(rows, table, rules, dtypes, progress, shapes)
    covered = {r.rule for r in rows}
    for name in sorted(set(table) - covered):
        if rules and name not in rules:
            continue
        result = {
            "kind": "rule",
            "name": name,
            "rule": name,
            "dtype": "",
            "checks": 0,
            "max_abs": float("nan"),
            "max_rel": float("nan"),
            "max_ulp": float("nan"),
            "ok": False,
            "diagnoses": [f"{name}: no row in ROWS, so the rule is never checked; add one"],
            "seconds": 0.0,
        }
        results.append(result)
        if progress:
            progress(result)
    return results


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write JSON atomically (:func:`manual_bp._files.atomic_write`): a temporary file in the
    same folder, fsynced, then renamed over ``path``."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"write_json: path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"write_json: {path} is a directory, expected a file path")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"write_json: folder {folder} does not exist")
    try:
        text = json.dumps(payload, indent=2, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"write_json: payload is not JSON-serializable: {e}") from None
    atomic_write(path, lambda f: f.write(text))

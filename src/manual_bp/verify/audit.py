"""The full audit behind ``manual-bp verify``: every registered rule in every dtype of the audit
table, and the bundled networks, checked with :mod:`manual_bp.verify`."""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import nn
from .._checks import require_int
from .._files import atomic_write
from ..rules import RULES
from .network import check_network
from .rule import check_rule
from .table import ROWS

__all__ = ["NETWORKS", "audit", "audit_networks", "check_one_network", "write_json"]


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
    networks: bool = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
    shapes: int | None = 1,
) -> list[dict[str, Any]]:
    """Check rules (every table row and input domain, the first ``shapes`` shapes of each row;
    ``None`` for all) and networks; one result per (row, dtype) and per (network, dtype).
    Runs with float64 enabled. The test suite covers every shape."""
    if isinstance(rules, str):
        raise TypeError(f"verify: rules must be a sequence of rule names, got {rules!r}")
    unknown = sorted(set(rules or ()) - set(RULES))
    if unknown:
        raise ValueError(f"verify: unknown rule(s) {unknown}; registered: {sorted(RULES)}")
    known = sorted({np.dtype(d).name for row in ROWS for d in row.dtypes})
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
    if not isinstance(networks, bool):
        raise TypeError(f"verify: networks must be a bool, got {networks!r}")
    if progress is not None and not callable(progress):
        raise TypeError(f"verify: progress must be callable or None, got {type(progress).__name__}")
    results = []
    with jax.enable_x64(True):
        for row in ROWS:
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
                for shape in row.shapes[:shapes]:
                    for domain in row.domains():
                        if domain == "extreme" and name == "bfloat16":
                            continue
                        primals = row.make(_seed(row.id, shape, name, domain), shape, dtype, domain)
                        report = check_rule(
                            RULES[row.rule],
                            *primals,
                            num_cotangents=2,
                            finite_differences=name == "float64" and domain == "normal",
                            **row.static,
                        )
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
    if networks and not rules:
        results += audit_networks(dtypes, progress)
    return results


def audit_networks(
    dtypes: Sequence[str] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Check every bundled network of :data:`NETWORKS` with
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
    results = []
    with jax.enable_x64(True):
        for net_name in NETWORKS:
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
        "diagnoses": []
        if report.ok
        else [
            f"first divergent delta {report.first_divergent!r} "
            f"(from the backward of {report.culprit!r})"
        ],
        "seconds": time.perf_counter() - start,
    }


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

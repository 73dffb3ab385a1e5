"""Where the test suite's time goes: a pytest plugin that sums, per test file, the wall time
of its tests and JAX's own compile events (tracing, lowering to MLIR, XLA's backend compile,
persistent-cache hits), from ``jax.monitoring``.

Run from the checkout's root, with or without pytest-xdist::

    PYTHONPATH=benchmarks .venv/bin/python -m pytest -n 2 -p compile_profile

At the end the terminal summary shows the files that took longest (wall time summed over
the workers' tests) with their compile counts and seconds. ``COMPILE_PROFILE_JSON=path``
also writes every test's numbers there. Tests that start subprocesses show their wall time
but not the subprocesses' compiles.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import jax
import pytest

from manual_bp.verify.audit import write_json

_DIR_ENV = "COMPILE_PROFILE_DIR"
EVENTS = {
    "trace": "/jax/core/compile/jaxpr_trace_duration",
    "lower": "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "compile": "/jax/core/compile/backend_compile_duration",
    "cache_hit": "/jax/compilation_cache/cache_retrieval_time_sec",
}
_seconds: collections.Counter = collections.Counter()
_counts: collections.Counter = collections.Counter()
_rows: list[dict] = []


def _listener(event: str, duration: float, **_: object) -> None:
    _seconds[event] += duration
    _counts[event] += 1


jax.monitoring.register_event_duration_secs_listener(_listener)


def pytest_configure(config: pytest.Config) -> None:
    # The controller (or a run without xdist) makes the folder; the workers inherit it.
    if "PYTEST_XDIST_WORKER" not in os.environ:
        os.environ[_DIR_ENV] = tempfile.mkdtemp(prefix="compile-profile-")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    seconds, counts = dict(_seconds), dict(_counts)
    start = time.perf_counter()
    yield
    row = {"id": item.nodeid, "wall": time.perf_counter() - start}
    for name, event in EVENTS.items():
        row[name + "_s"] = _seconds[event] - seconds.get(event, 0.0)
        row[name + "_n"] = _counts[event] - counts.get(event, 0)
    _rows.append(row)


def pytest_sessionfinish(session: pytest.Session) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    folder = os.environ.get(_DIR_ENV)
    if folder and _rows:
        write_json(Path(folder, f"{worker}.json"), _rows)


def summarize(rows: list[dict], top: int = 25) -> list[str]:
    """Lines of a table: the ``top`` files by summed wall time, with their compile events."""
    files: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in rows:
        into = files[row["id"].split("::")[0]]
        into["tests"] += 1
        for key, value in row.items():
            if key != "id":
                into[key] += value
    total = collections.Counter()
    for into in files.values():
        total.update(into)
    head = f"{'wall s':>8} {'tests':>6} {'compiles':>9} {'compile s':>10} {'lower s':>8} "
    head += f"{'trace s':>8} {'hits':>6}  file"
    lines = [head]
    ranked = sorted(files.items(), key=lambda kv: -kv[1]["wall"])[:top]
    for name, c in [*ranked, ("(all)", total)]:
        lines.append(
            f"{c['wall']:8.1f} {c['tests']:6d} {c['compile_n']:9d} {c['compile_s']:10.1f} "
            f"{c['lower_s']:8.1f} {c['trace_s']:8.1f} {c['cache_hit_n']:6d}  {name}"
        )
    return lines


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if "PYTEST_XDIST_WORKER" in os.environ:
        return
    folder = os.environ.get(_DIR_ENV)
    rows = list(_rows)
    if folder:
        for path in sorted(Path(folder).glob("*.json")):
            if path.stem != "main":
                rows += json.loads(path.read_text())
    if not rows:
        return
    terminalreporter.section("compile profile (seconds summed over the workers)")
    for line in summarize(rows):
        terminalreporter.write_line(line)
    out = os.environ.get("COMPILE_PROFILE_JSON")
    if out:
        write_json(out, rows)


def pytest_unconfigure(config: pytest.Config) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ and os.environ.get(_DIR_ENV):
        shutil.rmtree(os.environ.pop(_DIR_ENV), ignore_errors=True)

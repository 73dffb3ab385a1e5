"""Test-wide settings: float64 available, every implicit rank broadcast and dtype promotion raises.

A rank broadcast in a forward pass is a sum the backward must write by hand; making it an error
keeps every such sum explicit.

Compiled programs are kept in a persistent compilation cache in a fresh folder for this run,
shared by the pytest-xdist workers and by the subprocesses the tests start (through the
``JAX_*`` environment variables they inherit), and removed when the run ends. A hit loads the
executable XLA compiled for the same program in another process, so results are unchanged.
"""

import os
import shutil
import tempfile

# XLA's CPU compiles are most of the suite's time: its programs are small and run once or
# twice. At LLVM's optimization level 1 (the default is 2) with its expensive passes off, and
# with XLA's classic loop emitters instead of the fusion emitters, the rule table's programs
# compile about 1.6x faster than at level 1 alone (itself about 1.7x faster than 2). None
# of these allow reassociation or fast math. (Level 0 goes further but changes float32 tanh
# by more than rounding, so it is not used.) Set before JAX starts its backend; the
# subprocesses the tests start inherit them. A flag the caller already set keeps its value.
_FLAGS = {
    "--xla_backend_optimization_level": "1",
    "--xla_llvm_disable_expensive_passes": "true",
    "--xla_cpu_use_fusion_emitters": "false",
}
_given = os.environ.get("XLA_FLAGS", "")
_extra = [f"{name}={value}" for name, value in _FLAGS.items() if f"{name}=" not in _given]
os.environ["XLA_FLAGS"] = " ".join([_given, *_extra]).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
# The controller (or a run without xdist) makes the folder; the workers inherit it.
_OWN_CACHE = None if "PYTEST_XDIST_WORKER" in os.environ else tempfile.mkdtemp(prefix="jax-cache-")
if _OWN_CACHE:
    os.environ[CACHE_ENV] = _OWN_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
# An entry read while another process is still writing it (or left half-written by a process
# the tests kill) is a miss: JAX warns and compiles. The warning is no finding of the tests.
CACHE_WARNINGS = (
    "Error reading persistent compilation cache entry",
    "Error writing persistent compilation cache entry",
)
_filters = [f for f in os.environ.get("PYTHONWARNINGS", "").split(",") if f]
_filters += [f"ignore:{message}" for message in CACHE_WARNINGS]
os.environ["PYTHONWARNINGS"] = ",".join(dict.fromkeys(_filters))

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
if os.environ.get(CACHE_ENV):
    jax.config.update("jax_compilation_cache_dir", os.environ[CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def pytest_configure(config):
    for message in CACHE_WARNINGS:
        config.addinivalue_line("filterwarnings", f"ignore:{message}")


def pytest_collection_modifyitems(items):
    """Each rule-table row's tests (marked ``table_row``) one after another, at the place of
    the row's first test; everything else keeps its order. pytest-xdist hands out consecutive
    tests in chunks, so a row's tests mostly run on one worker, which compiles the row's one
    program (``rule_table.row_results``) once."""
    first: dict[str, int] = {}
    place = []
    for i, item in enumerate(items):
        mark = item.get_closest_marker("table_row")
        place.append(first.setdefault(mark.args[0], i) if mark else i)
    order = sorted(range(len(items)), key=lambda i: (place[i], i))
    items[:] = [items[i] for i in order]


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each test module, drop JAX's in-memory caches of traced and compiled programs, so
    a long-lived xdist worker holds one module's executables at a time (the persistent cache
    on disk keeps them for any later hit)."""
    yield
    jax.clear_caches()

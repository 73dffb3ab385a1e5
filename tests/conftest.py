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

import jax

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


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)

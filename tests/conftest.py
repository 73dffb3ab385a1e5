"""Test-wide settings: float64 available, every implicit rank broadcast and dtype promotion raises.

A rank broadcast in a forward pass is a sum the backward must write by hand; making it an error
keeps every such sum explicit.

Compiled programs are kept in a persistent compilation cache in a fresh folder for this run,
shared by the pytest-xdist workers and by the subprocesses the tests start (through the
``JAX_*`` environment variables they inherit), and removed when the run ends. A hit loads the
executable XLA compiled for the same program in another process, so results are unchanged.

A program whose floating-point values are all float64 compiles at LLVM's level 0 (see
``_level_0_for_float64``); one with any float32, bfloat16 or float16 value keeps level 1. A test
that asserts two compiled programs give the same bits is marked ``bitwise`` and compiles at
level 1 throughout.
"""

import os
import shutil
import tempfile

# XLA's CPU compiles are most of the suite's time: its programs are small and run once or
# twice. At LLVM's optimization level 1 (the default is 2) with its expensive passes off, and
# with XLA's classic loop emitters instead of the fusion emitters, the rule table's programs
# compile about 1.6x faster than at level 1 alone (itself about 1.7x faster than 2). None
# of these allow reassociation or fast math. (Level 0 goes further but changes float32 tanh
# by more than rounding, so it is used for float64 programs only: _level_0_for_float64.) Set
# before JAX starts its backend; the subprocesses the tests start inherit them. A flag the
# caller already set keeps its value.
_FLAGS = {
    "--xla_backend_optimization_level": "1",
    "--xla_llvm_disable_expensive_passes": "true",
    "--xla_cpu_use_fusion_emitters": "false",
}
_given = os.environ.get("XLA_FLAGS", "")
# Whether float64 programs compile at level 0 (_level_0_for_float64): decided where XLA_FLAGS
# is first completed (the controller, or a run without xdist), from the caller's own flags,
# and inherited by the workers, whose XLA_FLAGS already hold the level set here.
_LEVEL = "xla_backend_optimization_level"
_LEVEL_0_ENV = "MANUAL_BP_TESTS_FLOAT64_LEVEL_0"
os.environ.setdefault(_LEVEL_0_ENV, "0" if f"--{_LEVEL}=" in _given else "1")
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

import re  # noqa: E402

from jax._src import compiler as _compiler  # noqa: E402

# XLA's CPU backend at LLVM level 0 compiles a float64 program about twice as fast as at
# level 1, with results that differ from level 1's by rounding (measured on 4e5 points: at
# most 10 ulp in tanh, 2 in exp, sigmoid and softplus), far inside tolerance_for(float64).
# Its float32 tanh is worse near saturation (gelu's σ'' and the GRU's gradients at |x| ~ 1e3
# then fail their float32 tolerances), so a program with any narrower float type keeps
# level 1. The choice is made on the program's MLIR text just before JAX compiles it (a jit's
# own compiler_options and a level the caller set in XLA_FLAGS win); the persistent cache's
# key includes it. (jax._src.compiler is JAX's internal module: without the function the
# suite runs as before, at level 1.)
_NARROW_FLOAT = re.compile(r"(?:\d+x|<|\b)(?:bf16|f16|f32|tf32|f8E\w+)\b")
_level_0 = {"on": os.environ[_LEVEL_0_ENV] == "1"}
_compile_or_get_cached = getattr(_compiler, "compile_or_get_cached", None)


def _level_0_for_float64(backend, computation, devices, compile_options, *args, **kwargs):
    """JAX's ``compile_or_get_cached``, with LLVM level 0 for a program whose floating-point
    values are all float64."""
    overrides = compile_options.env_option_overrides
    if (
        _level_0["on"]
        and _LEVEL not in dict(overrides)
        and not _NARROW_FLOAT.search(str(computation))
    ):
        compile_options.env_option_overrides = [*overrides, (_LEVEL, 0)]
    return _compile_or_get_cached(backend, computation, devices, compile_options, *args, **kwargs)


if _compile_or_get_cached is not None:
    _compiler.compile_or_get_cached = _level_0_for_float64

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
    """The tests of each ``together`` group (a rule-table row, the tests sharing a built wheel)
    one after another, at the place of the group's first test; everything else keeps its
    order. pytest-xdist hands out consecutive tests in chunks, so a group's tests mostly run
    on one worker, which compiles the row's one program (``rule_table.row_results``) or
    builds the shared fixture once."""
    first: dict[str, int] = {}
    place = []
    for i, item in enumerate(items):
        mark = item.get_closest_marker("together")
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


@pytest.fixture(autouse=True)
def _bitwise_tests_at_level_1(request):
    """A test marked ``bitwise`` compiles at level 1 throughout (JAX's in-memory caches are
    cleared before and after, so no level-0 executable of its programs is reused): it asserts
    that two compiled programs give the same bits, which XLA keeps at level 1 for them."""
    if request.node.get_closest_marker("bitwise") is None:
        yield
        return
    jax.clear_caches()
    _level_0["on"], was = False, _level_0["on"]
    try:
        yield
    finally:
        _level_0["on"] = was
        jax.clear_caches()

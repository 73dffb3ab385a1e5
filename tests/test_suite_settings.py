"""The suite's own compile settings (tests/conftest.py): a program whose floating-point values
are all float64 compiles at LLVM level 0, one with a narrower float type at level 1, and a
``bitwise`` test's programs at level 1."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest


@pytest.fixture
def levels(monkeypatch):
    """The level override each compile of the test gets: a list of (module name, level)."""
    seen = []
    compile_ = conftest._compile_or_get_cached

    def record(backend, computation, devices, compile_options, *args, **kwargs):
        result = compile_(backend, computation, devices, compile_options, *args, **kwargs)
        name = str(computation.operation.attributes["sym_name"]).strip('"')
        seen.append((name, dict(compile_options.env_option_overrides).get(conftest._LEVEL)))
        return result

    monkeypatch.setattr(conftest, "_compile_or_get_cached", record)
    if conftest._compiler.compile_or_get_cached is not conftest._level_0_for_float64:
        pytest.skip("this JAX has no jax._src.compiler.compile_or_get_cached to wrap")
    return seen


def _compile(name, fn, *args):
    fn.__name__ = name
    jax.jit(fn).lower(*args).compile()


def test_float64_programs_compile_at_level_0_and_narrower_floats_at_level_1(levels):
    if not conftest._level_0["on"]:
        pytest.skip("the caller set XLA's backend level in XLA_FLAGS")
    x = np.linspace(-2.0, 2.0, 7)
    _compile("all_f64", lambda x: jnp.tanh(x) * 2.0, x)
    _compile("f64_and_ints", lambda x, i: jnp.tanh(x)[i], x, np.arange(3, dtype=np.int32))
    _compile("has_f32", lambda x: jnp.tanh(x.astype(jnp.float32)), x)
    _compile("f32_scalar_out", lambda x: jnp.sum(x).astype(jnp.float32), x)
    _compile("has_bf16", lambda x: jnp.tanh(x.astype(jnp.bfloat16)), x)
    _compile("has_complex64", lambda x: jnp.abs(x.astype(jnp.complex64)), x)
    assert dict(levels) == {
        "jit_all_f64": 0,
        "jit_f64_and_ints": 0,
        "jit_has_f32": None,
        "jit_f32_scalar_out": None,
        "jit_has_bf16": None,
        "jit_has_complex64": None,
    }


def test_a_jits_own_level_wins(levels):
    fn = lambda x: jnp.tanh(x) * 3.0  # noqa: E731
    jax.jit(fn, compiler_options={conftest._LEVEL: 1}).lower(np.ones(3)).compile()
    assert [level for _, level in levels] == [1]


@pytest.mark.bitwise
def test_a_bitwise_test_compiles_float64_at_level_1(levels):
    _compile("bitwise_f64", lambda x: jnp.tanh(x) * 4.0, np.ones(3))
    assert levels == [("jit_bitwise_f64", None)]

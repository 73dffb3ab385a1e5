"""The suite's compile profiler (benchmarks/compile_profile.py): it counts the compiles of the
tests it runs and ranks the files by time."""

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_a_run_lists_its_files_with_their_compiles(pytester, monkeypatch, tmp_path):
    # The inner run is a controller with its own folder; the outer run's is restored after.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.setenv("COMPILE_PROFILE_DIR", str(tmp_path))
    import compile_profile

    monkeypatch.setattr(compile_profile, "_rows", [])  # the inner run's rows stay its own
    pytester.makepyfile(
        test_two_compiles="""
        import time

        import jax
        import jax.numpy as jnp

        def test_it():
            time.sleep(0.1)  # a wall time the table's one decimal shows
            f = jax.jit(lambda x: jnp.sin(x) * 3.0)
            assert float(f(jnp.float32(0.5))) != 0.0
            assert float(jax.jit(lambda x: x + 1.5)(jnp.float32(0.5))) == 2.0
        """
    )
    out = pytester.runpytest_inprocess("-p", "compile_profile", "-p", "no:cacheprovider")
    out.assert_outcomes(passed=1)
    line = next(s for s in out.outlines if s.endswith("test_two_compiles.py"))
    wall, tests, compiles = line.split()[:3]
    assert float(wall) > 0 and int(tests) == 1 and int(compiles) >= 2


def test_summarize_ranks_files_by_wall_time():
    from compile_profile import summarize

    def row(name, wall, compiles):
        return {"id": f"{name}::t", "wall": wall, "compile_n": compiles, "compile_s": wall / 2}

    lines = summarize([row("a.py", 1.0, 3), row("b.py", 5.0, 1), row("a.py", 2.0, 4)])
    assert [s.split()[-1] for s in lines[1:]] == ["b.py", "a.py", "(all)"]
    assert lines[2].split()[:3] == ["3.0", "2", "7"]
    assert lines[3].split()[:3] == ["8.0", "3", "8"]


@pytest.fixture(autouse=True)
def _benchmarks_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))

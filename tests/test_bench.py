"""Smoke test of the benchmark suite (``manual-bp bench``, ``python -m benchmarks``): its
smallest configuration runs from the installed package alone — in another directory, with no
``benchmarks`` folder importable — and writes a well-formed report. No timing thresholds: speed
is read from the benchmark tables, never asserted."""

import ast
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from manual_bp.bench import DEFAULT_OUT

MODELS = ("tiny_mlp",)
SRC = Path(__file__).resolve().parent.parent / "src" / "manual_bp"

# ``manual-bp`` as its console script does it, with ``benchmarks`` unimportable: a run that
# needed the checkout's folder would fail here as it does from an installed wheel.
_CLI = (
    "import sys; sys.modules['benchmarks'] = None; from manual_bp import cli; "
    "raise SystemExit(cli.main(sys.argv[1:]))"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``manual-bp bench`` in a fresh directory (``-I``: neither it nor PYTHONPATH on the path),
    with its default output folder."""
    cwd = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--tiny", "--models", *MODELS, "--no-torch", "--no-numpy"]
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _CLI, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, cwd


@pytest.fixture(scope="module")
def report(run):
    _, cwd = run
    out = cwd / DEFAULT_OUT
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return results, (out / "results.md").read_text(encoding="utf-8")


def test_runs_outside_the_checkout(run, report):
    proc, cwd = run
    results, md = report
    assert not DEFAULT_OUT.is_absolute()  # inside the directory it runs in
    assert sorted(p.name for p in (cwd / DEFAULT_OUT).iterdir()) == ["results.json", "results.md"]
    assert "| model | manual (jit) | jax.grad (jit) | manual / jax.grad |" in proc.stdout
    ratio = results["models"]["tiny_mlp"]["ratios"]["manual_over_reference"]
    assert f"**{ratio:.2f}**" in proc.stdout
    assert f"wrote {DEFAULT_OUT / 'results.json'} and {DEFAULT_OUT / 'results.md'}" in proc.stdout
    assert md in proc.stdout


def _imported_modules(source: str) -> set[str]:
    """The absolute imports of a module's source (relative ones stay inside the package)."""
    mods: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            mods |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            mods.add(node.module or "")
    return mods


def _stands_alone(source: str) -> list[str]:
    """What ties a module to the checkout: imports of ``benchmarks``, uses of ``sys.path``."""
    found = sorted(m for m in _imported_modules(source) if m.split(".")[0] == "benchmarks")
    return found + (["sys.path"] if "sys.path" in source else [])


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_the_package_stands_alone(path):
    """No module of the package imports the checkout's ``benchmarks`` or edits ``sys.path``."""
    assert _stands_alone(path.read_text(encoding="utf-8")) == [], path


def test_the_scan_sees_the_suite_and_can_fail():
    names = {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")}
    assert {"bench/__init__.py", "bench/runner.py", "bench/models.py", "cli.py"} <= names
    assert _stands_alone("from benchmarks.runner import run\n") == ["benchmarks.runner"]
    assert _stands_alone("import benchmarks\n") == ["benchmarks"]
    assert _stands_alone("import sys\nsys.path.insert(0, '..')\n") == ["sys.path"]
    assert _stands_alone("from .bench import MODELS\nimport manual_bp.bench\n") == []


def _positive(x):
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_json_structure(report):
    results, _ = report
    assert set(results) >= {"machine", "config", "ceiling", "models", "targets"}
    assert results["config"]["tiny"] and results["config"]["dtype"] == "float32"
    assert results["config"]["command"] == "manual-bp bench --tiny --models " + " ".join(MODELS)
    assert results["machine"]["cpu"] and results["machine"]["backend"]
    assert _positive(results["ceiling"]["gflops"])
    assert list(results["models"]) == list(MODELS)
    for r in results["models"].values():
        expected = {"manual", "reference", "manual_scan", "reference_scan"}
        if not r["stateful"]:  # forward mode, for the networks without state
            expected |= {"manual_jvp", "reference_jvp", "forward_grad"}
        assert set(r["step"]) == expected
        for s in r["step"].values():
            assert s["repeats"] == 1
            for k in ("median_s", "q1_s", "q3_s", "min_s", "max_s", "steps_per_s", "gflops"):
                assert _positive(s[k]), k
            assert s["min_s"] <= s["median_s"] <= s["max_s"]
        step = r["step"]
        assert r["ratios"]["manual_over_reference"] == pytest.approx(
            step["manual"]["median_s"] / step["reference"]["median_s"]
        )
        assert r["ratios"]["scan_over_loop"] == pytest.approx(
            step["manual_scan"]["median_s"] / step["manual"]["median_s"]
        )
        if not r["stateful"]:
            assert r["ratios"]["manual_jvp_over_reference_jvp"] == pytest.approx(
                step["manual_jvp"]["median_s"] / step["reference_jvp"]["median_s"]
            )
            assert r["ratios"]["forward_grad_over_manual"] == pytest.approx(
                step["forward_grad"]["median_s"] / step["manual"]["median_s"]
            )
        assert step["manual"]["gflops"] == pytest.approx(
            r["step_flops"] / step["manual"]["median_s"] / 1e9
        )
        for kind in ("manual", "reference"):
            assert _positive(r["compile"][kind]["compile_s"])
        tape = r["tape"]
        for side in ("manual", "vjp"):
            assert 0 < tape[side]["distinct_bytes"] <= tape[side]["bytes"]
            assert 0 < tape[side]["distinct_arrays"] <= tape[side]["arrays"]
            assert 0 <= tape[side]["param_bytes"] < tape[side]["distinct_bytes"]
        assert tape["manual"]["param_bytes"] == 0  # the dense tape keeps activations only
        # a relu's output is also the next dense layer's input: one array, two places
        assert tape["manual"]["bytes"] > tape["manual"]["distinct_bytes"]
        assert tape["vjp"]["param_bytes"] > 0  # jax.vjp's pullback closes over the weights
        assert tape["ratio"] == pytest.approx(
            tape["manual"]["distinct_bytes"] / tape["vjp"]["distinct_bytes"]
        )
    targets = {t["target"]: t for t in results["targets"]}
    assert any(name.startswith("manual / jax.grad") for name in targets)
    assert all(isinstance(t["met"], bool) for t in targets.values())


def test_markdown_table(report):
    results, md = report
    assert "| model | manual (jit) | jax.grad (jit) | manual / jax.grad |" in md
    assert "| target | goal | measured | met |" in md
    assert results["config"]["command"] in md
    for name, r in results["models"].items():
        assert f"| {r['title']} |" in md
        assert f"**{r['ratios']['manual_over_reference']:.2f}**" in md
        if not r["stateful"]:
            q = r["ratios"]
            assert re.search(
                rf"^\| {name} \| .* \| \*\*{q['manual_jvp_over_reference_jvp']:.2f}\*\* \| "
                rf".* \| {q['forward_grad_over_manual']:.2f} \|$",
                md,
                flags=re.M,
            ), name
    assert "| model | value_and_jvp (jit) | jax.jvp of the reference (jit) | ratio |" in md

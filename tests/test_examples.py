"""The examples run and do what they say."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_verify_custom_rule_example():
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "verify_custom_rule.py")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "result: PASS" in run.stdout
    assert "diagnosis: z: precision-only problem" in run.stdout
    assert "diagnosis: z: sign flip" in run.stdout


STRICT_JAX = {  # the suite's settings (conftest.py), for the example's own process
    "JAX_ENABLE_X64": "1",
    "JAX_NUMPY_RANK_PROMOTION": "raise",
    "JAX_NUMPY_DTYPE_PROMOTION": "strict",
}

RESEARCH_EXAMPLES = {
    "feedback_alignment.py": (
        ("accuracy.png", "angles.png", "results.json"),
        [rf"^\| digits \| {v} \| \d+\.\d\d% \| " for v in ("backprop", "fa", "sign", "kp")],
    ),
    "direct_feedback_alignment.py": (
        ("curves.png", "results.json"),
        [
            rf"^\| digits \| 7x64 {a} \| {m} \| 0\.01 \| \d+\.\d\d% \| "
            for a in ("tanh", "sigmoid")
            for m in ("backprop", "dfa")
        ],
    ),
    "vanishing_gradients.py": (
        ("delta_norms.png", "results.json"),
        [rf"^\| {i} \| \S+ → \S+ \| \S+ → \S+ \| \S+ → \S+ \|$" for i in range(1, 11)]
        + [
            r"^\| ‖δ_1‖/‖δ_last‖ at init \| ",
            r"^\| 9 \| 0\.\d{3} \| 0\.\d{3} \| 0\.\d{3} \| \S+ \|$",
        ],
    ),
}


@pytest.mark.parametrize("script", list(RESEARCH_EXAMPLES))
def test_research_example_quick_run(script, tmp_path):
    """Each research example runs with --quick under the suite's strict JAX settings, writes
    its plots into --out and prints its results table."""
    files, rows = RESEARCH_EXAMPLES[script]
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, **STRICT_JAX},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for name in files:
        assert (out / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    for row in rows:
        assert re.search(row, run.stdout, flags=re.M), f"{script}: no row {row!r}\n{run.stdout}"
    if script == "vanishing_gradients.py":  # |σ'| ≤ 1/4, so ‖∂C/∂z‖ ≤ ‖∂C/∂a‖ / 4 exactly
        sigmoid = json.loads((out / "results.json").read_text(encoding="utf-8"))["sigmoid"]
        for when in ("init", "trained"):
            z, a = sigmoid[when]["z"], sigmoid[when]["a"]
            assert all(zi <= ai / 4 * (1 + 1e-5) for zi, ai in zip(z, a, strict=True)), when

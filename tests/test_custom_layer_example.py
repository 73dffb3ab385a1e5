"""examples/custom_layer.py runs and does what it says: a user layer's planted bug is named by
layer and parameter, the fix passes, and ``manual-bp verify --module`` audits its rule."""

import os
import subprocess
import sys
from pathlib import Path

from manual_bp.cli import main

EXAMPLE = Path(__file__).parents[1] / "examples" / "custom_layer.py"
STRICT_JAX = {  # the suite's settings (conftest.py), for the example's own process
    "JAX_ENABLE_X64": "1",
    "JAX_NUMPY_RANK_PROMOTION": "raise",
    "JAX_NUMPY_DTYPE_PROMOTION": "strict",
}


def test_custom_layer_example_names_the_bug_and_passes_the_fix():
    run = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        cwd=EXAMPLE.parents[1],
        env={**os.environ, **STRICT_JAX},
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    planted, fixed = run.stdout.split("--- fixed ---")
    assert "first divergent gradient: layer 'prelu_1', parameter 'alpha'" in planted
    assert "diagnosis: layer 'prelu_1', parameter 'alpha':" in planted
    assert "jax.vjp(own forward)" in planted and "result: FAIL" in planted
    assert "result: PASS" in fixed
    assert "prelu    float64  4 checks" in fixed and "prelu    float32  4 checks" in fixed


def test_manual_bp_verify_audits_the_example_as_a_module(capsys):
    assert main(["verify", "--module", str(EXAMPLE), "--dtype", "float64"]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out

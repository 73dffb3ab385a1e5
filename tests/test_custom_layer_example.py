"""examples/custom_layer.py does what it says: a user layer's planted bug is named by layer and
parameter, the fix passes, and ``manual-bp verify --module`` audits its rule. (Run in this
process, under the suite's strict settings, so the command reuses the example's compilations.)
"""

from pathlib import Path

from manual_bp.cli import main
from manual_bp.verify.audit import load_module

EXAMPLE = Path(__file__).parents[1] / "examples" / "custom_layer.py"


def test_custom_layer_example_names_the_bug_and_passes_the_fix(capsys):
    assert load_module(EXAMPLE).main() == 0
    planted, fixed = capsys.readouterr().out.split("--- fixed ---")
    assert "first divergent gradient: layer 'prelu_1', parameter 'alpha'" in planted
    assert "diagnosis: layer 'prelu_1', parameter 'alpha':" in planted
    assert "jax.vjp(own forward)" in planted and "result: FAIL" in planted
    assert "result: PASS" in fixed
    assert "prelu    float64  4 checks" in fixed and "prelu    float32  4 checks" in fixed


def test_manual_bp_verify_audits_the_example_as_a_module(capsys):
    assert main(["verify", "--module", str(EXAMPLE)]) == 0
    assert "2 passed, 0 failed" in capsys.readouterr().out

"""The examples run and do what they say."""

import subprocess
import sys
from pathlib import Path

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

"""The DP-SGD example runs: per-example clipping and noise still train the digits MLP."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_dp_sgd_example_trains_both_ways():
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "dp_sgd.py"), "--quick"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    accuracies = [float(a) for a in re.findall(r"(\d+\.\d+)%", run.stdout)]
    assert len(accuracies) == 2 and min(accuracies) > 70, run.stdout
    assert re.search(r"DP-SGD \(C=1, σ=1\)\s+\d+\.\d+%\s+\d+\.\d+ / \d+\.\d+", run.stdout)

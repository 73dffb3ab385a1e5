"""examples/lecture.py: it runs, prints the lecture's numbers, and its checks can fail."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "examples" / "lecture.py"

CHECK_LINES = [
    "check: forward by hand == manual_bp forward ... ok",
    "check: loss by hand == manual_bp loss == reference loss ... ok",
    "check: recurrence deltas == manual_bp deltas ... ok",
    "check: recurrence grads == manual_bp grads ... ok",
    "check: recurrence deltas == reference deltas (jax.grad) ... ok",
    "check: recurrence grads == reference grads (jax.grad) ... ok",
    "check: manual_bp deltas == reference deltas (jax.grad) ... ok",
    "check: manual_bp grads == reference grads (jax.grad) ... ok",
]


@pytest.fixture(scope="module")
def lecture() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lecture_example", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_runs_and_prints_the_lecture_numbers() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    forward = out[out.index("1. Forward pass") : out.index("2. Backward pass")]
    rows = [line.split() for line in forward.splitlines() if line[:5].strip().isdigit()]
    # the last column is a to 2 decimals, one row per (layer, neuron)
    assert [row[-1] for row in rows] == ["0.98", "0.12", "0.86", "0.11", "0.62", "0.83"]
    for line in CHECK_LINES:
        assert line in out
    assert "all checks passed" in out


def test_forward_activations(lecture: ModuleType) -> None:
    net, params = lecture.build_network()
    x, _ = lecture.example_data()
    layers = lecture.forward_table(net, params, x)
    activations = np.concatenate([layer.a for layer in layers])
    np.testing.assert_allclose(
        activations, [0.982014, 0.119203, 0.863518, 0.110737, 0.617705, 0.829124], atol=5e-7
    )


def test_recurrence_matches_the_truth(lecture: ModuleType, capsys: pytest.CaptureFixture) -> None:
    net, params = lecture.build_network()
    x, y = lecture.example_data()
    layers = lecture.forward_table(net, params, x)
    lecture.run_checks(net, params, layers, lecture.backward_by_recurrence(layers, y), y)
    assert capsys.readouterr().out.count("... ok") == len(CHECK_LINES)


@pytest.mark.parametrize(("layer", "i", "j"), [(1, 1, 0), (2, 0, 1), (2, 1, 1)])
def test_one_wrong_weight_in_the_backward_pass_is_caught(
    lecture: ModuleType, layer: int, i: int, j: int
) -> None:
    """The recurrence reads one weight off by 1e-3; the forward values stay right.

    Only the weights of layers 2 and 3 enter the recurrence (layer 1 has no layer below).
    """
    net, params = lecture.build_network()
    x, y = lecture.example_data()
    layers = lecture.forward_table(net, params, x)
    w = layers[layer].w.copy()
    w[i, j] += 1e-3
    wrong = list(layers)
    wrong[layer] = layers[layer]._replace(w=w)
    backward = lecture.backward_by_recurrence(wrong, y)
    below = layers[layer - 1].dense  # the weight enters the deltas of the layer below
    good = lecture.backward_by_recurrence(layers, y)
    assert not np.allclose(backward.deltas[below], good.deltas[below], rtol=1e-9, atol=0)
    with pytest.raises(AssertionError):
        lecture.run_checks(net, params, layers, backward, y)


def test_transposed_weights_in_the_backward_pass_are_caught(lecture: ModuleType) -> None:
    """Summing over w[k, j] instead of w[j, k] — the classic mistake — fails the checks.

    (Layer 3's weight matrix happens to be symmetric; layer 2's is not.)
    """
    net, params = lecture.build_network()
    x, y = lecture.example_data()
    layers = lecture.forward_table(net, params, x)
    wrong = [layer._replace(w=layer.w.T.copy()) for layer in layers]
    with pytest.raises(AssertionError, match=r"(dense|sigmoid)_\d"):
        lecture.run_checks(net, params, layers, lecture.backward_by_recurrence(wrong, y), y)


def test_wrong_parameters_fail_against_the_network(lecture: ModuleType) -> None:
    """The recurrence run on a perturbed network does not match manual_bp on the real one."""
    net, params = lecture.build_network()
    x, y = lecture.example_data()
    perturbed = {name: dict(p) for name, p in params.items()}
    perturbed["dense_2"]["b"] = perturbed["dense_2"]["b"] + 1e-4
    wrong_layers = lecture.forward_table(net, perturbed, x)
    layers = lecture.forward_table(net, params, x)
    with pytest.raises(AssertionError):
        lecture.run_checks(net, params, layers, lecture.backward_by_recurrence(wrong_layers, y), y)

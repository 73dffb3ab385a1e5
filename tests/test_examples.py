"""The examples run and do what they say."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import jax
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
    "forward_gradients.py": (
        ("accuracy.png", "cosines.png", "results.json"),
        [
            rf"^\| digits \| {m} \| \d+\.\d\d% \| \d+\.\d{{4}} \| "
            for m in ("backprop", "weight-perturbed", "activity-perturbed")
        ],
    ),
    "kfac_vs_adam.py": (
        ("accuracy.png", "results.json"),
        [rf"^\| digits MLP \| {o} \| \d+\.\d\d% \| " for o in ("adam", "kfac", "diag-ggn")],
    ),
    "obd_pruning.py": (
        ("pruning.png", "results.json"),
        [r"^\| 5 \| 0% \| (\d+\.\d\d%) \| \1 \| \1 \|$", r"^\| 5 \| 90% \| \d+\.\d\d% \| "],
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


def _load(script: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / "examples" / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", list(RESEARCH_EXAMPLES))
def test_research_example_quick_run(script, tmp_path, monkeypatch, capsys):
    """Each research example's ``main`` runs with --quick under the suite's strict JAX settings
    (in this process, from a fresh working folder), writes its plots into --out and prints its
    results table."""
    files, rows = RESEARCH_EXAMPLES[script]
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert jax.config.jax_numpy_dtype_promotion == "strict" and jax.config.jax_enable_x64
    assert jax.config.jax_numpy_rank_promotion == "raise"
    assert _load(script).main(["--quick", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    for name in files:
        assert (out / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    for row in rows:
        assert re.search(row, stdout, flags=re.M), f"{script}: no row {row!r}\n{stdout}"
    if script == "forward_gradients.py":  # unbiased but noisy: 0 < E[cos] < 1, activity closer
        cosines = json.loads((out / "results.json").read_text(encoding="utf-8"))["digits"]
        for method in cosines.values():
            c = method["cosines"]
            for layer in c["weight"]:
                w, a = c["weight"][layer][-1], c["activity"][layer][-1]
                assert 0 < w < 0.5 and 0 < a < 0.5, (layer, w, a)
                assert a > w, f"{layer}: activity-perturbed {a} not above weight-perturbed {w}"
    if script == "kfac_vs_adam.py":  # both preconditioners train: well above chance in 2 epochs
        runs = json.loads((out / "results.json").read_text(encoding="utf-8"))["digits MLP"]
        for opt, r in runs.items():
            assert r["test_accuracy"][-1] > 0.85, (opt, r["test_accuracy"])
    if script == "obd_pruning.py":  # the Hessian's saliency beats |w| where pruning bites
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
        i, r = results["fractions"].index(0.9), results["runs"]["5"]
        assert r["accuracy"]["OBD (Hessian)"][i] > r["accuracy"]["magnitude"][i], r
        assert 0 < r["negative_hessian_entries"] < r["weights"], r
    if script == "vanishing_gradients.py":  # |σ'| ≤ 1/4, so ‖∂C/∂z‖ ≤ ‖∂C/∂a‖ / 4 exactly
        sigmoid = json.loads((out / "results.json").read_text(encoding="utf-8"))["sigmoid"]
        for when in ("init", "trained"):
            z, a = sigmoid[when]["z"], sigmoid[when]["a"]
            assert all(zi <= ai / 4 * (1 + 1e-5) for zi, ai in zip(z, a, strict=True)), when

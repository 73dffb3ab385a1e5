"""Smoke test of the benchmark suite (``manual-bp bench``, ``python -m benchmarks``): its
smallest configuration runs and writes a well-formed report. No timing thresholds: speed is
read from the benchmark tables, never asserted."""

import json
import math

import pytest

from manual_bp import cli

MODELS = ("tiny_mlp",)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--tiny", "--models", *MODELS, "--no-torch", "--no-numpy", "--out", str(out)]
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return results, (out / "results.md").read_text(encoding="utf-8")


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
        assert set(r["step"]) == {"manual", "reference", "manual_scan", "reference_scan"}
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
    for r in results["models"].values():
        assert f"| {r['title']} |" in md
        assert f"**{r['ratios']['manual_over_reference']:.2f}**" in md

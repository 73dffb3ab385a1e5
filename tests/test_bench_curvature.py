"""Smoke test of the curvature cost table (``python -m benchmarks.curvature``): its smallest
configuration measures every quantity that applies, writes a well-formed report and says what
it skipped and why. No timing thresholds: costs are read from the table, never asserted."""

import json
import math

import jax
import numpy as np
import pytest

from manual_bp.bench.curvature import (
    KFAC_JAX_MODES,
    curvature_cases,
    curvature_markdown,
    kron_misfit,
    main,
    quantities,
)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("curvature")
    assert main(["--tiny", "--models", "tiny_mlp", "--out", str(out)]) == 0
    return json.loads((out / "curvature.json").read_text()), (out / "curvature.md").read_text()


def test_every_quantity_of_an_mlp_is_measured(report):
    results, text = report
    rows = results["models"]["tiny_mlp"]["quantities"]
    expected = {
        "gradient",
        "diag GGN, exact",
        "diag GGN, MC-1",
        "diag GGN, Dense route",
        "Hessian diagonal",
        "GGN-vector product",
        "Hessian-vector product",
        "KFLR factors",
        "KFAC factors, MC-1",
        "K-FAC step (inverses every step)",
        "Adam step",
    }
    assert expected <= set(rows)
    for name, row in rows.items():
        assert row["median_s"] > 0 and math.isfinite(row["over_gradient"]), name
        assert row["compile_s"] > 0, name
    assert rows["gradient"]["over_gradient"] == 1.0
    skipped = results["models"]["tiny_mlp"]["skipped"]
    for name in KFAC_JAX_MODES:  # measured with kfac-jax installed, else skipped saying so
        assert (name in rows) != (name in skipped)
        assert name in rows or "kfac-jax is not installed" in skipped[name]
    assert set(skipped) <= set(KFAC_JAX_MODES)
    for name in expected - {"gradient"}:
        assert f"| {name} | " in text
    assert text == curvature_markdown(results)


def test_what_does_not_apply_is_skipped_with_the_reason():
    cases = curvature_cases(tiny=True)
    cnn = cases["cnn"]  # LeNet with batch norm
    key = jax.random.key(0)
    params = cnn.net.init(key, cnn.x_shape)
    state = cnn.net.init_state(key, cnn.x_shape)
    fns, skipped = quantities(cnn, params, state)
    assert "diag GGN, exact" in fns  # the generic route takes coupled examples
    assert "diag GGN, Dense route" not in fns  # convolutions
    for name in ("KFLR factors", "KFAC factors, MC-1"):
        assert name not in fns and "batch statistics" in skipped[name]
    assert "K-FAC step (inverses every step)" not in fns
    assert "Hessian diagonal" not in fns and "batch statistics" in skipped["Hessian diagonal"]
    for name in KFAC_JAX_MODES:
        assert name not in fns and skipped[name] == "batch norm"


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match="nope"):
        main(["--tiny", "--models", "nope"])


@pytest.mark.parametrize("size", [1e-2, 1e-7, 0.0])
def test_kron_misfit_equals_the_fitted_kronecker_residual(size):
    """The misfit kfac-jax's factors are reported with, without forming A ⊗ G, against the
    explicit products' least-squares residual (small factors); near 1e-7 it does not cancel."""
    rng = np.random.default_rng(17)
    a, g = rng.standard_normal((5, 5)), rng.standard_normal((4, 4))
    b = 0.5 * a + size * rng.standard_normal((5, 5))
    h = 3.0 * g + size * rng.standard_normal((4, 4))
    t, o = np.kron(a, g), np.kron(b, h)
    want = np.linalg.norm(t - np.vdot(t, o) / np.vdot(o, o) * o) / np.linalg.norm(t)
    got = kron_misfit(a, g, b, h)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-15)
    if size:
        assert got > size / 10

"""check_rule and check_network: each diagnosis class is shown by a planted wrong rule."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual_bp import RULES, Rule, nn
from manual_bp.verify import assert_rule_correct, check_network, check_rule

RNG = np.random.default_rng(7)


def arr(*shape, dtype=jnp.float32, scale=1.0):
    return jnp.asarray(scale * RNG.standard_normal(shape), dtype)


Z = arr(4, 5)
SIG, DENSE, RELU = RULES["sigmoid"], RULES["dense"], RULES["relu"]


def with_bwd(rule, bwd, name=None):
    return Rule(name or f"planted_{rule.name}", rule.fwd, bwd)


@pytest.mark.parametrize(
    ("name", "dtype", "args"),
    [
        ("sigmoid", jnp.float32, (Z,)),
        ("softmax", jnp.float64, (arr(3, 4, dtype=jnp.float64),)),
        ("dense", jnp.float32, (arr(2, 3, 5), arr(5, 4), arr(4))),
        ("softmax_cross_entropy", jnp.float32, (arr(6, 3), jnp.asarray([0, 1, 2, 2, 1, 0]))),
        ("relu", jnp.float32, (jnp.asarray([[-1.0, 0.0, 2.0, 0.5]], jnp.float32),)),
    ],
)
def test_correct_rules_pass(name, dtype, args):
    report = assert_rule_correct(name, *args)
    assert report.ok and not report.diagnoses
    againsts = {c.against for c in report.comparisons}
    assert {"jax.vjp(fwd)", "jax.vjp(reference)", "finite differences (f64)"} <= againsts


def test_constant_scale_factor():
    bad = with_bwd(SIG, lambda r, g: (1.001 * SIG.bwd(r, g)[0],))
    report = check_rule(bad, Z)
    assert not report.ok
    assert report.diagnoses == ["z: constant scale factor: got 1.001 × the true cotangent"]


def test_sign_flip():
    report = check_rule(with_bwd(SIG, lambda r, g: (-SIG.bwd(r, g)[0],)), Z)
    assert report.diagnoses == ["z: sign flip (got −1 × the true cotangent)"]


def test_transposed_result_square():
    def bwd(res, g):
        dx, dw, db = DENSE.bwd(res, g)
        return dx, dw.T, db

    report = check_rule(with_bwd(DENSE, bwd), arr(6, 4), arr(4, 4), arr(4))
    assert report.diagnoses == ["w: transposed result (the last two axes are swapped)"]


def test_transposed_result_shape():
    def bwd(res, g):
        dx, dw, db = DENSE.bwd(res, g)
        return dx, dw.T, db

    report = check_rule(with_bwd(DENSE, bwd), arr(6, 4), arr(4, 3), arr(3))
    assert report.diagnoses == ["w: transposed result (got shape (3, 4), expected (4, 3))"]


def test_missing_sum_over_a_broadcast_axis():
    def bwd(res, g):
        dx, dw, _ = DENSE.bwd(res, g)
        return dx, dw, jnp.sum(g, axis=1)  # sums one batch axis of two

    report = check_rule(with_bwd(DENSE, bwd), arr(2, 3, 5), arr(5, 4), arr(4))
    assert len(report.diagnoses) == 1
    assert report.diagnoses[0].startswith("b: missing sum over broadcast axes (0,)")


def test_error_confined_to_kink_points():
    def fwd(z):
        return jnp.where(z > 0, z, 0), (z,)

    def bwd(res, g):
        (z,) = res
        return (jnp.where(z > 0, g, jnp.where(z == 0, 2.0 * g, 0.0)),)  # relu'(0) = 2

    z = jnp.asarray([[-1.0, 0.0, 2.0, 0.0, -0.5, 1.5]], jnp.float32)
    report = check_rule(Rule("relu_bad_kink", fwd, bwd), z)
    assert not report.ok
    assert report.diagnoses[0].startswith("z: error confined to 2 kink point(s) [(0, 1), (0, 3)]")


def test_kink_convention_within_one_sided_range_passes():
    """relu'(0) = 1 differs from JAX's relu'(0) = 0, yet lies between the one-sided slopes."""

    def fwd(z):
        return jnp.where(z >= 0, z, 0), (z,)

    def bwd(res, g):
        return (jnp.where(res[0] >= 0, g, 0),)

    z = jnp.asarray([[-1.0, 0.0, 2.0, 0.0, -0.5]], jnp.float32)
    report = check_rule(Rule("relu_right_kink", fwd, bwd), z)
    assert report.ok, str(report)
    assert any("kink point(s)" in c.note for c in report.comparisons)


def test_precision_only_problem():
    def fwd(z):
        return jax.nn.sigmoid(z), (z,)

    def bwd(res, g):
        e = jnp.exp(-res[0])  # overflows in float32 for z < -88
        return (g * e / ((1 + e) * (1 + e)),)

    z = jnp.asarray([-100.0, -50.0, 0.5, 3.0, -2.0], jnp.float32)
    report = check_rule(Rule("sigmoid_by_exp", fwd, bwd), z)
    assert report.diagnoses == [
        "z: precision-only problem: passes in float64, fails in float32 (an unstable formula "
        "or cancellation; rewrite it from stable primitives)"
    ]
    assert check_rule(Rule("sigmoid_by_exp", fwd, bwd), z.astype(jnp.float64)).ok


def test_softmax_mean_instead_of_weighted_sum_is_caught():
    sm = RULES["softmax"]

    def bwd(res, g, axis=-1):
        (p,) = res
        return (p * (g - jnp.mean(g, axis=axis, keepdims=True)),)

    report = check_rule(with_bwd(sm, bwd), arr(3, 5))
    assert not report.ok and report.diagnoses[0].startswith("z: unclassified error")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (jnp.ones_like, "refusing a cotangent of all ones"),
        (jnp.zeros_like, "refusing an all-zero cotangent"),
        (lambda z: z - jnp.mean(z, axis=-1, keepdims=True), "sums to zero along axis 1"),
    ],
)
def test_vacuous_cotangents_are_refused(make, message):
    z = arr(3, 5)
    with pytest.raises(ValueError, match=message):
        check_rule("softmax", z, cotangents=[make(z)])


def test_vacuous_input_domains_warn():
    report = check_rule("relu", jnp.abs(Z) + 0.1)
    assert report.ok
    assert any("only one linear branch" in w for w in report.warnings)
    saturated = check_rule(
        "sigmoid", jnp.full((3,), 200.0, jnp.float32) * jnp.asarray([1, -1, 1], jnp.float32)
    )
    assert any("zero everywhere" in w for w in saturated.warnings)


def test_integer_primals_must_get_none():
    ce = RULES["softmax_cross_entropy"]
    bad = with_bwd(ce, lambda r, g: (ce.bwd(r, g)[0], jnp.zeros(r[1].shape, jnp.float32)))
    report = check_rule(bad, arr(4, 3), jnp.asarray([0, 1, 2, 0]))
    assert any("non-differentiable" in d for d in report.diagnoses)


def test_report_prints_and_serializes():
    report = check_rule("tanh", Z, num_cotangents=2, seed=3)
    text = str(report)
    assert "max ulp" in text and "worst index" in text and "result: PASS" in text
    d = json.loads(report.to_json())
    assert d["rule"] == "tanh" and d["ok"] and d["cotangents"] == 2
    assert {"max_abs", "max_rel", "max_ulp", "worst_index"} <= set(d["comparisons"][0])


def test_assert_rule_correct_raises_with_the_report():
    with pytest.raises(AssertionError, match="constant scale factor"):
        assert_rule_correct(with_bwd(SIG, lambda r, g: (2 * SIG.bwd(r, g)[0],)), Z)


def test_check_network_names_the_first_divergent_layer():
    x = arr(8, 4)
    y = jnp.asarray(RNG.integers(0, 3, 8), jnp.int32)
    good = nn.serial(nn.Dense(6), nn.Tanh(), nn.Dense(5), nn.Sigmoid(), nn.Dense(3))
    params = good.init(jax.random.key(0), x.shape)
    report = check_network(good, "softmax_cross_entropy", params, x, y)
    assert report.ok and report.first_divergent is None
    assert [lc.name for lc in report.layers] == [
        "dense_4",
        "sigmoid_3",
        "dense_2",
        "tanh_1",
        "dense_0",
    ]

    bad_sigmoid = with_bwd(SIG, lambda r, g: (1.1 * SIG.bwd(r, g)[0],), name="sigmoid")
    sig_layer = nn.Sigmoid()._replace(backward=lambda p, t, dy: ({}, {}, bad_sigmoid.bwd(t, dy)[0]))
    bad = nn.serial(nn.Dense(6), nn.Tanh(), nn.Dense(5), sig_layer, nn.Dense(3))
    report = check_network(bad, "softmax_cross_entropy", params, x, y)
    assert not report.ok
    assert report.first_divergent == "dense_2" and report.culprit == "sigmoid_3"
    assert "first divergent delta: 'dense_2'" in str(report)


def test_cli_verify_passes_and_writes_json(tmp_path, capsys):
    from manual_bp.cli import main

    out = tmp_path / "audit.json"
    assert main(["verify", "--rule", "sigmoid", "--dtype", "float32", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["ok"] and [r["name"] for r in payload["results"]] == ["sigmoid"]
    assert "1 passed, 0 failed" in capsys.readouterr().out


def test_cli_verify_fails_on_a_broken_rule(monkeypatch, capsys):
    from manual_bp.cli import main

    broken = with_bwd(SIG, lambda r, g: (1.001 * SIG.bwd(r, g)[0],), name="sigmoid")
    monkeypatch.setitem(RULES, "sigmoid", broken)
    assert main(["verify", "--rule", "sigmoid", "--dtype", "float64"]) == 1
    text = capsys.readouterr().out
    assert "FAIL" in text and "constant scale factor: got 1.001" in text


def test_cli_verify_rejects_an_unknown_rule():
    from manual_bp.cli import main

    with pytest.raises(SystemExit) as info:
        main(["verify", "--rule", "nope"])
    assert info.value.code == 2


AUDITED = ("tanh", "dense", "softmax_cross_entropy", "max_pool2d", "batch_norm", "rnn")


def test_audit_passes_in_float64_on_each_family_of_rules():
    """What `manual-bp verify` runs (element-wise float64 finite differences included), on a
    rule of each family; tests/test_rules.py checks every row of every registered rule."""
    from manual_bp.verify.audit import audit

    results = audit(rules=AUDITED, dtypes=["float64"], networks=False)
    failed = [(r["name"], r["diagnoses"]) for r in results if not r["ok"]]
    assert not failed, failed
    assert {r["rule"] for r in results} == set(AUDITED) <= set(RULES)


# --- the network check's error model: each number on the scale of its computation ----------


def test_bundled_networks_pass_in_float64_and_float32():
    """A bias before batch norm has an exact gradient of 0: its rounding noise is judged on the
    scale of its layer's whole gradient, not on its own."""
    from manual_bp.verify.audit import audit_networks

    results = audit_networks()
    assert {(r["name"], r["dtype"]) for r in results} >= {("batch-norm-dropout", "float32")}
    failed = [(r["name"], r["dtype"], r["worst"], r["max_rel"]) for r in results if not r["ok"]]
    assert not failed, failed


def _bias_before_batch_norm(db_error):
    dense = nn.Dense(6, name="dense_0")

    def backward(p, tape, dz):
        grads, deltas, dx = dense.backward(p, tape, dz)
        return {"w": grads["w"], "b": grads["b"] + db_error}, deltas, dx

    net = nn.serial(dense._replace(backward=backward), nn.BatchNorm(), nn.Tanh(), nn.Dense(3))
    x = arr(8, 4, dtype=jnp.float64)
    params = net.init(jax.random.key(0), x.shape, jnp.float64)
    state = net.init_state(jax.random.key(0), x.shape, jnp.float64)
    y = jnp.asarray(RNG.integers(0, 3, 8), jnp.int32)
    return check_network(net, "softmax_cross_entropy", params, x, y, state=state)


def test_a_zero_gradient_is_not_held_to_its_rounding_noise_but_a_real_error_there_fails():
    good = _bias_before_batch_norm(0.0)
    assert good.ok, str(good)
    bias = next(c for c in good.leaves if c.primal == "grads/dense_0/b")
    weight = next(c for c in good.leaves if c.primal == "grads/dense_0/w")
    assert bias.scale == weight.scale > 0  # the layer's whole gradient sets the scale

    bad = _bias_before_batch_norm(1e-3)
    assert not bad.ok
    assert bad.first_divergent == bad.culprit == "dense_0"
    assert not next(c for c in bad.leaves if c.primal == "grads/dense_0/b").ok


def test_a_small_loss_is_judged_on_its_terms_and_logits():
    """A converged run's loss is small; its rounding comes from logits of order 10."""
    net = nn.serial(nn.Dense(3))
    x = arr(16, 4)
    params = net.init(jax.random.key(0), x.shape)
    params = {"dense_0": {"w": 10.0 * params["dense_0"]["w"], "b": params["dense_0"]["b"]}}
    y = jnp.argmax(net.forward(params, x)[0], axis=-1).astype(jnp.int32)
    report = check_network(net, "softmax_cross_entropy", params, x, y)
    assert report.ok, str(report)
    assert report.loss < 0.5 and report.leaves[0].scale > 5 * report.loss

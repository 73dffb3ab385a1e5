"""check_rule and check_network: each diagnosis class is shown by a planted wrong rule."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from manual_bp import RULES, Rule, nn
from manual_bp.verify import assert_rule_correct, check_network, check_rule
from manual_bp.verify.audit import NETWORKS
from manual_bp.verify.forward_mode import ADJOINT
from user_rules import RULES as USER_RULES  # tests/user_rules: a package of a user's rules
from user_rules import prelu_bwd, prelu_fwd

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


def test_bundled_networks_pass_in_float64_and_float32(verify_run):
    """A bias before batch norm has an exact gradient of 0: its rounding noise is judged on the
    scale of its layer's whole gradient, not on its own. (The networks' results of the one
    `manual-bp verify` run below, shared with its end-to-end test.)"""
    results = [r for r in verify_run[1]["results"] if r["kind"] == "network"]
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


# --- describing what no pattern fits: each description has a planted bug ------------------


def _swish_fwd(z, *, beta=1.0):
    s = jax.nn.sigmoid(beta * z)
    return z * s, (z, s)


def _swish_bwd(res, g, *, beta=1.0):
    z, s = res
    return (g * (s + beta * z * s * (1 - s)),)


def _swish_forgot_beta(res, g, *, beta=1.0):  # ∂/∂z of z σ(βz) without its factor β
    z, s = res
    return (g * (s + z * s * (1 - s)),)


def _swish_extra_term(res, g, *, beta=1.0):  # right plus a term that grows with β
    return (_swish_bwd(res, g, beta=beta)[0] + 0.05 * (1 + beta) * g,)


def test_a_forgotten_factor_is_described_by_its_ratio_and_the_setting_it_vanishes_at():
    good = check_rule(Rule("swish_beta", _swish_fwd, _swish_bwd), Z, beta=1.5)
    assert good.ok, str(good)
    (d,) = check_rule(Rule("swish_beta", _swish_fwd, _swish_forgot_beta), Z, beta=1.5).diagnoses
    assert d.startswith("z: unclassified error at 20 of 20 elements, spread over all of them")
    assert "× the true cotangent's" in d
    assert "got/expected varies from" in d and ", a function of z" in d
    assert "the error vanishes at beta=1 (beta is 1.5 here)" in d


def test_an_error_that_changes_with_a_setting_is_described_so():
    (d,) = check_rule(Rule("swish_beta", _swish_fwd, _swish_extra_term), Z, beta=1.5).diagnoses
    assert "vanishes" not in d
    assert "the error changes with beta: relative error" in d and "at beta=3" in d


TANH = RULES["tanh"]


def _tanh_with(edit):
    return Rule("tanh_planted", TANH.fwd, lambda r, g: (edit(TANH.bwd(r, g)[0]),))


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (
            lambda d: d.at[2].multiply(jnp.linspace(1, 2.2, 5, dtype=d.dtype)),
            "confined to index 2 along axis 0",
        ),
        (lambda d: d.at[:, 1::2].add(0.5), "only at indices [1, 3] along axis 1"),
        (lambda d: d.at[1, 2].add(0.5), "confined to the single element (1, 2)"),
    ],
    ids=["one row", "some columns", "one element"],
)
def test_where_an_error_sits_is_named_by_axis_and_index(edit, where):
    (d,) = check_rule(_tanh_with(edit), Z).diagnoses
    assert d.startswith("z: unclassified error at") and where in d, d
    assert "worst at" in d


def test_a_factor_confined_to_some_elements_is_named():
    (d,) = check_rule(_tanh_with(lambda d: d.at[3].multiply(1.5)), Z).diagnoses
    assert "confined to index 3 along axis 0" in d
    assert "there got = 1.5 × expected, elsewhere it is right" in d


# --- user layers in check_network -------------------------------------------------------------


def _softsign_fwd(z):
    return z / (1 + jnp.abs(z)), (z,)


def _softsign_bwd(res, g):  # d/dz z/(1+|z|) = 1/(1+|z|)²
    return (g / (1 + jnp.abs(res[0])) ** 2,)


def _softsign_forgot_square(res, g):
    return (g / (1 + jnp.abs(res[0])),)


def _prelu_dalpha_unmasked(res, g):  # dα = Σ g x over every x, not only x ≤ 0
    dx, _ = prelu_bwd(res, g)
    x = res[0]
    return dx, jnp.sum(g * x, axis=tuple(range(x.ndim - 1)))


def _alpha_init(key, input_shape, dtype):
    return {"alpha": jnp.asarray(np.linspace(0.1, 0.4, input_shape[-1]), dtype)}


def _user_net(prelu=prelu_bwd, softsign=_softsign_bwd, prelu_fwd=prelu_fwd):
    return nn.serial(
        nn.Dense(5),
        nn.from_rule(Rule("prelu", prelu_fwd, prelu), params=("alpha",), init=_alpha_init),
        nn.Dense(6),
        nn.from_rule(Rule("softsign", _softsign_fwd, softsign)),
        nn.Dense(3),
    )


X8, Y8 = arr(8, 4), jnp.asarray(RNG.integers(0, 3, 8), jnp.int32)
USER_PARAMS = _user_net().init(jax.random.key(0), X8.shape)


def _check_user(net, **kw):
    return check_network(net, "softmax_cross_entropy", USER_PARAMS, X8, Y8, **kw)


def test_a_network_of_user_layers_passes_against_their_own_forwards_and_finite_differences():
    report = _check_user(_user_net())
    assert report.ok, str(report)
    against = {lc.name: lc.against for lc in report.layers}
    assert against == {
        "dense_4": "reference",
        "softsign_3": "jax.vjp(own forward)",
        "dense_2": "reference",
        "prelu_1": "jax.vjp(own forward)",
        "dense_0": "reference",
    }
    fd = [c for c in report.leaves if c.against.startswith("finite differences")]
    assert {c.primal for c in fd} == {
        "grads/dense_0/w",
        "grads/dense_0/b",
        "grads/prelu_1/alpha",
        "grads/dense_2/w",
        "grads/dense_2/b",
        "grads/dense_4/w",
        "grads/dense_4/b",
    }
    assert all(c.ok and c.scale > 0 for c in fd)
    assert "jax.vjp(own forward)" in str(report)


def test_a_wrong_parameter_gradient_of_a_user_layer_is_named_by_layer_and_parameter():
    report = _check_user(_user_net(prelu=_prelu_dalpha_unmasked))
    assert not report.ok
    assert (report.culprit, report.parameter) == ("prelu_1", "alpha")
    prelu = next(lc for lc in report.layers if lc.name == "prelu_1")
    assert prelu.delta_ok and not prelu.grad_ok and prelu.failed == ["alpha"]
    assert all(lc.delta_ok and lc.grad_ok for lc in report.layers if lc.name != "prelu_1")
    (d,) = report.diagnoses
    assert d.startswith("layer 'prelu_1', parameter 'alpha': unclassified error at")
    fd = next(
        c for c in report.leaves if c.primal == "grads/prelu_1/alpha" and "finite" in c.against
    )
    assert not fd.ok  # float64 differences of the loss see it too
    assert "first divergent gradient: layer 'prelu_1', parameter 'alpha'" in str(report)


def test_a_wrong_input_cotangent_of_a_parameter_free_user_layer_is_named_and_described():
    report = _check_user(_user_net(softsign=_softsign_forgot_square))
    assert (report.first_divergent, report.culprit, report.parameter) == (
        "dense_2",
        "softsign_3",
        None,
    )
    (d,) = report.diagnoses
    assert d.startswith("layer 'softsign_3': its backward's ∂C/∂(input), the delta of 'dense_2'")
    assert "a function of the output of 'dense_2'" in d  # the ratio is 1 + |z|


def _prelu_fwd_slope_doubled(x, alpha):  # a wrong forward, and a backward that matches it
    return prelu_fwd(x, 2 * alpha)


def _prelu_bwd_slope_doubled(res, g):  # the residuals hold the doubled slope
    dx, dslope = prelu_bwd(res, g)
    return dx, 2 * dslope


def _independent_prelu(params, x):
    a = jnp.reshape(params["alpha"], (1,) * (x.ndim - 1) + params["alpha"].shape)
    return jnp.maximum(x, 0) + a * jnp.minimum(x, 0)


def test_a_reference_of_the_users_own_checks_the_forward_too(monkeypatch):
    """Against its own forward a consistent but wrong layer passes; against an independent
    reference forward, registered or given, it does not."""
    wrong = _user_net(prelu=_prelu_bwd_slope_doubled, prelu_fwd=_prelu_fwd_slope_doubled)
    assert _check_user(wrong).ok
    given = _check_user(wrong, references={"prelu": _independent_prelu})
    assert not given.ok and not given.leaves[0].ok and given.culprit == "prelu_1"
    assert given.diagnoses[0].startswith(
        "the forward of layer 'prelu_1' differs from the given reference: its output has"
    )
    assert next(lc for lc in given.layers if lc.name == "prelu_1").against == "given reference"
    monkeypatch.setitem(reference.REGISTERED, "prelu", _independent_prelu)
    good = _check_user(_user_net())
    assert good.ok, str(good)
    assert next(lc for lc in good.layers if lc.name == "prelu_1").against == "registered reference"


def _prelu_fwd_frozen_slope(x, alpha):  # autodiff sees no slope: dα = 0 by jax.vjp
    return prelu_fwd(x, jax.lax.stop_gradient(alpha))


def _prelu_bwd_no_slope(res, g):
    dx, dalpha = prelu_bwd(res, g)
    return dx, jnp.zeros_like(dalpha)


def test_finite_differences_catch_a_forward_autodiff_cannot_see_through():
    net = _user_net(prelu=_prelu_bwd_no_slope, prelu_fwd=_prelu_fwd_frozen_slope)
    report = _check_user(net)
    assert not report.ok and (report.culprit, report.parameter) == ("prelu_1", "alpha")
    (d,) = report.diagnoses
    assert "finite differences of the loss disagree" in d and "independent side agrees" in d


def test_a_combinator_of_an_unknown_kind_is_refused_with_a_clear_error():
    inner = nn.serial(nn.Dense(3))
    odd = inner._replace(kind="my_block", name="block")
    net = nn.serial(nn.Dense(4), odd)
    params = net.init(jax.random.key(0), X8.shape)
    with pytest.raises(ValueError, match=r"layer 'block' of kind 'my_block' has children"):
        check_network(net, "softmax_cross_entropy", params, X8, Y8)


# --- manual-bp verify end to end: every bundled network, a sample of rules, user modules ----


@pytest.fixture(scope="module")
def verify_run(tmp_path_factory):
    """One `manual-bp verify` over every bundled network (float64, float32) and a sample of
    rules in every dtype: its exit code and JSON."""
    from manual_bp.cli import main

    out = tmp_path_factory.mktemp("verify") / "audit.json"
    argv = ["verify", "--rule", "sigmoid", "--rule", "dense", "--json", str(out)]
    code = main([*argv, *(a for n in NETWORKS for a in ("--network", n))])
    return code, json.loads(out.read_text())


def test_manual_bp_verify_passes_end_to_end(verify_run):
    code, payload = verify_run
    assert code == 0 and payload["ok"]
    nets = {(r["name"], r["dtype"]) for r in payload["results"] if r["kind"] == "network"}
    assert nets == {(n, d) for n in NETWORKS for d in ("float64", "float32")}
    rules = {(r["rule"], r["dtype"]) for r in payload["results"] if r["kind"] == "rule"}
    assert rules == {
        (r, d) for r in ("sigmoid", "dense") for d in ("float64", "float32", "bfloat16")
    }


def test_manual_bp_verify_fails_on_a_broken_bundled_network(monkeypatch, capsys):
    from manual_bp.cli import main

    bad_tanh = nn.Tanh()._replace(backward=lambda p, t, dy: ({}, {}, 1.01 * TANH.bwd(t, dy)[0]))
    make = lambda: nn.serial(nn.Dense(6), bad_tanh, nn.Dense(3))  # noqa: E731
    monkeypatch.setitem(NETWORKS, "mlp-tanh", (make, "softmax_cross_entropy"))
    assert main(["verify", "--network", "mlp-tanh", "--dtype", "float64"]) == 1
    text = capsys.readouterr().out
    assert "mlp-tanh" in text and "FAIL" in text
    assert "first divergent delta 'dense_0' (from the backward of 'tanh_1')" in text
    assert "constant scale factor: got 1.01" in text


def test_manual_bp_verify_audits_a_user_module(tmp_path, capsys):
    from manual_bp.cli import main

    out = tmp_path / "user.json"
    assert main(["verify", "--module", "user_rules", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert {(r["name"], r["dtype"]) for r in results} == {
        ("swish_beta", "float64"),
        ("swish_beta", "float32"),
        ("swish_beta", "bfloat16"),
        ("prelu", "float64"),
        ("prelu", "float32"),
    }
    assert all(r["ok"] and r["checks"] == 2 - (r["dtype"] == "bfloat16") for r in results)
    assert "5 passed, 0 failed" in capsys.readouterr().out


def test_manual_bp_verify_fails_on_a_broken_user_rule_and_on_a_rule_without_a_row(
    monkeypatch, capsys
):
    from manual_bp.cli import main

    broken = Rule("swish_beta", _swish_fwd, _swish_forgot_beta)
    monkeypatch.setitem(USER_RULES, "swish_beta", broken)
    monkeypatch.setitem(USER_RULES, "softsign", Rule("softsign", _softsign_fwd, _softsign_bwd))
    argv = ["verify", "--module", "user_rules", "--dtype", "float64"]
    assert main([*argv, "--rule", "swish_beta", "--rule", "softsign"]) == 1
    text = capsys.readouterr().out
    assert "the error vanishes at beta=1" in text
    assert "softsign: no row in ROWS, so the rule is never checked" in text


def _half_mse_fwd(out, y):
    d = out - y
    return jnp.mean(d * d), (d,)


def _half_mse_forgot_two(res, g):  # ∂/∂out of mean(d²) is 2d/M
    (d,) = res
    return g * d / d.size, None


def test_a_loss_of_the_users_own_is_checked_against_its_own_forward():
    net = nn.serial(nn.Dense(3))
    params = net.init(jax.random.key(0), X8.shape)
    good = Rule("my_mse", _half_mse_fwd, lambda r, g: (2 * g * r[0] / r[0].size, None))
    target = arr(8, 3)
    assert check_network(net, good, params, X8, target).ok
    bad = check_network(
        net, Rule("my_mse", _half_mse_fwd, _half_mse_forgot_two), params, X8, target
    )
    assert (bad.first_divergent, bad.culprit) == ("dense_0", "loss 'my_mse'")
    assert bad.diagnoses == [
        "loss 'my_mse': its backward's ∂C/∂(input), the delta of 'dense_0': constant scale "
        "factor: got 0.5 × the true cotangent"
    ]


def _prelu_dalpha_unsummed(res, g):  # dα per example: the sum over the batch forgotten
    dx, _ = prelu_bwd(res, g)
    return dx, g * jnp.where(res[0] > 0, 0.0, res[0])


def test_a_parameter_gradient_of_the_wrong_shape_is_named_with_its_pattern():
    report = _check_user(_user_net(prelu=_prelu_dalpha_unsummed))
    assert (report.culprit, report.parameter) == ("prelu_1", "alpha")
    assert report.diagnoses == [
        "layer 'prelu_1', parameter 'alpha': missing sum over broadcast axes (0,): got shape "
        "(8, 5), expected (5,); sum the cotangent over the axes the forward broadcast"
    ]


# ---- forward mode: the jvp against autodiff, finite differences and its own bwd ----

TANH = RULES["tanh"]
FORWARD_CHECKS = {"jax.jvp(fwd)", "finite differences along t (f64)", ADJOINT}


def with_jvp(rule, jvp, bwd=None):
    return Rule(f"planted_{rule.name}", rule.fwd, bwd or rule.bwd, jvp)


def _failing(report):
    return {c.against for c in report.comparisons if not c.ok}


@pytest.mark.parametrize(
    ("name", "dtype", "scale", "static"),
    [
        ("tanh", jnp.float32, 1e3, {}),
        ("tanh", jnp.bfloat16, 1.0, {}),
        ("gelu", jnp.float64, 1e3, {"approximate": True}),
        ("softmax", jnp.float64, 1e3, {}),
        ("layer_norm", jnp.bfloat16, 1.0, {}),
    ],
)
def test_correct_jvps_pass_with_every_forward_check(name, dtype, scale, static):
    """No false alarm from the forward-mode checks in any dtype, at |x| ≈ 1e3 too."""
    args = (arr(4, 5, dtype=dtype, scale=scale),)
    if name == "layer_norm":
        args += (arr(5, dtype=dtype), arr(5, dtype=dtype))
    report = assert_rule_correct(name, *args, finite_differences=scale == 1.0, **static)
    againsts = {c.against for c in report.comparisons}
    assert {"jax.jvp(fwd)", "jax.jvp(reference)", ADJOINT} <= againsts
    if scale == 1.0:
        assert "finite differences along t (f64)" in againsts
    assert not report.notes


def test_a_jvp_scaled_by_1_01_is_caught_and_blamed():
    report = check_rule(with_jvp(TANH, lambda r, t: 1.01 * TANH.jvp(r, t)), Z)
    assert not report.ok
    assert _failing(report) >= FORWARD_CHECKS
    assert "jvp output: constant scale factor: got 1.01 × jax.jvp" in report.diagnoses
    assert any(
        "not transposes" in d and "bwd matches jax.vjp, so jvp is wrong" in d
        for d in report.diagnoses
    )


def test_a_jvp_with_a_sign_flip_is_caught():
    report = check_rule(with_jvp(SIG, lambda r, t: -SIG.jvp(r, t)), Z)
    assert _failing(report) >= FORWARD_CHECKS
    assert "jvp output: sign flip (got −1 × jax.jvp)" in report.diagnoses


def test_a_wrong_bwd_beside_a_right_jvp_fails_the_adjoint_identity_and_is_blamed():
    dense = RULES["dense"]
    args = (arr(3, 5), arr(5, 4), arr(4))

    def bwd(res, g):
        dx, dw, db = dense.bwd(res, g)
        return dx, 1.01 * dw, db

    report = check_rule(with_jvp(dense, dense.jvp, bwd), *args)
    failing = _failing(report)
    assert ADJOINT in failing and "jax.vjp(fwd)" in failing
    assert not failing & {"jax.jvp(fwd)", "finite differences along t (f64)"}
    assert any("jvp matches jax.jvp, so bwd is wrong" in d for d in report.diagnoses)


def test_a_reverse_only_rule_skips_the_forward_checks_with_a_note():
    report = check_rule(Rule("reverse_only_tanh", TANH.fwd, TANH.bwd), Z)
    assert report.ok
    assert not {c.against for c in report.comparisons} & FORWARD_CHECKS
    assert report.notes and "no jvp" in report.notes[0]
    assert "note: the rule has no jvp" in str(report)


def test_a_jvp_of_the_wrong_shape_is_named():
    report = check_rule(with_jvp(TANH, lambda r, t: TANH.jvp(r, t)[0]), Z)
    assert not report.ok
    assert any("jvp returned (5,)" in d and "(4, 5)" in d for d in report.diagnoses)

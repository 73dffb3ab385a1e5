"""``as_custom_vjp``: handwritten rules inside plain JAX programs, differentiated by jax.grad.

* every row of the rule table: finite differences (``check_grads``), and ``jax.vjp`` of the
  adapted function equals the rule's ``bwd`` and ``jax.vjp`` of the reference;
* integer labels get a zero (float0) cotangent;
* a plain-JAX model built from adapted ops has the reference model's gradients, eagerly, under
  jit, per example under vmap, inside lax.scan, and to second order (Hessian-vector products);
* at the network level, ``manual_bp.value_and_grad`` is plain JAX too: jax.jvp through it
  gives Hessian-vector products, and jax.vmap of it gives per-example gradients;
* a planted wrong rule fails the check; a bwd with the wrong number of cotangents is refused.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax import lax
from jax.flatten_util import ravel_pytree

import manual_bp
import reference
from _compare import assert_close, assert_trees_close, random_cotangent, rng_for
from manual_bp import RULES, Rule, nn
from manual_bp.adapter import as_custom_vjp
from rule_table import F64, ROWS, out_struct, primals_for, vjp_evaluator, with_diff

REF = reference.FORWARD

# ---- every row of the rule table -----------------------------------------------------------


def _row_primals(row):
    return primals_for(row, F64, row.shapes[0], "normal", "adapter")


@functools.cache
def _adapted_vjp(row):
    """The adapted function and one jitted ``(primals, ct) -> (out, jax.vjp cotangents)``; the
    rule's own ``bwd`` and the reference come from the row's backward-mode evaluator."""
    adapted = as_custom_vjp(RULES[row.rule], **row.static)

    @jax.jit
    def run(primals, ct):
        out, vjp = jax.vjp(adapted, *primals)
        return out, vjp(ct)

    return adapted, run


@pytest.mark.parametrize("row", [pytest.param(row, id=row.id) for row in ROWS])
def test_rule_table_through_custom_vjp(row):
    adapted, run = _adapted_vjp(row)
    primals = _row_primals(row)
    assert adapted.__name__ == row.rule
    assert RULES[row.rule].fwd.__doc__ in adapted.__doc__

    # what check_grads(order=1, modes=("rev",)) checks: jax.vjp of the adapted function
    # against finite differences, here with that vjp jitted
    ct0 = jnp.zeros(out_struct(row, primals).shape, F64)

    def f(*diff):
        return run(with_diff(row, primals, diff), ct0)[0]

    def f_vjp(*diff):
        full = with_diff(row, primals, diff)
        return f(*diff), lambda g: tuple(run(full, g)[1][i] for i in row.diff)

    jax.test_util.check_vjp(
        f, f_vjp, tuple(primals[i] for i in row.diff), eps=1e-5, atol=1e-6, rtol=1e-6
    )

    ct = random_cotangent(rng_for("adapter-ct", row.id), jax.eval_shape(adapted, *primals))
    out, cts = run(primals, ct)
    shared = vjp_evaluator(row)(primals, ct)
    direct, ref_out, ref_cts = shared.cts, shared.ref_out, shared.ref_cts
    g = float(jnp.max(jnp.abs(ct)))
    assert_close(out, ref_out, F64, f"{row.id}: forward vs reference")
    assert len(cts) == len(primals)
    for i, (c, p) in enumerate(zip(cts, primals, strict=True)):
        if i in row.diff:
            assert c.shape == p.shape and c.dtype == p.dtype
            if i in row.zero:
                assert np.all(np.asarray(c) == 0), f"{row.id}: cotangent {i} must be exactly 0"
            else:
                assert np.any(np.asarray(c) != 0), f"{row.id}: vacuous zero cotangent {i}"
            assert_close(c, direct[i], F64, f"{row.id}: d/primal{i} vs rule.bwd", scale_floor=g)
        elif jnp.issubdtype(p.dtype, jnp.integer):
            assert c.dtype == jax.dtypes.float0 and c.shape == p.shape
        else:
            assert not np.any(np.asarray(c)), f"{row.id}: primal {i} must get a zero cotangent"
    for i, expected in zip(row.diff, ref_cts, strict=True):
        assert_close(cts[i], expected, F64, f"{row.id}: d/primal{i} vs reference", scale_floor=g)


# ---- integer and boolean primals -----------------------------------------------------------


def _logits_and_labels():
    row = next(r for r in ROWS if r.id == "softmax_cross_entropy_int")
    return row.make(rng_for("adapter-int"), (4, 5), F64, "normal")


def test_integer_labels_get_a_float0_cotangent():
    xent = as_custom_vjp("softmax_cross_entropy")
    logits, labels = _logits_and_labels()
    assert labels.dtype == jnp.int32

    grad = jax.grad(lambda z: xent(z, labels))(logits)
    expected = jax.grad(lambda z: REF["softmax_cross_entropy"](z, labels))(logits)
    assert_close(grad, expected, F64, "d logits, integer labels")

    _, vjp = jax.vjp(xent, logits, labels)
    dz, dlabels = vjp(jnp.asarray(1.0, F64))
    assert_close(dz, expected, F64, "d logits via jax.vjp w.r.t. both")
    assert dlabels.dtype == jax.dtypes.float0 and dlabels.shape == labels.shape

    dz, dlabels = jax.grad(xent, argnums=(0, 1), allow_int=True)(logits, labels)
    assert_close(dz, expected, F64, "d logits via jax.grad(allow_int=True)")
    assert dlabels.dtype == jax.dtypes.float0 and dlabels.shape == labels.shape


def _masked_sum_fwd(x, mask):
    return jnp.sum(jnp.where(mask, x, 0)), (mask,)


def _masked_sum_bwd(res, g):
    (mask,) = res
    return jnp.where(mask, jnp.broadcast_to(g, mask.shape), 0), None


def test_boolean_mask_gets_a_float0_cotangent():
    masked_sum = as_custom_vjp(Rule("masked_sum", _masked_sum_fwd, _masked_sum_bwd))
    x = jnp.asarray([1.0, -2.0, 3.0], F64)
    mask = jnp.asarray([True, False, True])
    _, vjp = jax.vjp(masked_sum, x, mask)
    dx, dmask = vjp(jnp.asarray(2.0, F64))
    np.testing.assert_array_equal(np.asarray(dx), [2.0, 0.0, 2.0])
    assert dmask.dtype == jax.dtypes.float0 and dmask.shape == mask.shape


def test_none_for_a_float_primal_is_a_zero_of_its_dtype():
    mse = RULES["mse"]
    pred_only = Rule("mse_pred_only", mse.fwd, lambda res, g: (mse.bwd(res, g)[0], None))
    pred = jnp.asarray([[0.5, -1.0], [2.0, 0.25]], F64)
    target = jnp.asarray([[0.0, 1.0], [1.0, -1.0]], F64)
    dpred, dtarget = jax.grad(as_custom_vjp(pred_only), argnums=(0, 1))(pred, target)
    assert_close(dpred, jax.grad(REF["mse"])(pred, target), F64, "d pred")
    assert dtarget.dtype == F64 and dtarget.shape == target.shape
    assert not np.any(np.asarray(dtarget))


# ---- a plain-JAX model built from adapted ops ----------------------------------------------

DENSE = as_custom_vjp("dense")
TANH = as_custom_vjp("tanh")
XENT = as_custom_vjp("softmax_cross_entropy")
MSE = as_custom_vjp("mse")
ADAPTED_OPS = (DENSE, TANH, XENT, MSE)
REFERENCE_OPS = (REF["dense"], REF["tanh"], REF["softmax_cross_entropy"], REF["mse"])

BATCH, FEATURES, HIDDEN, CLASSES, STEPS = 5, 3, 4, 3, 4


def _model_loss(ops, params, x, labels):
    dense, tanh, xent, _ = ops
    h = tanh(dense(x, params["w1"], params["b1"]))
    return xent(dense(h, params["w2"], params["b2"]), labels)


adapted_loss = functools.partial(_model_loss, ADAPTED_OPS)
reference_loss = functools.partial(_model_loss, REFERENCE_OPS)

# the reference's compiled once and shared by the tests below; the adapted one is jitted or not
GRAD = {"adapted": jax.grad(adapted_loss), "reference": jax.jit(jax.grad(reference_loss))}
PER_EXAMPLE = {
    name: jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))
    for name, loss in (("adapted", adapted_loss), ("reference", reference_loss))
}


def _params(rng, shapes, dtype):
    return {k: jnp.asarray(0.8 * rng.standard_normal(s), dtype) for k, s in shapes.items()}


def _model_data(dtype):
    rng = rng_for("adapter-model", np.dtype(dtype).name)
    shapes = {"w1": (FEATURES, HIDDEN), "b1": (HIDDEN,), "w2": (HIDDEN, CLASSES), "b2": (CLASSES,)}
    x = jnp.asarray(rng.standard_normal((BATCH, FEATURES)), dtype)
    labels = jnp.asarray(rng.integers(0, CLASSES, size=(BATCH,)), jnp.int32)
    return _params(rng, shapes, dtype), x, labels


def _tol(dtype):
    return 1e-10 if dtype == F64 else 1e-4


def _assert_trees_close(actual, expected, dtype, what, tol=None):
    chex.assert_type(jax.tree.leaves(actual) + jax.tree.leaves(expected), dtype)
    assert_trees_close(actual, expected, dtype, what, tol=tol)


class ModelGradMatchesReference(chex.TestCase):
    """The adapted model's gradient equals the reference's (jitted), with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_float64(self):
        self._check(F64)

    @chex.variants(with_jit=True)
    def test_float32(self):
        self._check(jnp.float32)

    def _check(self, dtype):
        params, x, labels = _model_data(dtype)
        grads = self.variant(GRAD["adapted"])(params, x, labels)
        expected = GRAD["reference"](params, x, labels)
        _assert_trees_close(grads, expected, dtype, "grad", _tol(dtype))


def test_per_example_grads_under_vmap():
    params, x, labels = _model_data(F64)
    per_example = PER_EXAMPLE["adapted"](params, x, labels)
    _assert_trees_close(
        per_example, PER_EXAMPLE["reference"](params, x, labels), F64, "per-example grad"
    )
    assert all(g.shape[0] == BATCH for g in jax.tree.leaves(per_example))
    # the batch loss is the mean of the per-example losses, so its gradient is their mean
    mean = jax.tree.map(lambda g: jnp.mean(g, axis=0), per_example)
    _assert_trees_close(mean, GRAD["reference"](params, x, labels), F64, "mean per-example grad")


def _rnn_loss(ops, params, h0, xs, target):
    """h ← tanh(h W + b + x_t) for each step, then mse of a dense read-out of the last h."""
    dense, tanh, _, mse = ops

    def step(h, x_t):
        h = tanh(dense(h, params["w"], params["b"]) + x_t)
        return h, None

    h, _ = lax.scan(step, h0, xs)
    return mse(dense(h, params["wo"], params["bo"]), target)


RNN_GRAD = {
    name: jax.jit(jax.grad(functools.partial(_rnn_loss, ops), argnums=(0, 1)))
    for name, ops in (("adapted", ADAPTED_OPS), ("reference", REFERENCE_OPS))
}


def test_inside_lax_scan():
    rng = rng_for("adapter-rnn")
    shapes = {"w": (HIDDEN, HIDDEN), "b": (HIDDEN,), "wo": (HIDDEN, CLASSES), "bo": (CLASSES,)}
    params = _params(rng, shapes, F64)
    h0 = jnp.asarray(rng.standard_normal((BATCH, HIDDEN)), F64)
    xs = jnp.asarray(rng.standard_normal((STEPS, BATCH, HIDDEN)), F64)
    target = jnp.asarray(rng.standard_normal((BATCH, CLASSES)), F64)
    grads = RNN_GRAD["adapted"](params, h0, xs, target)
    _assert_trees_close(grads, RNN_GRAD["reference"](params, h0, xs, target), F64, "rnn grad")


# ---- second order --------------------------------------------------------------------------


def _flat_model():
    params, x, labels = _model_data(F64)
    flat, unravel = ravel_pytree(params)
    v = jnp.asarray(rng_for("adapter-hvp").standard_normal(flat.shape), F64)

    def adapted(p):
        return adapted_loss(unravel(p), x, labels)

    def ref(p):
        return reference_loss(unravel(p), x, labels)

    return adapted, ref, flat, v


def test_hvp_reverse_over_reverse_matches_reference_hessian():
    adapted, ref, flat, v = _flat_model()

    @jax.jit
    def products(p, v):
        rev_rev = jax.grad(lambda q: jnp.vdot(jax.grad(adapted)(q), v))(p)
        fwd_rev = jax.hessian(adapted)(p) @ v  # jacfwd over jacrev: also supported
        return rev_rev, fwd_rev, jax.hessian(ref)(p) @ v

    rev_rev, fwd_rev, expected = products(flat, v)
    assert np.any(np.asarray(expected) != 0)
    assert_close(rev_rev, expected, F64, "HVP reverse-over-reverse vs reference hessian")
    assert_close(fwd_rev, expected, F64, "jax.hessian of the adapted loss vs reference")


def test_forward_mode_of_the_function_itself_is_refused():
    adapted, _, flat, v = _flat_model()
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(adapted, (flat,), (v,))


# ---- the network level: manual_bp.value_and_grad is plain JAX -------------------------------

NETS = {
    "tanh-xent": (lambda: nn.serial(nn.Dense(4), nn.Tanh(), nn.Dense(3)), "softmax_cross_entropy"),
    "sigmoid-mse": (lambda: nn.serial(nn.Dense(4), nn.Sigmoid(), nn.Dense(3)), "mse"),
}


@functools.cache
def _net(name):
    make, loss = NETS[name]
    net = make()

    def ref_loss(params, x, y):
        return REF[loss](reference.forward(net, params, x), y)

    return net, loss, manual_bp.value_and_grad(net, loss), ref_loss


def _net_data(name):
    net, loss, _, _ = _net(name)
    rng = rng_for("adapter-net", name)
    x = jnp.asarray(rng.standard_normal((BATCH, FEATURES)), F64)
    params = net.init(jax.random.key(7), x.shape, F64)
    params = jax.tree.map(
        lambda p: p + jnp.asarray(0.3 * rng.standard_normal(p.shape), F64), params
    )
    if loss == "mse":
        y = jnp.asarray(rng.standard_normal((BATCH, 3)), F64)
    else:
        y = jnp.asarray(rng.integers(0, 3, size=(BATCH,)), jnp.int32)
    return params, x, y


@pytest.mark.parametrize("name", list(NETS))
def test_network_hvp_by_jvp_through_manual_gradient(name):
    _, _, manual, ref_loss = _net(name)
    params, x, y = _net_data(name)
    flat, unravel = ravel_pytree(params)
    v = jnp.asarray(rng_for("adapter-net-hvp", name).standard_normal(flat.shape), F64)

    @jax.jit
    def products(p, v, x, y):
        def manual_grad(q):
            return ravel_pytree(manual(unravel(q), x, y)[1])[0]

        hvp = jax.jvp(manual_grad, (p,), (v,))[1]
        return hvp, jax.hessian(lambda q: ref_loss(unravel(q), x, y))(p) @ v

    hvp, expected = products(flat, v, x, y)
    assert np.any(np.asarray(expected) != 0)
    assert_close(hvp, expected, F64, f"{name}: HVP by jvp of the manual gradient")


@pytest.mark.parametrize("name", list(NETS))
def test_network_per_example_grads_under_vmap(name):
    _, _, manual, ref_loss = _net(name)
    params, x, y = _net_data(name)
    assert x[0].shape == (FEATURES,)
    losses, grads = jax.jit(jax.vmap(manual, in_axes=(None, 0, 0)))(params, x, y)
    expected = jax.jit(jax.vmap(jax.grad(ref_loss), in_axes=(None, 0, 0)))(params, x, y)
    assert losses.shape == (BATCH,)
    _assert_trees_close(grads, expected, F64, f"{name}: per-example grad")


# ---- the checks can fail -------------------------------------------------------------------

TANH_RULE = RULES["tanh"]


def _tanh_x():
    return jnp.asarray(rng_for("adapter-bad").standard_normal((4, 5)), F64)


def test_planted_wrong_rule_fails_check_grads():
    bad = Rule("bad_tanh", TANH_RULE.fwd, lambda res, g: (1.01 * TANH_RULE.bwd(res, g)[0],))
    assert "bad_tanh" not in RULES
    with pytest.raises(AssertionError):
        jax.test_util.check_grads(
            as_custom_vjp(bad),
            (_tanh_x(),),
            order=1,
            modes=("rev",),
            eps=1e-5,
            atol=1e-6,
            rtol=1e-6,
        )


BAD_BWDS = {
    "too-many": (lambda res, g: (g, g), TypeError, r"'tanh_bad'\): bwd returned 2 .* for 1 prim"),
    "bare-array": (lambda res, g: g, TypeError, r"'tanh_bad'\): bwd must return a tuple of 1"),
    "list": (lambda res, g: [g], TypeError, r"'tanh_bad'\): bwd must return a tuple of 1"),
    "dtype": (lambda res, g: (g.astype(jnp.float32),), TypeError, "dtype float32"),
    "shape": (lambda res, g: (g[:2],), ValueError, r"shape \(2, 5\)"),
}


@pytest.mark.parametrize("case", list(BAD_BWDS))
def test_malformed_bwd_is_refused_with_a_clear_message(case):
    bwd, error, message = BAD_BWDS[case]
    adapted = as_custom_vjp(Rule("tanh_bad", TANH_RULE.fwd, bwd))
    with pytest.raises(error, match=message):
        jax.grad(lambda x: jnp.sum(adapted(x)))(_tanh_x())


def test_float_cotangent_for_integer_labels_is_refused():
    ce = RULES["softmax_cross_entropy"]

    def bwd(res, g):
        dz, _ = ce.bwd(res, g)
        return dz, jnp.zeros(res[1].shape, F64)

    adapted = as_custom_vjp(Rule("ce_bad", ce.fwd, bwd))
    logits, labels = _logits_and_labels()
    with pytest.raises(TypeError, match="non-differentiable dtype int32"):
        jax.jit(jax.grad(adapted))(logits, labels)


def test_unknown_rule_name():
    with pytest.raises(ValueError, match="unknown rule 'no_such_rule'"):
        as_custom_vjp("no_such_rule")

"""The transformer family: the whole model against the reference, and the conventions the
rule table cannot show (masks, repeated and out-of-range ids, large inputs, residual paths)."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from _compare import assert_close, assert_matches_reference, random_cotangent, rng_for
from manual_bp import check_network, nn, value_grad_and_deltas
from manual_bp.rules import add_positions, embedding
from manual_bp.rules.attention import multi_head_attention
from manual_bp.rules.normalization import layer_norm
from rule_table import ROWS, vjp_evaluator

VOCAB, T, FEATURES, BATCH = 7, 5, 8, 2
LOSS = "softmax_cross_entropy"


def _perturbed(params, rng, dtype, scale=0.1):
    """Move every parameter off its initial value (γ off 1, biases off 0)."""
    return jax.tree.map(
        lambda p: p + jnp.asarray(scale * rng.standard_normal(p.shape), dtype), params
    )


@functools.cache
def _lm():
    net = nn.TransformerLM(VOCAB, max_len=T + 1, features=FEATURES, num_heads=2, num_blocks=2)
    return (
        net,
        jax.jit(value_grad_and_deltas(net, LOSS)),
        jax.jit(reference.value_grad_and_deltas(net, LOSS)),
    )


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["float64", "float32"])
def test_transformer_lm_grads_and_deltas_match_reference(dtype):
    net, manual, ref = _lm()
    rng = rng_for("lm", np.dtype(dtype).name)
    ids = jnp.asarray(rng.integers(0, VOCAB, size=(BATCH, T)), jnp.int32)
    targets = jnp.asarray(rng.integers(0, VOCAB, size=(BATCH, T)), jnp.int32)
    params = _perturbed(net.init(jax.random.key(1), ids.shape, dtype), rng, dtype)
    got = manual(params, ids, targets)
    assert_matches_reference("lm", got, ref(params, ids, targets), dtype)
    deltas = got[2]
    assert {"embed", "pos", "attn_1/block/mha", "mlp_0/block/up", "head"} <= set(deltas)


def test_check_network_passes_on_transformer_blocks():
    """check_network on the model after its embedding (float inputs (N, T, D))."""
    lm, _, _ = _lm()
    body = nn.serial(*lm.children[1:])
    rng = rng_for("body")
    x = jnp.asarray(rng.standard_normal((BATCH, T, FEATURES)), jnp.float64)
    y = jnp.asarray(rng.integers(0, VOCAB, size=(BATCH, T)), jnp.int32)
    params = _perturbed(body.init(jax.random.key(2), x.shape, jnp.float64), rng, jnp.float64)
    report = check_network(body, LOSS, params, x, y)
    assert report.ok, str(report)


# ---- attention ---------------------------------------------------------------------------


def _attention_inputs(rng, n, t, d, dtype=jnp.float64, x_scale=1.0, w_scale=0.6):
    x = jnp.asarray(x_scale * rng.standard_normal((n, t, d)), dtype)
    ws = [jnp.asarray(w_scale * rng.standard_normal((d, d)), dtype) for _ in range(4)]
    bs = [jnp.asarray(0.3 * rng.standard_normal((d,)), dtype) for _ in range(4)]
    return x, *ws, *bs


def _attention_row(causal):
    """The audit table's attention row with these settings (its jitted evaluation is shared)."""
    static = {"num_heads": 2, "causal": True} if causal else {"num_heads": 2}
    return next(r for r in ROWS if r.rule == "multi_head_attention" and r.static == static)


@functools.partial(jax.jit, static_argnames=("causal", "ref_dtype"))
def _against_wider_reference(args, mask, ct, causal, ref_dtype):
    """The rule's fwd/bwd, and the reference's forward and jax.vjp on the inputs widened to
    ``ref_dtype``."""
    static = {"num_heads": 2, "causal": causal}
    out, res = multi_head_attention.fwd(*args, mask, **static)
    cts = multi_head_attention.bwd(res, ct, **static)
    wide = [a.astype(ref_dtype) for a in args]
    ref_out, vjp = jax.vjp(
        lambda *a: reference.FORWARD["multi_head_attention"](*a, mask, **static), *wide
    )
    return out, cts, ref_out, vjp(ct.astype(ref_dtype))


def _attention_vs_reference(args, mask, causal, dtype=jnp.float64, ref_dtype=None, tol=None):
    """Manual fwd/bwd against the reference's forward and jax.vjp (optionally in float64, else
    by the table row's jitted evaluation)."""
    static = {"num_heads": 2, "causal": causal}
    out_shape = jax.eval_shape(lambda *a: multi_head_attention(*a, mask, **static), *args)
    ct = random_cotangent(rng_for("att-ct", causal, out_shape.shape), out_shape)
    if ref_dtype is None:
        run = vjp_evaluator(_attention_row(causal))
        out, cts, _, _, ref_out, ref_cts = run((*args, mask), ct)[:6]
    else:
        out, cts, ref_out, ref_cts = _against_wider_reference(args, mask, ct, causal, ref_dtype)
    assert cts[-1] is None, "the mask gets no cotangent"
    assert_close(out, ref_out, dtype, "attention fwd", tol=tol)
    g = float(jnp.max(jnp.abs(ct)))
    for i, (a, e) in enumerate(zip(cts[:-1], ref_cts, strict=True)):
        assert a.dtype == args[i].dtype
        assert_close(a, e, dtype, f"attention d/primal{i}", tol=tol, scale_floor=g)
    return out, cts


@pytest.mark.parametrize("causal", [False, True], ids=["padding", "causal+padding"])
def test_attention_padding_and_causal_masks_match_reference(causal):
    rng = rng_for("att-mask", causal)
    args = _attention_inputs(rng, 2, 4, 4)
    mask = jnp.asarray([[True, True, False, True], [True, False, True, False]])
    out, _ = _attention_vs_reference(args, mask, causal)
    # a padded key is invisible: changing x at padded position 2 of example 0 changes no
    # other position's output (position 2 itself is still a query)
    x2 = args[0].at[0, 2].add(5.0)
    out2 = multi_head_attention(x2, *args[1:], mask, num_heads=2, causal=causal)
    keep = np.array([0, 1, 3])
    np.testing.assert_allclose(np.asarray(out2[0, keep]), np.asarray(out[0, keep]), rtol=1e-13)
    assert not np.allclose(np.asarray(out2[0, 2]), np.asarray(out[0, 2]))


def test_attention_without_mask_equals_all_true_mask():
    rng = rng_for("att-none")
    args = _attention_inputs(rng, 2, 3, 4)
    full = jnp.ones((2, 3), bool)
    for causal in (False, True):
        a = multi_head_attention(*args, None, num_heads=2, causal=causal)
        b = multi_head_attention(*args, full, num_heads=2, causal=causal)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _attention_vs_reference(args, None, True)


def test_attention_fully_masked_rows_give_finite_zeros():
    """Example 0 has no allowed key at all; in example 1 (causal) query 0 sees only a padded
    key. Those queries attend to nothing: c = 0, y = b_o, and no gradient reaches x."""
    rng = rng_for("att-full")
    args = _attention_inputs(rng, 2, 3, 4)
    bo = args[8]
    mask = jnp.asarray([[False, False, False], [False, True, True]])
    out, cts = _attention_vs_reference(args, mask, causal=True)
    for c in cts[:-1]:
        assert bool(jnp.all(jnp.isfinite(c)))
    np.testing.assert_array_equal(np.asarray(out[0]), np.broadcast_to(np.asarray(bo), (3, 4)))
    np.testing.assert_array_equal(np.asarray(out[1, 0]), np.asarray(bo))
    np.testing.assert_array_equal(np.asarray(cts[0][0]), np.zeros((3, 4)))
    _, res = multi_head_attention.fwd(*args, mask, num_heads=2, causal=True)
    p = res[4]
    np.testing.assert_array_equal(np.asarray(p[0]), np.zeros((2, 3, 3)))
    np.testing.assert_array_equal(np.asarray(p[1, :, 0]), np.zeros((2, 3)))


def test_attention_float32_extreme_scores_match_float64():
    """|x| ≈ 1e3: scores ≈ 1e3 overflow exp without the max shift; the float32 rule stays
    finite and agrees with the float64 reference on the same inputs."""
    rng = rng_for("att-extreme")
    args = _attention_inputs(rng, 2, 3, 4, jnp.float32, x_scale=1e3, w_scale=0.02)
    out, cts = _attention_vs_reference(
        args, None, False, jnp.float32, ref_dtype=jnp.float64, tol=1e-4
    )
    for a in (out, *cts[:-1]):
        assert bool(jnp.all(jnp.isfinite(a)))


# ---- embedding and positions -------------------------------------------------------------


def test_embedding_repeated_ids_sum_their_cotangents():
    rng = rng_for("emb")
    table = jnp.asarray(rng.standard_normal((4, 3)), jnp.float64)
    ids = jnp.asarray([[1, 1, 3], [1, 0, 3]], jnp.int32)
    out, res = embedding.fwd(ids, table)
    g = random_cotangent(rng, out)
    dids, dtable = embedding.bwd(res, g)
    assert dids is None
    expected = np.zeros((4, 3))
    for n, t in np.ndindex(2, 3):
        expected[int(ids[n, t])] += np.asarray(g[n, t])
    np.testing.assert_allclose(np.asarray(dtable), expected, rtol=1e-14, atol=1e-14)
    assert not np.any(np.asarray(dtable[2])), "an unused row gets exactly zero"


def test_embedding_out_of_range_ids_give_nan_rows_and_no_gradient():
    rng = rng_for("emb-oob")
    table = jnp.asarray(rng.standard_normal((4, 3)), jnp.float64)
    ids = jnp.asarray([-1, 2, 4, 2, 0], jnp.int32)
    out, res = embedding.fwd(ids, table)
    out_np = np.asarray(out)
    assert np.isnan(out_np[[0, 2]]).all() and np.isfinite(out_np[[1, 3, 4]]).all()
    g = random_cotangent(rng, out)
    _, dtable = embedding.bwd(res, g)
    expected = np.zeros((4, 3))
    expected[2] = np.asarray(g[1] + g[3])
    expected[0] = np.asarray(g[4])
    np.testing.assert_allclose(np.asarray(dtable), expected, rtol=1e-14, atol=1e-14)
    ref_out, vjp = jax.vjp(lambda tb: reference.FORWARD["embedding"](ids, tb), table)
    assert_close(out, ref_out, jnp.float64, "embedding fwd, out of range")
    assert_close(dtable, vjp(g)[0], jnp.float64, "embedding d table, out of range")


def test_add_positions_leaves_unused_rows_without_gradient():
    rng = rng_for("pos")
    x = jnp.asarray(rng.standard_normal((2, 3, 4)), jnp.float64)
    table = jnp.asarray(rng.standard_normal((5, 4)), jnp.float64)
    out, res = add_positions.fwd(x, table)
    g = random_cotangent(rng, out)
    dx, dtable = add_positions.bwd(res, g)
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(g))
    np.testing.assert_allclose(np.asarray(dtable[:3]), np.asarray(g).sum(0), rtol=1e-14)
    np.testing.assert_array_equal(np.asarray(dtable[3:]), np.zeros((2, 4)))


# ---- normalization -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mean1e3", "signs1e3"])
def test_layer_norm_large_inputs_stay_finite_and_accurate(kind):
    """float32 at |x| ≈ 1e3, including a large common mean with unit spread (where
    E[x²] − E[x]² would cancel): finite, and within float32 rounding of float64."""
    rng = rng_for("ln-large", kind)
    if kind == "mean1e3":
        x = 1e3 + rng.standard_normal((4, 6))
    else:
        x = rng.choice([-1.0, 1.0], size=(4, 6)) * rng.uniform(500, 1500, size=(4, 6))
    x32 = jnp.asarray(x, jnp.float32)
    gamma = jnp.asarray(1 + 0.3 * rng.standard_normal(6), jnp.float32)
    beta = jnp.asarray(0.3 * rng.standard_normal(6), jnp.float32)
    out, res = layer_norm.fwd(x32, gamma, beta)
    g = random_cotangent(rng, out)
    cts = layer_norm.bwd(res, g)
    for a in (out, *cts):
        assert bool(jnp.all(jnp.isfinite(a)))
    wide = [a.astype(jnp.float64) for a in (x32, gamma, beta)]
    ref_out, vjp = jax.vjp(reference.FORWARD["layer_norm"], *wide)
    assert_close(out, ref_out, jnp.float32, "layer_norm fwd at 1e3", tol=1e-4)
    gmax = float(jnp.max(jnp.abs(g)))
    for i, (a, e) in enumerate(zip(cts, vjp(g.astype(jnp.float64)), strict=True)):
        assert_close(a, e, jnp.float32, f"layer_norm d/primal{i} at 1e3", 1e-4, gmax)


def test_layer_norm_constant_row_gives_beta_and_finite_gradients():
    """σ = 0: x̂ = 0 and y = β; the gradient r (ĝ − mean ĝ) is finite thanks to ε."""
    rng = rng_for("ln-const")
    x = jnp.full((2, 5), 3.0, jnp.float64)
    gamma = jnp.asarray(rng.standard_normal(5), jnp.float64)
    beta = jnp.asarray(rng.standard_normal(5), jnp.float64)
    out, res = layer_norm.fwd(x, gamma, beta)
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(np.asarray(beta), (2, 5)))
    g = random_cotangent(rng, out)
    cts = layer_norm.bwd(res, g)
    _, vjp = jax.vjp(reference.FORWARD["layer_norm"], x, gamma, beta)
    for i, (a, e) in enumerate(zip(cts, vjp(g), strict=True)):
        assert bool(jnp.all(jnp.isfinite(a)))
        assert_close(a, e, jnp.float64, f"layer_norm constant row d/primal{i}", scale_floor=1.0)


# ---- residual ----------------------------------------------------------------------------


def test_residual_backward_sums_both_paths():
    """y = x + f(x): dx = dy (the skip path) + f's dx (the block path)."""
    rng = rng_for("res")
    block = nn.serial(nn.Dense(4), nn.Tanh(), name="f")
    net = nn.residual(block, name="skip")
    x = jnp.asarray(rng.standard_normal((3, 4)), jnp.float64)
    params = _perturbed(net.init(jax.random.key(3), x.shape, jnp.float64), rng, jnp.float64)
    y, tape = net.forward(params, x)
    h, block_tape = block.forward(params["f"], x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x + h))
    dy = random_cotangent(rng, y)
    grads, deltas, dx = net.backward(params, tape, dy)
    block_grads, block_deltas, block_dx = block.backward(params["f"], block_tape, dy)
    np.testing.assert_allclose(np.asarray(dx), np.asarray(dy + block_dx), rtol=1e-15)
    assert not np.allclose(np.asarray(dx), np.asarray(dy))  # the block path is not empty
    chex.assert_trees_all_equal(grads, {"f": block_grads})
    chex.assert_trees_all_equal(deltas, {"f": dy, **{f"f/{k}": v for k, v in block_deltas.items()}})
    assert set(deltas) == {"f", "f/dense_0", "f/tanh_1"}
    _, vjp = jax.vjp(lambda a: reference.forward(net, params, a), x)
    assert_close(dx, vjp(dy)[0], jnp.float64, "residual dx vs reference")


def test_residual_names_an_unnamed_block_and_rejects_a_shape_change():
    net = nn.residual(nn.Dense(4))
    assert net.children[0].name == "dense_0"
    with pytest.raises(ValueError, match=r"residual: block 'dense_0' must keep the input shape"):
        nn.residual(nn.Dense(3)).init(jax.random.key(0), (2, 4))


# ---- bad inputs ----------------------------------------------------------------------------


def test_bad_inputs_name_the_op_and_the_shapes():
    rng = rng_for("bad")
    args = _attention_inputs(rng, 2, 3, 4)
    with pytest.raises(ValueError, match=r"num_heads=3 must divide the features D=4"):
        multi_head_attention(*args, None, num_heads=3)
    with pytest.raises(ValueError, match=r"mask \(N, T\) must have shape \(2, 3\), got \(3, 2\)"):
        multi_head_attention(*args, jnp.ones((3, 2), bool), num_heads=2)
    with pytest.raises(TypeError, match=r"mask must be a boolean array"):
        multi_head_attention(*args, jnp.ones((2, 3), jnp.int32), num_heads=2)
    with pytest.raises(TypeError, match=r"embedding: ids must have an integer dtype"):
        embedding(jnp.zeros((3,), jnp.float32), jnp.zeros((4, 2), jnp.float32))
    with pytest.raises(ValueError, match=r"add_positions: table must have shape \(L, 4\) with L"):
        add_positions(args[0], jnp.zeros((2, 4), jnp.float64))
    with pytest.raises(ValueError, match=r"layer_norm: gamma .* must have shape \(4,\)"):
        layer_norm(args[0], jnp.ones((3,)), jnp.zeros((4,)))
    with pytest.raises(ValueError, match=r"eps must be a positive"):
        nn.LayerNorm(eps=0.0)

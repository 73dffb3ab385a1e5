"""Property tests (hypothesis): random shapes and values, beyond the fixed table.

* every row of the audit table: the handwritten ``bwd`` equals ``jax.vjp`` of the rule's own
  ``fwd`` and of the reference forward, for a drawn seed (values and a random cotangent), one
  of the row's shapes and a drawn scale that multiplies every size in that shape (the row's
  constraints, such as groups dividing the channels or heads dividing the features, survive
  the scaling); at a scale of 1 the jitted program is the one ``test_rules.py`` compiled;
* random serial networks (depth, widths, activations from ``manual_bp.train.ACTIVATIONS``,
  loss, batch size): the loss, every gradient and every layer's delta equal ``jax.grad`` of
  the independent reference.

Everything runs in float64 to the table's tolerance, under jit. Examples are few and
derandomized, and the drawn sizes come from small sets, so compilations are shared between
examples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import manual_bp
import reference
from _compare import assert_close, assert_trees_close, random_cotangent
from manual_bp import nn
from manual_bp.train import ACTIVATIONS
from manual_bp.verify.table import distinct_image
from rule_table import F64, ROWS, out_struct, vjp_evaluator

PROFILE = settings(max_examples=2, deadline=None, derandomize=True, database=None)


def _scaled(shape, k: int):
    """Every int in a (nested) shape spec times ``k``."""
    if isinstance(shape, tuple):
        return tuple(_scaled(s, k) for s in shape)
    return shape * k


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
@PROFILE
@given(seed=st.integers(0, 2**32 - 1), pick=st.integers(0, 2), scale=st.sampled_from([1, 2]))
def test_rule_bwd_equals_vjp_of_its_fwd(row, seed, pick, scale):
    if row.make is distinct_image:  # distinct values need a small image: keep its size
        scale = 1
    shape = _scaled(row.shapes[pick % len(row.shapes)], scale)
    rng = np.random.default_rng(seed)
    primals = row.make(rng, shape, F64, "normal")
    ct = random_cotangent(rng, out_struct(row, primals))
    out, cts, own_out, own_cts, ref_out, ref_cts = vjp_evaluator(row)(primals, ct)[:6]
    g = float(jnp.max(jnp.abs(ct)))
    what = f"{row.id} shape={shape} seed={seed}"
    assert_close(out, own_out, F64, f"{what}: fwd")
    assert len(cts) == len(primals), f"{what}: one cotangent per primal"
    for i, expected in zip(row.diff, own_cts, strict=True):
        assert cts[i].shape == primals[i].shape and cts[i].dtype == primals[i].dtype, what
        assert_close(cts[i], expected, F64, f"{what}: d/primal{i}", scale_floor=g)
    for i in set(range(len(primals))) - set(row.diff):
        assert cts[i] is None, f"{what}: non-differentiable primal {i} must get None"
    assert_close(out, ref_out, F64, f"{what}: fwd vs reference")
    for i, expected in zip(row.diff, ref_cts, strict=True):
        assert_close(cts[i], expected, F64, f"{what}: d/primal{i} vs reference", scale_floor=g)


LOSSES = ("softmax_cross_entropy", "mse", "sigmoid_binary_cross_entropy")


@st.composite
def networks(draw):
    depth = draw(st.integers(1, 3))
    widths = [draw(st.sampled_from([3, 5])) for _ in range(depth)]
    acts = [draw(st.sampled_from(sorted(ACTIVATIONS))) for _ in range(depth - 1)]
    residual = depth > 1 and draw(st.booleans())
    layers: list[nn.Layer] = []
    for i, w in enumerate(widths):
        layers.append(nn.Dense(w))
        if i < depth - 1:
            layers.append(ACTIVATIONS[acts[i]]())
    if residual:  # x + tanh(Dense(x)) on the last hidden width
        layers.insert(-1, nn.residual(nn.serial(nn.Dense(widths[-2]), nn.Tanh())))
    return nn.serial(*layers), draw(st.sampled_from(LOSSES)), draw(st.sampled_from([2, 4]))


def _targets(rng, loss, out_shape):
    if loss == "softmax_cross_entropy":
        return jnp.asarray(rng.integers(0, out_shape[-1], out_shape[:-1]), jnp.int32)
    if loss == "mse":
        return jnp.asarray(rng.standard_normal(out_shape), F64)
    return jnp.asarray(rng.uniform(size=out_shape), F64)


@settings(PROFILE, max_examples=6)
@given(spec=networks(), seed=st.integers(0, 2**32 - 1))
def test_random_networks_match_the_reference(spec, seed):
    net, loss, batch = spec
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, 4)), F64)
    params = net.init(jax.random.key(seed % 2**31), x.shape, F64)
    y = _targets(rng, loss, net.output_shape(x.shape))
    c, grads, deltas = jax.jit(manual_bp.value_grad_and_deltas(net, loss))(params, x, y)
    rc, rgrads, rdeltas = jax.jit(reference.value_grad_and_deltas(net, loss))(params, x, y)
    what = f"{[layer.kind for layer in net.children]} {loss} batch={batch} seed={seed}"
    assert_close(c, rc, F64, f"{what}: loss")
    assert set(deltas) == set(rdeltas), what
    assert_trees_close(grads, rgrads, F64, f"{what}: grad ")
    assert_trees_close(deltas, rdeltas, F64, f"{what}: delta ")
    last = net.children[-1].name
    assert np.any(np.asarray(rgrads[last]["w"]) != 0), f"{what}: vacuous output gradient"

"""Networks in forward mode: every layer kind's handwritten jvp against the reference.

For small networks of every layer kind, in float64 and float32, with random tangents of the
parameters and the input:

* the tangent of the network output, ``net.jvp(params, tape, dparams, dx)``, equals
  ``jax.jvp`` of the reference forward (``src/reference``, differentiated by JAX);
* ``manual_bp.value_and_jvp``'s (C, dC) equals ``jax.jvp`` of the reference loss;
* the adjoint identity ⟨jvp(dθ, dx), c⟩ = ⟨dθ, ∂θ⟩ + ⟨dx, ∂x⟩ for the handwritten backward
  on the same tape, a check of the two handwritten halves against each other.

Hessian-vector products of the loss through the handwritten backward (``manual_bp.hvp``) equal
``jax.jvp(jax.grad(·))`` of the reference, and ``jax.hessian`` @ v for an MLP, in float64.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import manual_bp
import reference
from _compare import assert_close, assert_trees_close, rng_for
from manual_bp import credit, nn
from manual_bp.verify import tolerance_for

F64, F32 = jnp.float64, jnp.float32


def _acts():
    return nn.serial(
        nn.Dense(5), nn.Sigmoid(), nn.Dense(5), nn.Relu(), nn.Dense(5), nn.LeakyRelu(0.1),
        nn.Elu(0.7), nn.Gelu(), nn.Gelu(approximate=True), nn.Softplus(), nn.Silu(), nn.Tanh(),
        nn.Softmax(), nn.Dense(3), nn.LogSoftmax(),
    )  # fmt: skip


def _cnn():
    return nn.serial(
        nn.Conv2D(3, (3, 3)), nn.Relu(), nn.MaxPool2D((2, 2)),
        nn.Conv2D(2, (2, 2), padding="VALID", use_bias=False), nn.AvgPool2D((2, 2), strides=1),
        nn.Flatten(), nn.Dense(3),
    )  # fmt: skip


def _bn():
    return nn.serial(
        nn.Conv2D(3, (3, 3), use_bias=False), nn.BatchNorm(), nn.Tanh(), nn.Flatten(),
        nn.Dense(4), nn.BatchNorm(), nn.Dense(3),
    )  # fmt: skip


def _attention():
    block = nn.serial(nn.LayerNorm(), nn.MultiHeadAttention(2), name="block")
    return nn.serial(nn.Dense(4), nn.residual(block), nn.RMSNorm(), nn.Dense(3))


def _recurrent():
    return nn.serial(nn.RNN(3), nn.GRU(3), nn.LSTM(3), nn.LastStep(), nn.Dense(3))


def _transformer():
    return nn.TransformerLM(7, max_len=4, features=4, num_heads=2, num_blocks=1)


def _feedback():
    fa, kp = credit.feedback(nn.Dense(5), "fa"), credit.feedback(nn.Dense(3), "kp")
    return credit.direct_feedback(fa, nn.Tanh(), nn.Dense(4), nn.Relu(), kp)


# name: (network, loss, input shape, integer input vocabulary or None, has_state, train)
NETWORKS = {
    "mlp-dropout": (lambda: nn.mlp((6,), 3, "tanh", dropout=0.3), "mse", (4, 5), None, 0, 1),
    "activations": (_acts, "softmax_cross_entropy", (4, 6), None, 0, 1),
    "cnn": (_cnn, "softmax_cross_entropy", (2, 6, 6, 2), None, 0, 1),
    "batch-norm-train": (_bn, "softmax_cross_entropy", (3, 4, 4, 1), None, 1, 1),
    "batch-norm-eval": (_bn, "softmax_cross_entropy", (3, 4, 4, 1), None, 1, 0),
    "recurrent": (_recurrent, "softmax_cross_entropy", (2, 3, 2), None, 0, 1),
    "attention": (_attention, "sigmoid_binary_cross_entropy", (2, 4, 3), None, 0, 1),
    "transformer": (_transformer, "softmax_cross_entropy", (2, 4), 7, 0, 1),
    "feedback": (_feedback, "mse", (4, 6), None, 1, 1),
}


def _data(name, dtype):
    make, loss, shape, vocab, stateful, train = NETWORKS[name]
    rng = rng_for("forward-mode", name, np.dtype(dtype).name)
    net = make()
    key = jax.random.PRNGKey(int(rng.integers(1 << 30)))
    if vocab:
        x = jnp.asarray(rng.integers(0, vocab, shape), jnp.int32)
    else:
        x = jnp.asarray(rng.standard_normal(shape), dtype)
    params = net.init(key, x.shape, dtype)
    params = jax.tree.map(
        lambda p: p + jnp.asarray(0.1 * rng.standard_normal(p.shape), dtype), params
    )
    state = net.init_state(key, x.shape, dtype) if stateful else None
    out = jax.eval_shape(
        lambda p, x: reference.forward(net, p, x, state=state, key=key, train=bool(train)),
        params,
        x,
    )
    if loss == "softmax_cross_entropy":
        y = jnp.asarray(rng.integers(0, out.shape[-1], out.shape[:-1]), jnp.int32)
    elif loss == "sigmoid_binary_cross_entropy":
        y = jnp.asarray(rng.uniform(size=out.shape), dtype)
    else:
        y = jnp.asarray(rng.standard_normal(out.shape), dtype)
    dparams = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), dtype), params)
    dx = None if vocab else jnp.asarray(rng.standard_normal(shape), dtype)
    c = jnp.asarray(rng.standard_normal(out.shape), dtype)  # a cotangent for the adjoint check
    return net, loss, bool(stateful), bool(train), params, state, x, y, key, dparams, dx, c


def _reference_loss(net, loss, state, key, train):
    def f(params, x, y):
        out, _ = reference.forward_with_state(net, params, x, state=state, key=key, train=train)
        return reference.FORWARD[loss](out, y), out

    return f


@functools.cache
def _compiled(name, dtype):
    """Manual and reference sides for one table row, compiled once for its assertions."""
    net, loss, stateful, train, params, state, x, y, key, dparams, dx, c = _data(name, dtype)
    jvp_fn = manual_bp.value_and_jvp(net, loss, has_state=stateful, train=train)
    ref = _reference_loss(net, loss, state, key, train)

    @jax.jit
    def manual(params, state, x, y, dparams, dx, c):
        if stateful:
            (cost, _), dcost = jvp_fn(params, state, x, y, dparams, dx, key)
        else:
            cost, dcost = jvp_fn(params, x, y, dparams, dx, key)
        _, tape = net.forward(params, x, nn.Context(train, key, state))
        dout = net.jvp(params, tape, dparams, dx)
        grads, _, dxb = net.backward(params, tape, c)
        lhs = jnp.vdot(dout, c)
        pairs = zip(jax.tree.leaves(dparams), jax.tree.leaves(grads), strict=True)
        rhs = sum(jnp.vdot(a, b) for a, b in pairs)
        rhs = rhs if dx is None else rhs + jnp.vdot(dx, dxb)
        return cost, dcost, dout, lhs, rhs, jnp.linalg.norm(dout) * jnp.linalg.norm(c)

    @jax.jit
    def expected(params, x, y, dparams, dx):
        if dx is None:
            (cost, out), (dcost, dout) = jax.jvp(lambda p: ref(p, x, y), (params,), (dparams,))
        else:
            primals, tangents = (params, x), (dparams, dx)
            (cost, out), (dcost, dout) = jax.jvp(lambda p, x: ref(p, x, y), primals, tangents)
        # dC = ⟨∂C/∂out, d out⟩ sums terms as large as ‖∂C/∂out‖‖d out‖ (Cauchy–Schwarz)
        g_out = jax.grad(lambda o: reference.FORWARD[loss](o, y))(out)
        return cost, dcost, dout, jnp.linalg.norm(g_out) * jnp.linalg.norm(dout)

    return manual(params, state, x, y, dparams, dx, c), expected(params, x, y, dparams, dx)


F32_ROWS = ("mlp-dropout", "batch-norm-train", "recurrent", "transformer")
"""The rows also run in float32 (each row is one compile per dtype; float64 runs them all)."""
CASES = [(n, F64) for n in NETWORKS] + [(n, F32) for n in F32_ROWS]
IDS = [f"{n}-{np.dtype(d).name}" for n, d in CASES]


@pytest.mark.parametrize(("name", "dtype"), CASES, ids=IDS)
def test_output_tangent_matches_jax_jvp_of_the_reference(name, dtype):
    (_, _, dout, *_), (_, _, rdout, _) = _compiled(name, dtype)
    assert dout.dtype == dtype
    assert np.any(np.asarray(rdout) != 0), f"{name}: the expected tangent is vacuously zero"
    assert_trees_close(dout, rdout, dtype, f"{name}: d(output)", kind="network")


@pytest.mark.parametrize(("name", "dtype"), CASES, ids=IDS)
def test_value_and_jvp_matches_jax_jvp_of_the_reference(name, dtype):
    (c, dc, *_), (rc, rdc, _, size) = _compiled(name, dtype)
    tol = tolerance_for(dtype, "network")
    assert c.dtype == dtype and dc.dtype == dtype and dc.shape == ()
    assert_close(c, rc, dtype, f"{name}: C", tol=tol)
    assert_close(dc, rdc, dtype, f"{name}: dC", tol=tol, scale_floor=float(size))


@pytest.mark.parametrize(("name", "dtype"), CASES, ids=IDS)
def test_jvp_is_the_transpose_of_the_backward(name, dtype):
    """⟨jvp(dθ, dx), c⟩ = ⟨dθ, bwd_θ(c)⟩ + ⟨dx, bwd_x(c)⟩: no autodiff involved."""
    if "feedback" in name:  # the backward sends error through B, not Wᵀ: no transpose
        pytest.skip("feedback alignment's backward is not the transpose of its forward mode")
    (_, _, _, lhs, rhs, size), _ = _compiled(name, dtype)
    tol = tolerance_for(dtype, "network")
    assert_close(lhs, rhs, dtype, f"{name}: adjoint", tol=tol, scale_floor=float(size))


HVP_NETWORKS = ("mlp-dropout", "cnn", "recurrent", "attention")


@pytest.mark.parametrize("name", HVP_NETWORKS)
def test_hvp_through_the_handwritten_backward_matches_the_reference(name):
    net, loss, _, train, params, _, x, y, key, v, _, _ = _data(name, F64)
    g, hv = jax.jit(manual_bp.hvp(net, loss, train=train))(params, x, y, v, key)
    ref = _reference_loss(net, loss, None, key, train)
    rg, rhv = jax.jit(lambda p, v: jax.jvp(jax.grad(lambda q: ref(q, x, y)[0]), (p,), (v,)))(
        params, v
    )
    assert_trees_close(g, rg, F64, f"{name}: grad", kind="network")
    assert_trees_close(hv, rhv, F64, f"{name}: Hv", kind="network")


def test_hvp_equals_the_reference_hessian_times_v():
    net, loss, _, _, params, _, x, y, key, v, _, _ = _data("mlp-dropout", F64)
    flat, unravel = ravel_pytree(params)
    ref = _reference_loss(net, loss, None, key, True)
    hessian = jax.hessian(lambda f: ref(unravel(f), x, y)[0])(flat)
    _, hv = manual_bp.hvp(net, loss)(params, x, y, v, key)
    assert_close(
        ravel_pytree(hv)[0],
        hessian @ ravel_pytree(v)[0],
        F64,
        "mlp: Hv",
        tol=tolerance_for(F64, "network"),
    )


def test_a_layer_without_forward_mode_is_named():
    plain = nn.Tanh()._replace(jvp=None, name="mine")
    net = nn.serial(nn.Dense(3), plain)
    x = jnp.ones((2, 4), F32)
    params = net.init(jax.random.PRNGKey(0), x.shape)
    with pytest.raises(TypeError, match=r"'mine'.*no forward mode"):
        manual_bp.value_and_jvp(net, "mse")(params, x, jnp.zeros((2, 3), F32), params)


def test_tangents_of_the_wrong_shape_or_dtype_are_named():
    net = nn.serial(nn.Dense(3))
    x = jnp.ones((2, 4), F32)
    params = net.init(jax.random.PRNGKey(0), x.shape)
    f = manual_bp.value_and_jvp(net, "mse")
    y = jnp.zeros((2, 3), F32)
    with pytest.raises(ValueError, match=r"dparams.*\['w'\].*shape"):
        f(params, x, y, {"dense_0": {"w": jnp.ones((3, 3), F32), "b": jnp.ones(3, F32)}})
    with pytest.raises(TypeError, match=r"dparams.*\['b'\].*float64"):
        f(params, x, y, {"dense_0": {"w": jnp.ones((4, 3), F32), "b": jnp.ones(3, F64)}})
    with pytest.raises(ValueError, match=r"dx must have x's shape \(2, 4\)"):
        f(params, x, y, None, jnp.ones((2, 5), F32))

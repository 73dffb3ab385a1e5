"""KFAC and KFLR factors of the recurrent and attention layers against the float64 reference.

Each layer runs inside ``serial(layer, Dense(3))`` with the cross-entropy over every time step.
Three checks per layer kind (RNN, LSTM, GRU, MultiHeadAttention, and its blockwise rule):

* the per-example gradient rebuilt from :func:`~manual_bp.curvature.layer_projections`,
  Σ_t ã_t δ_tᵀ, is ``jax.vjp`` of the reference network on that example alone (the deltas);
* with one example and one time step, kron(A, G) is the exact GGN block of each weight;
* for T > 1, expand and reduce differ, and each equals its definition built here from the
  per-position Jacobians J_nt of the output with respect to each projection's output (a
  forward written out below with a perturbation added to every projection, checked against
  the reference): G_expand = Σ_{n,t} J_ntᵀ H J_nt, G_reduce = Σ_n J̄_nᵀ H J̄_n with
  J̄_n = Σ_t J_nt, H the loss's Hessian from ``jax.hessian`` of the reference loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import reference
from _compare import assert_close, random_cotangent, rng_for
from manual_bp import curvature
from manual_bp import nn as mnn
from manual_bp.curvature.columns import leaves
from manual_bp.verify import tolerance_for
from test_curvature_kfac import ggn_block

F64 = jnp.float64
NET_TOL = tolerance_for(F64, "network")
LOSS = "softmax_cross_entropy"
KINDS = ("rnn", "lstm", "gru", "attention", "blockwise", "embedding")
VOCAB = 5
RECURRENT = ("rnn", "lstm", "gru")

# weight -> its bias, as the layers hold them (no b_k in MultiHeadAttention, no b_h in RNN/LSTM)
BIASES = {
    "rnn": {"w_x": "b", "w_h": None},
    "lstm": {"w_x": "b", "w_h": None},
    "gru": {"w_x": "b_x", "w_h": "b_h"},
    "attention": {"wq": "bq", "wk": None, "wv": "bv", "wo": "bo"},
}
BIASES["blockwise"] = BIASES["attention"]
BIASES["embedding"] = {"table": None}


def _layer(kind):
    return {
        "rnn": lambda: mnn.RNN(2),
        "lstm": lambda: mnn.LSTM(2),
        "gru": lambda: mnn.GRU(2),
        "attention": lambda: mnn.MultiHeadAttention(2),
        "blockwise": lambda: mnn.MultiHeadAttention(2, block_size=2),
        "embedding": lambda: mnn.Embedding(VOCAB, 3),
    }[kind]()


def _case(kind, n, t, tag):
    rng = rng_for(tag, kind, n, t)
    net = mnn.serial(_layer(kind), mnn.Dense(3))
    if kind == "embedding":
        x = jnp.asarray(rng.integers(0, VOCAB, (n, t)), jnp.int32)
    else:
        x = jnp.asarray(rng.standard_normal((n, t, 3 if kind in RECURRENT else 4)), F64)
    params = net.init(jax.random.key(0), x.shape, F64)
    params = jax.tree.map(
        lambda p: p + 0.4 * jnp.asarray(rng.standard_normal(p.shape), F64), params
    )
    y = jnp.asarray(rng.integers(0, 3, (n, t)))
    path = next(p for p in params if p != "dense_1")
    return rng, net, params, x, y, path


def _by_weight(kind, entry):
    """kfac_factors' entry of a layer as {weight: Kronecker} (a one-weight layer's is bare)."""
    return {next(iter(BIASES[kind])): entry} if isinstance(entry, curvature.Kronecker) else entry


def _with_ones(a, bias):
    return jnp.concatenate([a, jnp.ones((*a.shape[:-1], 1), a.dtype)], axis=-1) if bias else a


def _matrix(grads, w, b):
    m = jnp.reshape(grads[w], (-1, grads[w].shape[-1]))
    return jnp.concatenate([m, grads[b][None]], axis=0) if b else m


# ---- a forward with a perturbation eps[w] (N, T, O) on the output of every projection w ----


def _cell(kind, p, x, eps):
    """hs (N, T, H) and the inputs of w_x and w_h, (x, h_{t−1})."""
    n, hidden = x.shape[0], p["h0"].shape[0]
    h0 = jnp.tile(p["h0"][None], (n, 1))
    c0 = jnp.tile(p["c0"][None], (n, 1)) if kind == "lstm" else None
    u = jnp.einsum("nti,ig->ntg", x, p["w_x"]) + p["b" if kind != "gru" else "b_x"][None, None]
    u = u + eps["w_x"]

    def step(carry, inputs):
        h, c = carry
        u_t, e_t = inputs
        v = h @ p["w_h"] + e_t
        if kind == "rnn":
            new, c = jnp.tanh(u_t + v), c
        elif kind == "lstm":
            i, f, g, o = jnp.split(u_t + v, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            new = jax.nn.sigmoid(o) * jnp.tanh(c)
        else:
            v = v + p["b_h"][None]
            r = jax.nn.sigmoid(u_t[:, :hidden] + v[:, :hidden])
            z = jax.nn.sigmoid(u_t[:, hidden : 2 * hidden] + v[:, hidden : 2 * hidden])
            cand = jnp.tanh(u_t[:, 2 * hidden :] + r * v[:, 2 * hidden :])
            new = (1 - z) * cand + z * h
        return (new, c), (new, h)

    tm = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731
    _, (hs, h_prev) = jax.lax.scan(step, (h0, c0), (tm(u), tm(eps["w_h"])))
    return tm(hs), {"w_x": x, "w_h": tm(h_prev)}


def _attention(p, x, eps):
    """Causal two-head attention y (N, T, D) and the inputs of wq, wk, wv (x) and wo (c)."""
    n, t, d = x.shape
    heads = lambda a: jnp.reshape(a, (n, t, 2, d // 2))  # noqa: E731
    q = heads(x @ p["wq"] + p["bq"][None, None] + eps["wq"])
    k = heads(x @ p["wk"] + eps["wk"])
    v = heads(x @ p["wv"] + p["bv"][None, None] + eps["wv"])
    z = jnp.einsum("nthe,nshe->nhts", q, k) / jnp.sqrt(d / 2)
    z = jnp.where(jnp.tril(jnp.ones((t, t), bool)), z, -jnp.inf)
    c = jnp.reshape(jnp.einsum("nhts,nshe->nthe", jax.nn.softmax(z, axis=-1), v), (n, t, d))
    return c @ p["wo"] + p["bo"][None, None] + eps["wo"], {"wq": x, "wk": x, "wv": x, "wo": c}


def _perturbed(kind, params, path, x, eps):
    p = params[path]
    if kind == "embedding":  # z_t = onehot(id_t) W
        h, inputs = p["table"][x] + eps["table"], {"table": jax.nn.one_hot(x, VOCAB, dtype=F64)}
    elif kind in RECURRENT:
        h, inputs = _cell(kind, p, x, eps)
    else:
        h, inputs = _attention(p, x, eps)
    return h @ params["dense_1"]["w"] + params["dense_1"]["b"][None, None], inputs


def _zeros(kind, params, path, x):
    p = params[path]
    return {w: jnp.zeros((*x.shape[:2], p[w].shape[-1]), F64) for w in BIASES[kind]}


@pytest.mark.parametrize("kind", KINDS)
def test_per_example_gradient_from_the_projections(kind):
    """Σ_t ã_nt δ_ntᵀ of each weight, for a random cotangent at the network's output, is the
    gradient of the reference network on example n alone with that cotangent."""
    rng, net, params, x, _, path = _case(kind, 2, 3, "per example")
    ct = random_cotangent(rng, jnp.zeros((2, 3, 3), F64))

    @jax.jit
    def manual(params, x, ct):
        _, tape = net.forward(params, x)
        _, deltas, _ = net.backward(params, tape, ct)
        ((layer, t, p),) = [(lay, t, p) for q, lay, t, p in leaves(net, tape, params) if q == path]
        return curvature.layer_projections(layer, p, t, deltas[path])

    @jax.jit
    def per_example(params, x, ct):
        def one(xn, cn):
            _, vjp = jax.vjp(lambda prm: reference.forward(net, prm, xn[None]), params)
            return vjp(cn[None])[0][path]

        return jax.vmap(one)(x, ct)

    projs = manual(params, x, ct)
    expected = per_example(params, x, ct)
    assert set(projs) == set(BIASES[kind])
    for w, b in BIASES[kind].items():
        for n in range(2):
            got = jnp.einsum("ti,to->io", projs[w].a[n], projs[w].delta[n])
            want = _matrix(jax.tree.map(lambda g, n=n: g[n], expected), w, b)
            assert_close(got, want, F64, f"{kind} {w} example {n}", tol=NET_TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_one_example_one_step_kflr_equals_the_ggn_block(kind):
    """N = T = 1 (the recurrent w_h's input is the learned h0): kron(A, G) of every weight is
    its exact GGN block, in both settings (which agree at one position)."""
    _, net, params, x, y, path = _case(kind, 1, 1, "one step")
    fns = [curvature.kfac_factors(net, LOSS, kind="kflr", setting=s) for s in curvature.SETTINGS]
    both = jax.jit(lambda p, x, y: [f(p, x, y) for f in fns])(params, x, y)
    blocks = {
        w: ggn_block(net, LOSS, params, x, y, path, w, b or "") for w, b in BIASES[kind].items()
    }
    floor = max(float(jnp.max(jnp.abs(v))) for v in blocks.values())
    for setting, got in zip(curvature.SETTINGS, both, strict=True):
        assert set(got) == {path, "dense_1"}
        got = {**got, path: _by_weight(kind, got[path])}
        assert set(got[path]) == set(BIASES[kind])
        for w, expected in blocks.items():
            k = got[path][w]
            what = f"{kind} {w} {setting}"
            assert_close(jnp.kron(k.a, k.g), expected, F64, what, tol=NET_TOL, scale_floor=floor)
        head = ggn_block(net, LOSS, params, x, y, "dense_1")
        assert_close(jnp.kron(got["dense_1"].a, got["dense_1"].g), head, F64, "head", tol=NET_TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_expand_and_reduce_match_their_definitions(kind):
    """N = 2, T = 3: A and G of each weight in both settings from the per-position Jacobians
    of the forward written out above (module docstring); the two settings differ."""
    _, net, params, x, y, path = _case(kind, 2, 3, "settings")
    eps = _zeros(kind, params, path, x)
    out, inputs = _perturbed(kind, params, path, x, eps)
    assert_close(out, reference.forward(net, params, x), F64, "written-out forward", tol=NET_TOL)
    m = out.size
    jac, hess = jax.jit(
        lambda eps, out: (
            jax.jacobian(lambda e: _perturbed(kind, params, path, x, e)[0])(eps),
            jnp.reshape(jax.hessian(lambda o: reference.FORWARD[LOSS](o, y))(out), (m, m)),
        )
    )(eps, out)
    fns = [curvature.kfac_factors(net, LOSS, kind="kflr", setting=s) for s in curvature.SETTINGS]
    expand, reduce = jax.jit(lambda p, x, y: [f(p, x, y)[path] for f in fns])(params, x, y)
    expand, reduce = _by_weight(kind, expand), _by_weight(kind, reduce)
    wants = {}
    for w, b in BIASES[kind].items():
        j = jnp.reshape(jac[w], (m, *eps[w].shape))  # (m, n, t, o)
        a = _with_ones(inputs[w], b)
        want_expand = (
            jnp.einsum("nti,ntj->ij", a, a) / 6,
            jnp.einsum("knto,kl,lntq->oq", j, hess, j),
        )
        a_bar, j_bar = jnp.mean(a, axis=1), jnp.sum(j, axis=2)
        want_reduce = (
            jnp.einsum("ni,nj->ij", a_bar, a_bar) / 2,
            jnp.einsum("kno,kl,lnq->oq", j_bar, hess, j_bar),
        )
        wants[w] = {"expand": want_expand, "reduce": want_reduce}
    # attention's Σ_t dk_t is exactly 0 (each row of dz sums to 0): W_k's reduce G is rounding
    # noise, judged on the scale of the largest factor of its kind
    floors = [
        max(float(jnp.max(jnp.abs(v[s][i]))) for v in wants.values() for s in v) for i in (0, 1)
    ]
    for w in BIASES[kind]:
        for setting, got in (("expand", expand), ("reduce", reduce)):
            for i, part in enumerate("AG"):
                what = f"{kind} {w} {setting} {part}"
                want = wants[w][setting][i]
                assert_close(got[w][i], want, F64, what, tol=NET_TOL, scale_floor=floors[i])
        k_exp, k_red = jnp.kron(*expand[w]), jnp.kron(*reduce[w])
        gap = float(jnp.max(jnp.abs(k_exp - k_red)) / jnp.max(jnp.abs(k_exp)))
        assert gap > 1e-2, f"{kind} {w}: expand and reduce agree to {gap:.2g}"


def test_layer_projections_errors():
    layer = mnn.RNN(2)._replace(name="r")
    x = jnp.zeros((1, 2, 3), F64)
    p = layer.init(jax.random.key(0), x.shape, F64)
    _, tape = layer.forward(p, x)
    with pytest.raises(TypeError, match=r"layer_projections: expected a manual_bp\.nn\.Layer"):
        curvature.layer_projections("rnn", p, tape, jnp.zeros((1, 2, 2), F64))
    with pytest.raises(
        ValueError,
        match=r"dout of layer 'r' must have its output's shape \(1, 2, 2\), got \(1, 2, 3\)",
    ):
        curvature.layer_projections(layer, p, tape, jnp.zeros((1, 2, 3), F64))
    tanh = mnn.Tanh()._replace(name="t")
    with pytest.raises(
        ValueError, match="layer_projections: layer 't' of kind 'tanh' has no Kronecker"
    ):
        curvature.layer_projections(tanh, {}, x, x)
    with pytest.raises(
        ValueError, match=r"kfac_factors: the network .* has no layer with Kronecker"
    ):
        net = mnn.serial(mnn.Tanh())
        curvature.kfac_factors(net, "mse", kind="kflr")({"tanh_0": {}}, x, x)

"""Kronecker factors of the GGN, KFAC and KFLR: Dense, Conv2D, recurrent and attention layers.

For a weight used as z = ã W̃ with W̃ = [W; b] (the bias as the last row, ã = [a, 1])
at P positions of each example, example n's gradient for column c of the loss's Hessian
factor is Σ_p ã_np δ_npcᵀ. The weights and their positions (:data:`WEIGHTS`):

* Dense: P = 1 on vectors, the T positions of (N, T, I) sequences;
* Conv2D: the output pixels, whose a are the input patches (Grosse & Martens 2016);
* RNN, LSTM, GRU: the T time steps of each of the cell's two projections, w_x (with the
  bias b, or b_x for the GRU) on x_t, and w_h on h_{t−1} (h0 at t = 1) — with b_h for the
  GRU, whose reset gate multiplies h_{t−1} W_h + b_h, so that projection has a delta of its
  own; δ is the delta of the projection's output from backpropagation through time, so the
  gradient Σ_t ã_t δ_tᵀ is exact although the weight also acts through the recursion;
* MultiHeadAttention: the T positions of its four projections, W_q, W_k, W_v (with b_q, b_v;
  the layer has no b_k) on x and W_o (with b_o) on the context c;
* Embedding: its table W (V, D) at the T positions, z_t = onehot(id_t) W, so A is diagonal
  (the ids' frequencies) and G = Σ δ δᵀ over the positions' deltas.

The GGN block of vec(W̃) (row-major: index (i, o)) is approximated by A ⊗ G
(``jnp.kron(A, G)``); two ways to treat the positions (Eschenhagen et al. 2023):

* **expand** — positions are examples of their own:
  A = (1/(N P)) Σ_{n,p} ã_np ã_npᵀ,  G = Σ_{n,p,c} δ_npc δ_npcᵀ.
  Exact when N = P = 1 (for the recurrent and attention layers: one example, T = 1), and for
  a linear output layer (Dense or Conv2D) with the mean squared error (whose Hessian is the
  same at every position) for every N and P.
* **reduce** — positions are summed first:
  A = (1/N) Σ_n ā_n ā_nᵀ with ā_n = (1/P) Σ_p ã_np,  G = Σ_{n,c} δ̄_nc δ̄_ncᵀ with δ̄ = Σ_p δ_np.
  Exact when N = 1 and ã_np does not depend on p, and for a layer followed by a mean over
  its positions and the mean squared error.

With P = 1 the two agree. **KFLR** uses the exact factor S (C = K columns per output
position); **KFAC** a Monte-Carlo one (``mc_samples`` sampled labels per position). The
deltas δ come from the handwritten backward pass on the columns of S, pushed through the
whole batch at once (:func:`~manual_bp.curvature.columns.position_columns`): L·C backward
passes for L output positions per example. A recurrent or attention layer's backward keeps
its projections' deltas inside its rule, so they come from one more pass of the rule's own
backward per column on the layer's residuals, from its output's delta
(:func:`~manual_bp.rules.recurrent.rnn_projection_deltas` and its LSTM and GRU siblings,
:func:`~manual_bp.rules.attention.attention_projection_deltas`); the blockwise attention
(``MultiHeadAttention(block_size=...)``) gets dq, dk, dv from three calls of its own backward
with the residual weights replaced (W_q = I, W_k = W_v = 0 makes its dx = dq W_qᵀ + dk W_kᵀ +
dv W_vᵀ equal dq; likewise dk, dv), no T×T array. Cost per weight beyond them: O(N P I'²) for
A and O(L C N P O²) for G. Networks with batch statistics are refused (their examples are
coupled). Factors are computed for the layers above inside ``serial`` and ``residual``
combinators; other layers have none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .._checks import require_positive_int
from ..nn import Layer, has_state
from ..rules import Rule, flash_attention, get_rule
from ..rules import recurrent as _rec
from ..rules.attention import attention_projection_deltas
from .columns import delta_of, leaves, position_columns, run_forward

__all__ = [
    "KFAC_KINDS",
    "SETTINGS",
    "WEIGHTS",
    "Kronecker",
    "Projection",
    "conv_patches",
    "kfac_factors",
    "layer_projections",
]

KFAC_KINDS = ("kfac", "kflr")
"""Monte-Carlo (``kfac``) or exact (``kflr``) loss factor."""

SETTINGS = ("expand", "reduce")
"""How positions of a weight-shared layer enter the factors (module docstring)."""

WEIGHTS: Mapping[str, Mapping[str, str]] = {
    "dense": {"w": "b"},
    "conv2d": {"w": "b"},
    "rnn": {"w_x": "b", "w_h": ""},
    "lstm": {"w_x": "b", "w_h": ""},
    "gru": {"w_x": "b_x", "w_h": "b_h"},
    "multi_head_attention": {"wq": "bq", "wk": "bk", "wv": "bv", "wo": "bo"},
    "embedding": {"table": ""},
}
"""The weight matrices that get Kronecker factors, by layer kind: weight name -> the name of
the bias that joins it as its last row ("" for none; a bias missing from the layer's params,
such as MultiHeadAttention's b_k, is left out)."""

_SINGLE = ("dense", "conv2d")
_RECURRENT = {
    "rnn": _rec.rnn_projection_deltas,
    "lstm": _rec.lstm_projection_deltas,
    "gru": _rec.gru_projection_deltas,
}


class Kronecker(NamedTuple):
    """A weight's factors: ``a`` (I', I') over the augmented inputs [a, 1] (I' = I, or I + 1
    with a bias), ``g`` (O, O) over the outputs; the GGN block of vec([W; b]) ≈ kron(a, g)."""

    a: Any
    g: Any


class Projection(NamedTuple):
    """One weight matrix's inputs and deltas by position: ``a`` (N, P, I'), the inputs ã_np
    (with a 1 appended when the weight has a bias), and ``delta`` (N, P, O), the deltas δ_np of
    its output z_np = ã_np W̃; the weight's gradient is Σ_{n,p} ã_np δ_npᵀ."""

    a: Any
    delta: Any


def conv_patches(layer: Layer, x: Any) -> Any:
    """The input patches of a Conv2D ``layer`` on x (N, H, W, C): (N, H', W', kh·kw·C), in
    the order of ``w.reshape(-1, features)`` (kernel row, column, channel), so that the layer's
    output is patches @ w.reshape(-1, features) + b."""
    config = dict(layer.config)
    if config["groups"] != 1:
        raise ValueError(
            f"conv_patches: layer {layer.name!r} has groups={config['groups']}; Kronecker "
            "factors are computed for groups=1 only"
        )
    kh, kw = config["kernel_size"]
    padding = config["padding"]
    patches = lax.conv_general_dilated_patches(
        x,
        (kh, kw),
        config["strides"],
        padding if isinstance(padding, str) else tuple(padding),
        rhs_dilation=config["dilation"],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    n, h, w, _ = patches.shape
    c = x.shape[-1]
    # lax orders the patch features (channel, row, column); the kernel is (row, column, channel).
    patches = jnp.reshape(patches, (n, h, w, c, kh, kw))
    return jnp.reshape(jnp.transpose(patches, (0, 1, 2, 4, 5, 3)), (n, h, w, kh * kw * c))


def _augmented(a: Any, with_bias: bool) -> Any:
    """ã (N, P, I'): a (N, ..., I) by position, with a 1 appended for a bias."""
    a = jnp.reshape(a, (a.shape[0], -1, a.shape[-1]))
    if with_bias:
        a = jnp.concatenate([a, jnp.ones((*a.shape[:-1], 1), a.dtype)], axis=-1)
    return a


def _biases(layer: Layer, params: Any) -> dict[str, bool]:
    """Weight name -> whether its bias is among ``params``."""
    return {w: bool(b) and b in params for w, b in WEIGHTS[layer.kind].items()}


def _flash_deltas(layer: Layer, res: Any, g: Any) -> tuple[Any, Any, Any]:
    """dq, dk, dv (N, T, D) of the blockwise rule, from its own backward: with the residual
    weights (W_q, W_k, W_v) replaced by (I, 0, 0), its dx = Σ d· W_·ᵀ is dq; likewise dk, dv."""
    eye, zero = jnp.eye(res.wq.shape[0], dtype=res.wq.dtype), jnp.zeros_like(res.wq)
    static = dict(layer.config)
    out = []
    for k in range(3):
        w = [eye if j == k else zero for j in range(3)]
        swapped = res._replace(wq=w[0], wk=w[1], wv=w[2])
        out.append(flash_attention.bwd(swapped, g, **static)[0])
    return tuple(out)


def _output_shape(layer: Layer, tape: Any) -> tuple[int, ...]:
    x = tape if layer.kind in (*_SINGLE, "embedding") else tape.x
    return tuple(layer.output_shape(tuple(x.shape)))


def layer_projections(layer: Layer, params: Any, tape: Any, dout: Any) -> dict[str, Projection]:
    """``{weight: Projection(ã, δ)}`` of one layer of a kind in :data:`WEIGHTS` (the weights
    and positions of the module docstring), from its forward ``tape`` and the cotangent
    ``dout`` of its output (one column; ``jax.vmap`` it over several). The inputs ã do not
    depend on ``dout``. So ∂C/∂W̃ = Σ_{n,p} ã_np δ_npᵀ for the cotangent ``dout``."""
    op = "layer_projections"
    if not isinstance(layer, Layer):
        raise TypeError(f"{op}: expected a manual_bp.nn.Layer, got {layer!r}")
    if layer.kind not in WEIGHTS:
        raise ValueError(
            f"{op}: layer {layer.name!r} of kind {layer.kind!r} has no Kronecker factors; "
            f"supported kinds: {tuple(WEIGHTS)}"
        )
    expected = _output_shape(layer, tape)
    if tuple(jnp.shape(dout)) != expected:
        raise ValueError(
            f"{op}: dout of layer {layer.name!r} must have its output's shape {expected}, "
            f"got {tuple(jnp.shape(dout))}"
        )
    bias = _biases(layer, params)
    if layer.kind in _SINGLE:
        a = conv_patches(layer, tape) if layer.kind == "conv2d" else tape
        d = jnp.reshape(dout, (dout.shape[0], -1, dout.shape[-1]))
        return {"w": Projection(_augmented(a, bias["w"]), d)}
    if layer.kind == "embedding":  # z_p = onehot(id_p) W: the inputs are one-hot rows
        a = jax.nn.one_hot(tape, params["table"].shape[0], dtype=dout.dtype)
        d = jnp.reshape(dout, (dout.shape[0], -1, dout.shape[-1]))
        return {"table": Projection(_augmented(a, False), d)}
    if layer.kind in _RECURRENT:
        r = _RECURRENT[layer.kind](tape, dout)
        ins = {"w_x": (r.x, r.delta_x), "w_h": (r.h_prev, r.delta_h)}
    elif "block_size" in layer.config:
        dq, dk, dv = _flash_deltas(layer, tape, dout)
        ins = {"wq": (tape.x, dq), "wk": (tape.x, dk), "wv": (tape.x, dv), "wo": (tape.c, dout)}
    else:
        r = attention_projection_deltas(tape, dout)
        ins = {"wq": (r.x, r.dq), "wk": (r.x, r.dk), "wv": (r.x, r.dv), "wo": (r.c, r.g)}
    return {w: Projection(_augmented(a, bias[w]), d) for w, (a, d) in ins.items()}


def _factors(a: Any, d: Any, setting: str) -> Kronecker:
    """A and G from ã (N, P, I') and the columns' deltas (C, N, P, O) (module docstring)."""
    if setting == "expand":
        big_a = jnp.einsum("npi,npj->ij", a, a) / (a.shape[0] * a.shape[1])
        return Kronecker(big_a, jnp.einsum("cnpo,cnpq->oq", d, d))
    mean_a, sum_d = jnp.mean(a, axis=1), jnp.sum(d, axis=2)
    big_a = jnp.einsum("ni,nj->ij", mean_a, mean_a) / a.shape[0]
    return Kronecker(big_a, jnp.einsum("cno,cnq->oq", sum_d, sum_d))


def kfac_factors(
    net: Layer,
    loss: Rule | str,
    *,
    kind: str = "kfac",
    setting: str = "expand",
    mc_samples: int = 1,
    train: bool = True,
) -> Callable[..., dict[str, Kronecker | dict[str, Kronecker]]]:
    """``f(params, x, y, key=None) -> {path: factors}`` for every layer of ``net`` of a kind in
    :data:`WEIGHTS`, by the path its delta is named by: a :class:`Kronecker` for a Dense,
    Conv2D or Embedding layer (one weight), and ``{weight: Kronecker}`` for a layer with
    several weight matrices (``{"w_x": ..., "w_h": ...}`` for RNN, LSTM and GRU;
    ``{"wq", "wk", "wv", "wo"}`` for MultiHeadAttention), each covering the weight and its
    bias. ``kind`` ``"kfac"`` (Monte-Carlo, ``mc_samples`` labels per output position drawn
    with ``key``) or ``"kflr"`` (exact); ``setting`` ``"expand"`` or ``"reduce"``.
    Definitions, exactness and cost: module docstring. Works under ``jax.jit``."""
    op = "kfac_factors"
    if not isinstance(net, Layer):
        raise TypeError(f"{op}: expected a manual_bp.nn.Layer as the network, got {net!r}")
    if kind not in KFAC_KINDS:
        raise ValueError(f"{op}: kind must be one of {KFAC_KINDS}, got {kind!r}")
    if setting not in SETTINGS:
        raise ValueError(f"{op}: setting must be one of {SETTINGS}, got {setting!r}")
    mc_samples = require_positive_int(op, "mc_samples", mc_samples)
    loss = get_rule(loss)
    if has_state(net):
        raise ValueError(
            f"{op}: the network {net.name or net.kind!r} keeps batch statistics, which couple "
            "the examples; Kronecker factors need independent examples"
        )
    samples = mc_samples if kind == "kfac" else None

    def f(params, x, y, key=None):
        run = run_forward(op, net, loss, params, x, y, key=key, mc_samples=samples, train=train)
        cols = position_columns(run.factor)
        deltas = jax.vmap(lambda dy: net.backward(params, run.tape, dy)[1])(cols)
        factors = {}
        for path, layer, tape, p in leaves(net, run.tape, params):
            if layer.kind not in WEIGHTS:
                continue
            d_out = delta_of(deltas, path, cols)
            axes = {w: Projection(None, 0) for w in WEIGHTS[layer.kind]}
            projs = jax.vmap(
                lambda g, layer=layer, p=p, tape=tape: layer_projections(layer, p, tape, g),
                out_axes=axes,
            )(d_out)
            blocks = {w: _factors(pr.a, pr.delta, setting) for w, pr in projs.items()}
            (only, *more) = blocks
            factors[path] = blocks if more else blocks[only]
        if not factors:
            raise ValueError(
                f"{op}: the network {net.name or net.kind!r} has no layer with Kronecker "
                f"factors (kinds {tuple(WEIGHTS)})"
            )
        return factors

    return f

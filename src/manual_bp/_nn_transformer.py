"""Layers of the transformer family (re-exported by :mod:`manual_bp.nn`).

Normalization (:func:`LayerNorm`, :func:`RMSNorm`), lookups (:func:`Embedding`,
:func:`PositionalEmbedding`), :func:`MultiHeadAttention`, the :func:`residual` combinator and
the model :func:`TransformerLM`. Index letters: ``n`` batch, ``t`` time, ``d`` features.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .nn import Dense, Gelu, Layer, check_context, check_layer_name, child_context, serial
from .rules import attention as _attention
from .rules import embedding as _embedding
from .rules import normalization as _norm

__all__ = [
    "Embedding",
    "LayerNorm",
    "MultiHeadAttention",
    "PositionalEmbedding",
    "RMSNorm",
    "TransformerLM",
    "residual",
]

_WEIGHTS = ("wq", "wk", "wv", "wo")
_BIASES = ("bq", "bv", "bo")  # no b_k: it shifts all of a query's scores alike (see below)


def _positive_int(op: str, arg: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{op}: {arg} must be a positive int, got {value!r}")
    return value


def _same_shape(shape):
    return tuple(shape)


def LayerNorm(eps: float = 1e-5, *, name: str | None = None) -> Layer:
    """y = x̂ γ + β over the last axis, x̂ = (x − μ)/√(σ² + ε); γ starts at 1, β at 0.

    The tape is the rule's residuals (x̂, 1/√(σ² + ε), γ).
    """
    _norm._require_eps("LayerNorm", eps)

    def init(key, input_shape, dtype=jnp.float32):
        del key
        d = int(input_shape[-1])
        return {"gamma": jnp.ones((d,), dtype), "beta": jnp.zeros((d,), dtype)}

    def forward(params, x, ctx=None):
        return _norm.layer_norm.fwd(x, params["gamma"], params["beta"], eps=eps)

    def backward(params, tape, dy):
        del params
        dx, dgamma, dbeta = _norm.layer_norm.bwd(tape, dy, eps=eps)
        return {"gamma": dgamma, "beta": dbeta}, {}, dx

    return Layer(name, "layer_norm", {"eps": eps}, init, forward, backward, _same_shape)


def RMSNorm(eps: float = 1e-6, *, name: str | None = None) -> Layer:
    """y = x γ / √(mean_d x² + ε) over the last axis; γ starts at 1."""
    _norm._require_eps("RMSNorm", eps)

    def init(key, input_shape, dtype=jnp.float32):
        del key
        return {"gamma": jnp.ones((int(input_shape[-1]),), dtype)}

    def forward(params, x, ctx=None):
        return _norm.rms_norm.fwd(x, params["gamma"], eps=eps)

    def backward(params, tape, dy):
        del params
        dx, dgamma = _norm.rms_norm.bwd(tape, dy, eps=eps)
        return {"gamma": dgamma}, {}, dx

    return Layer(name, "rms_norm", {"eps": eps}, init, forward, backward, _same_shape)


def Embedding(vocab: int, features: int, *, name: str | None = None) -> Layer:
    """y[..., d] = table[ids[...], d]: integer ids (...) in, vectors (..., D) out.

    ``params = {"table": (V, D)}``, drawn from N(0, 1). The input is not differentiable:
    ``backward`` returns ``dx = None`` (an embedding is the first layer of a network). An id
    outside [0, V) gives a NaN row (see :func:`manual_bp.rules.embedding`).
    """
    vocab = _positive_int("Embedding", "vocab", vocab)
    features = _positive_int("Embedding", "features", features)

    def init(key, input_shape, dtype=jnp.float32):
        del input_shape
        return {"table": jax.random.normal(key, (vocab, features), dtype)}

    def forward(params, ids, ctx=None):
        y, (ids, _) = _embedding.embedding.fwd(ids, params["table"])
        return y, ids

    def backward(params, tape, dy):
        dids, dtable = _embedding.embedding.bwd((tape, params["table"]), dy)
        return {"table": dtable}, {}, dids

    def output_shape(input_shape):
        return (*tuple(input_shape), features)

    config = {"vocab": vocab, "features": features}
    return Layer(name, "embedding", config, init, forward, backward, output_shape)


def PositionalEmbedding(max_len: int, *, name: str | None = None) -> Layer:
    """y[n, t, d] = x[n, t, d] + table[t, d]: a learned vector per position, for T <= max_len.

    ``params = {"table": (max_len, D)}``, drawn from N(0, 0.02²).
    """
    max_len = _positive_int("PositionalEmbedding", "max_len", max_len)

    def init(key, input_shape, dtype=jnp.float32):
        shape = (max_len, int(input_shape[-1]))
        return {"table": 0.02 * jax.random.normal(key, shape, dtype)}

    def forward(params, x, ctx=None):
        return _embedding.add_positions.fwd(x, params["table"])

    def backward(params, tape, dy):
        del params
        dx, dtable = _embedding.add_positions.bwd(tape, dy)
        return {"table": dtable}, {}, dx

    config = {"max_len": max_len}
    return Layer(name, "positional_embedding", config, init, forward, backward, _same_shape)


def MultiHeadAttention(num_heads: int, *, causal: bool = True, name: str | None = None) -> Layer:
    """Self-attention over x (N, T, D) with ``num_heads`` heads of D / num_heads features.

    ``params``: ``wq, wk, wv, wo`` (D, D) (LeCun normal) and ``bq, bv, bo`` (D,) (zero). There
    is no key bias: b_k adds q_t·b_k to every score of query t, which softmax ignores, so its
    gradient is identically 0 and it would be a parameter that never moves (the rule is
    called with b_k = 0).
    With ``causal`` (the default) time step t attends to steps s <= t. The layer has no
    padding mask; the rule :func:`manual_bp.rules.multi_head_attention` takes one.
    """
    num_heads = _positive_int("MultiHeadAttention", "num_heads", num_heads)
    if not isinstance(causal, bool):
        raise TypeError(f"MultiHeadAttention: causal must be a bool, got {causal!r}")
    static = {"num_heads": num_heads, "causal": causal}
    w_init = jax.nn.initializers.lecun_normal()

    def init(key, input_shape, dtype=jnp.float32):
        d = int(input_shape[-1])
        if d % num_heads:
            raise ValueError(f"MultiHeadAttention: num_heads={num_heads} must divide D={d}")
        keys = jax.random.split(key, len(_WEIGHTS))
        params = {w: w_init(k, (d, d), dtype) for w, k in zip(_WEIGHTS, keys, strict=True)}
        params.update({b: jnp.zeros((d,), dtype) for b in _BIASES})
        return params

    def forward(params, x, ctx=None):
        p = params
        bk = jnp.zeros_like(p["bq"])
        weights = [p[w] for w in _WEIGHTS]
        biases = (p["bq"], bk, p["bv"], p["bo"])
        return _attention.multi_head_attention.fwd(x, *weights, *biases, None, **static)

    def backward(params, tape, dy):
        del params
        dx, dwq, dwk, dwv, dwo, dbq, _, dbv, dbo, _ = _attention.multi_head_attention.bwd(
            tape, dy, **static
        )
        grads = {"wq": dwq, "wk": dwk, "wv": dwv, "wo": dwo, "bq": dbq, "bv": dbv, "bo": dbo}
        return grads, {}, dx

    return Layer(name, "multi_head_attention", static, init, forward, backward, _same_shape)


def residual(block: Layer, *, name: str | None = None) -> Layer:
    """y = x + block(x): a skip connection around ``block`` (whose output has x's shape).

    x feeds two paths, so ∂C/∂x is their sum (the lecture's sum over every path):
    dx = dy + block's dx. ``params = {block.name: block params}``; an unnamed block is named
    ``f"{block.kind}_0"``; the block runs in the context ``ctx.child(0, block.name)``.
    ``deltas`` holds ``block.name`` → dy (∂C/∂(block output) = ∂C/∂y)
    and the block's own deltas under ``block.name + "/"``.
    """
    if not isinstance(block, Layer):
        raise TypeError(f"residual: block must be a manual_bp.nn.Layer, got {block!r}")
    check_layer_name("residual", name)
    check_layer_name("residual: block", block.name)
    block = block if block.name else block._replace(name=f"{block.kind}_0")
    b = block.name

    def init(key, input_shape, dtype=jnp.float32):
        out = block.output_shape(tuple(input_shape))
        if tuple(out) != tuple(input_shape):
            raise ValueError(
                f"residual: block {b!r} must keep the input shape {tuple(input_shape)}, "
                f"its output is {tuple(out)}"
            )
        return {b: block.init(key, input_shape, dtype)}

    def init_state(key, input_shape, dtype=jnp.float32):
        return {b: block.init_state(key, input_shape, dtype)}

    def forward(params, x, ctx=None):
        check_context(name or "residual", ctx)
        h, tape = block.forward(params[b], x, child_context(ctx, 0, b))
        if ctx is not None:
            ctx.tap(b, h)
        return x + h, tape

    def state_of(tape):
        return {b: block.state_of(tape)}

    def backward(params, tape, dy):
        grads, inner, dx_block = block.backward(params[b], tape, dy)
        deltas = {f"{b}/{k}": v for k, v in inner.items()}
        deltas[b] = dy
        return {b: grads}, deltas, dy + dx_block  # both paths into x

    return Layer(
        name, "residual", {}, init, forward, backward, _same_shape, (block,), init_state, state_of
    )


def TransformerLM(
    vocab: int,
    *,
    max_len: int,
    features: int = 16,
    num_heads: int = 2,
    num_blocks: int = 2,
    mlp_ratio: int = 2,
    name: str | None = None,
) -> Layer:
    """A pre-LayerNorm causal language model: ids (N, T) -> logits (N, T, vocab).

    ``embed`` → ``pos`` → ``num_blocks`` × [``attn_i`` = x + MHA(LN(x)),
    ``mlp_i`` = x + Dense(Gelu(Dense(LN(x))))] → ``final_norm`` → ``head`` (Dense(vocab)).
    Inside block i the deltas are named ``attn_i/block/norm``, ``attn_i/block/mha``,
    ``mlp_i/block/up`` and so on.
    Pair it with ``softmax_cross_entropy`` on integer targets (N, T).
    """
    _positive_int("TransformerLM", "num_blocks", num_blocks)
    hidden = _positive_int("TransformerLM", "mlp_ratio", mlp_ratio) * features
    layers = [Embedding(vocab, features, name="embed"), PositionalEmbedding(max_len, name="pos")]
    for i in range(num_blocks):
        attn = serial(
            LayerNorm(name="norm"),
            MultiHeadAttention(num_heads, causal=True, name="mha"),
            name="block",
        )
        mlp = serial(
            LayerNorm(name="norm"),
            Dense(hidden, name="up"),
            Gelu(name="gelu"),
            Dense(features, name="down"),
            name="block",
        )
        layers += [residual(attn, name=f"attn_{i}"), residual(mlp, name=f"mlp_{i}")]
    layers += [LayerNorm(name="final_norm"), Dense(vocab, name="head")]
    return serial(*layers, name=name)

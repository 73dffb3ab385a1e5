"""Layers of the transformer family (part of :mod:`manual_bp.nn`).

Normalization over features (:func:`LayerNorm`, :func:`RMSNorm`), lookups (:func:`Embedding`,
:func:`PositionalEmbedding`) and :func:`MultiHeadAttention`; :func:`~manual_bp.nn.residual`
and :func:`~manual_bp.nn.TransformerLM` put them together. Index letters: ``n`` batch,
``t`` time, ``d`` features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._checks import require_positive_int
from ..rules import add_positions, embedding, flash_attention, multi_head_attention
from ..rules import normalization as _norm
from ..rules.lookup import EmbeddingResiduals
from .core import Layer, same_shape

__all__ = [
    "Embedding",
    "LayerNorm",
    "MultiHeadAttention",
    "PositionalEmbedding",
    "RMSNorm",
]

_WEIGHTS = ("wq", "wk", "wv", "wo")
_BIASES = ("bq", "bv", "bo")  # no b_k: it shifts all of a query's scores alike (see below)


def LayerNorm(eps: float = 1e-5, *, name: str | None = None) -> Layer:
    """y = x̂ γ + β over the last axis, x̂ = (x − μ)/√(σ² + ε); γ starts at 1, β at 0.

    The tape is the rule's residuals (x̂, 1/√(σ² + ε), γ).
    """
    _norm.require_eps("LayerNorm", eps)

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

    def jvp(params, tape, dparams, dx):
        del params
        return _norm.layer_norm.jvp(tape, dx, dparams["gamma"], dparams["beta"], eps=eps)

    config = {"eps": eps}
    return Layer(name, "layer_norm", config, init, forward, backward, same_shape, jvp=jvp)


def RMSNorm(eps: float = 1e-6, *, name: str | None = None) -> Layer:
    """y = x γ / √(mean_d x² + ε) over the last axis; γ starts at 1."""
    _norm.require_eps("RMSNorm", eps)

    def init(key, input_shape, dtype=jnp.float32):
        del key
        return {"gamma": jnp.ones((int(input_shape[-1]),), dtype)}

    def forward(params, x, ctx=None):
        return _norm.rms_norm.fwd(x, params["gamma"], eps=eps)

    def backward(params, tape, dy):
        del params
        dx, dgamma = _norm.rms_norm.bwd(tape, dy, eps=eps)
        return {"gamma": dgamma}, {}, dx

    def jvp(params, tape, dparams, dx):
        del params
        return _norm.rms_norm.jvp(tape, dx, dparams["gamma"], eps=eps)

    config = {"eps": eps}
    return Layer(name, "rms_norm", config, init, forward, backward, same_shape, jvp=jvp)


def Embedding(vocab: int, features: int, *, name: str | None = None) -> Layer:
    """y[..., d] = table[ids[...], d]: integer ids (...) in, vectors (..., D) out.

    ``params = {"table": (V, D)}``, drawn from N(0, 1). The input is not differentiable:
    ``backward`` returns ``dx = None`` (an embedding is the first layer of a network). An id
    outside [0, V) gives a NaN row (see :func:`manual_bp.rules.embedding`).
    """
    vocab = require_positive_int("Embedding", "vocab", vocab)
    features = require_positive_int("Embedding", "features", features)

    def init(key, input_shape, dtype=jnp.float32):
        del input_shape
        return {"table": jax.random.normal(key, (vocab, features), dtype)}

    def forward(params, ids, ctx=None):
        y, res = embedding.fwd(ids, params["table"])
        return y, res.ids

    def backward(params, tape, dy):
        dids, dtable = embedding.bwd(EmbeddingResiduals(tape, params["table"]), dy)
        return {"table": dtable}, {}, dids

    def jvp(params, tape, dparams, dids):  # ids take no tangent
        del dids
        return embedding.jvp(EmbeddingResiduals(tape, params["table"]), None, dparams["table"])

    def output_shape(input_shape):
        return (*tuple(input_shape), features)

    config = {"vocab": vocab, "features": features}
    return Layer(name, "embedding", config, init, forward, backward, output_shape, jvp=jvp)


def PositionalEmbedding(max_len: int, *, name: str | None = None) -> Layer:
    """y[n, t, d] = x[n, t, d] + table[t, d]: a learned vector per position, for T <= max_len.

    ``params = {"table": (max_len, D)}``, drawn from N(0, 0.02²).
    """
    max_len = require_positive_int("PositionalEmbedding", "max_len", max_len)

    def init(key, input_shape, dtype=jnp.float32):
        shape = (max_len, int(input_shape[-1]))
        return {"table": 0.02 * jax.random.normal(key, shape, dtype)}

    def forward(params, x, ctx=None):
        return add_positions.fwd(x, params["table"])

    def backward(params, tape, dy):
        del params
        dx, dtable = add_positions.bwd(tape, dy)
        return {"table": dtable}, {}, dx

    def jvp(params, tape, dparams, dx):
        del params
        return add_positions.jvp(tape, dx, dparams["table"])

    config = {"max_len": max_len}
    return Layer(name, "positional_embedding", config, init, forward, backward, same_shape, jvp=jvp)


def MultiHeadAttention(
    num_heads: int,
    *,
    causal: bool = True,
    block_size: int | None = None,
    name: str | None = None,
) -> Layer:
    """Self-attention over x (N, T, D) with ``num_heads`` heads of D / num_heads features.

    ``params``: ``wq, wk, wv, wo`` (D, D) (LeCun normal) and ``bq, bv, bo`` (D,) (zero). There
    is no key bias: b_k adds q_t·b_k to every score of query t, which softmax ignores, so its
    gradient is identically 0 and it would be a parameter that never moves (the rule is
    called with b_k = 0).
    With ``causal`` (the default) time step t attends to steps s <= t. The layer has no
    padding mask; the rule :func:`manual_bp.rules.multi_head_attention` takes one.
    With ``block_size`` the layer runs the blockwise rule
    :func:`manual_bp.rules.flash_attention` over blocks of that many keys: the same function,
    with a tape linear in T instead of the T×T probabilities.
    """
    num_heads = require_positive_int("MultiHeadAttention", "num_heads", num_heads)
    if not isinstance(causal, bool):
        raise TypeError(f"MultiHeadAttention: causal must be a bool, got {causal!r}")
    static = {"num_heads": num_heads, "causal": causal}
    rule = multi_head_attention
    if block_size is not None:
        static["block_size"] = require_positive_int("MultiHeadAttention", "block_size", block_size)
        rule = flash_attention
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
        return rule.fwd(x, *weights, *biases, None, **static)

    def backward(params, tape, dy):
        del params
        dx, dwq, dwk, dwv, dwo, dbq, _, dbv, dbo, _ = rule.bwd(tape, dy, **static)
        grads = {"wq": dwq, "wk": dwk, "wv": dwv, "wo": dwo, "bq": dbq, "bv": dbv, "bo": dbo}
        return grads, {}, dx

    def jvp(params, tape, dparams, dx):  # b_k is 0 and takes no tangent; nor does the mask
        del params
        d = dparams
        weights = [d[w] for w in _WEIGHTS]
        biases = (d["bq"], jnp.zeros_like(d["bq"]), d["bv"], d["bo"])
        return rule.jvp(tape, dx, *weights, *biases, None, **static)

    kind = "multi_head_attention"
    return Layer(name, kind, static, init, forward, backward, same_shape, jvp=jvp)

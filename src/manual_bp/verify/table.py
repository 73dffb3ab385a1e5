"""The audit table: one row per way of calling a rule, used by the test suite and by
``manual-bp verify``.

A row says how to draw the rule's primals for a shape and dtype (``make``), which primals are
differentiable (the others must get a ``None`` cotangent), its static keywords, the shapes and
dtypes it is checked at, and which extra input domains apply:

* ``extreme``: the float primals scaled to |x| ≈ 1e3 (float32 and float64);
* ``masked``: some logits set to −inf (never a whole row).

``tests/test_coverage.py`` fails when a registered rule has no row here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

__all__ = ["ALL_DTYPES", "BF16", "F32", "F64", "ROWS", "Row", "unary"]

F64, F32, BF16 = jnp.float64, jnp.float32, jnp.bfloat16
ALL_DTYPES = (F64, F32, BF16)


@dataclasses.dataclass(frozen=True, eq=False)
class Row:
    """One way of calling a rule, checked at every shape × dtype × input domain: the audit's
    unit, for the library's rules (:data:`ROWS`) and for a table of the user's own
    (``manual-bp verify --module``, :mod:`manual_bp.testing`).

    ``Row("swish_beta", unary, ((4, 5), (2, 3, 4)), static={"beta": 1.5})`` checks
    ``RULES["swish_beta"]`` (or the module's ``RULES["swish_beta"]``) with β = 1.5 at two
    shapes, in float64, float32 and bfloat16, on ordinary inputs and at |x| ≈ 1e3.
    """

    rule: str
    """The rule's name (in the registry, or in the module's ``RULES``)."""
    make: Callable[[np.random.Generator, Any, Any, str], tuple]
    """``make(rng, shape, dtype, domain) -> primals``: the rule's inputs for one case, drawn
    from ``rng`` (seeded by the case); ``domain`` is one of :meth:`domains`. :func:`unary`
    draws one float array of ``shape``."""
    shapes: tuple
    """The shapes to check at; each is handed to ``make`` as it is (a shape, or any tuple
    ``make`` reads, such as ``((4, 5), 3)`` for dense's input shape and features)."""
    diff: tuple[int, ...] = (0,)
    """The differentiable primals, by position; the others (integer labels, keys, masks) must
    get ``None`` cotangents."""
    static: dict = dataclasses.field(default_factory=dict)
    """The rule's static keywords, handed to ``fwd`` and ``bwd``."""
    label: str = ""
    """The row's name where one rule has several rows (default: the rule's name)."""
    dtypes: tuple = ALL_DTYPES
    """The dtypes to check in (float64 cases also get float64 finite differences)."""
    extreme: bool = True
    """Also check at |x| ≈ 1e3 (the ``"extreme"`` domain; not in bfloat16)."""
    masked: bool = False
    """Also check with some logits at −inf (the ``"masked"`` domain)."""
    zero: tuple[int, ...] = ()
    """Differentiable primals whose true cotangent is identically zero (attention's key bias:
    it shifts all of a query's scores alike, which softmax ignores)."""

    @property
    def id(self) -> str:
        """The row's name: ``label``, or the rule's name."""
        return self.label or self.rule

    def domains(self) -> tuple[str, ...]:
        """The input domains the row is checked on: ``"normal"``, then ``"extreme"`` and
        ``"masked"`` where they apply."""
        return ("normal",) + ("extreme",) * self.extreme + ("masked",) * self.masked


# ---- primal generators: (rng, shape, dtype, domain) -> tuple of arrays -------------------


def _float(rng, shape, dtype, domain, scale=1.5):
    """Standard normal × scale; in the extreme domain, |x| spread around 1e3 with both signs."""
    if domain == "extreme":
        x = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(500.0, 1500.0, size=shape)
    else:
        x = scale * rng.standard_normal(shape)
    return jnp.asarray(x, dtype)


def _mask(rng, x, axis=-1):
    """Set about a third of the entries to −inf, keeping the largest entry of each row finite."""
    x = np.asarray(x, np.float64)
    keep = x == np.max(x, axis=axis, keepdims=True)
    drop = (rng.uniform(size=x.shape) < 0.35) & ~keep
    return np.where(drop, -np.inf, x)


def unary(rng, shape, dtype, domain):
    """One float primal of ``shape``: standard normal × 1.5, or |x| ≈ 1e3 with both signs in
    the ``"extreme"`` domain."""
    return (_float(rng, shape, dtype, domain),)


def along_axis(axis):
    def make(rng, shape, dtype, domain):
        if domain == "masked":
            z = _mask(rng, 3.0 * rng.standard_normal(shape), axis=axis)
            return (jnp.asarray(z, dtype),)
        return (_float(rng, shape, dtype, domain, scale=3.0),)

    return make


def dense_args(rng, shape, dtype, domain):
    x_shape, features = shape
    x = _float(rng, x_shape, dtype, domain)
    w = _float(rng, (x_shape[-1], features), dtype, "normal", scale=0.7)
    b = _float(rng, (features,), dtype, "normal", scale=0.3)
    return x, w, b


def matmul_args(rng, shape, dtype, domain):
    a_shape, b_shape = shape
    return _float(rng, a_shape, dtype, domain), _float(rng, b_shape, dtype, "normal", scale=0.7)


def mse_args(rng, shape, dtype, domain):
    return _float(rng, shape, dtype, domain), _float(rng, shape, dtype, domain)


def ce_int_args(rng, shape, dtype, domain):
    logits = np.asarray(_float(rng, shape, F64, domain, scale=2.0))
    labels = rng.integers(0, shape[-1], size=shape[:-1])
    if domain == "masked":
        masked = _mask(rng, logits)
        chosen = np.take_along_axis(logits, labels[..., None], axis=-1)
        np.put_along_axis(masked, labels[..., None], chosen, axis=-1)  # the label stays finite
        logits = masked
    return jnp.asarray(logits, dtype), jnp.asarray(labels, jnp.int32)


def ce_prob_args(rng, shape, dtype, domain):
    logits = _float(rng, shape, dtype, domain, scale=2.0)
    t = rng.uniform(size=shape) ** 3
    t = t / t.sum(axis=-1, keepdims=True)
    return logits, jnp.asarray(t, dtype)


def bce_args(rng, shape, dtype, domain):
    logits = _float(rng, shape, dtype, domain, scale=2.0)
    return logits, jnp.asarray(rng.uniform(size=shape), dtype)


ELEMENTWISE_SHAPES = ((7,), (4, 5), (2, 3, 4))

ROWS: tuple[Row, ...] = (
    Row("dense", dense_args, (((5,), 3), ((4, 5), 3), ((2, 3, 5), 4)), diff=(0, 1, 2)),
    Row(
        "matmul",
        matmul_args,
        (((4, 3), (3, 2)), ((2, 4, 3), (3, 2)), ((2, 4, 3), (2, 3, 5))),
        diff=(0, 1),
    ),
    Row("sigmoid", unary, ELEMENTWISE_SHAPES),
    Row("tanh", unary, ELEMENTWISE_SHAPES),
    Row("relu", unary, ELEMENTWISE_SHAPES),
    Row("leaky_relu", unary, ELEMENTWISE_SHAPES),
    Row("leaky_relu", unary, ((4, 5),), static={"negative_slope": 0.2}, label="leaky_relu_0.2"),
    Row("elu", unary, ELEMENTWISE_SHAPES),
    Row("elu", unary, ((4, 5),), static={"alpha": 0.5}, label="elu_alpha0.5"),
    Row("gelu", unary, ELEMENTWISE_SHAPES, label="gelu_exact"),
    Row("gelu", unary, ELEMENTWISE_SHAPES, static={"approximate": True}, label="gelu_tanh"),
    Row("softplus", unary, ELEMENTWISE_SHAPES),
    Row("silu", unary, ELEMENTWISE_SHAPES),
    Row("softmax", along_axis(-1), ELEMENTWISE_SHAPES, masked=True),
    Row(
        "softmax", along_axis(0), ((4, 6),), static={"axis": 0}, label="softmax_axis0", masked=True
    ),
    Row("log_softmax", along_axis(-1), ELEMENTWISE_SHAPES, masked=True),
    Row(
        "log_softmax",
        along_axis(0),
        ((4, 6),),
        static={"axis": 0},
        label="log_softmax_axis0",
        masked=True,
    ),
    Row("logsumexp", along_axis(-1), ELEMENTWISE_SHAPES, masked=True),
    Row(
        "logsumexp",
        along_axis(1),
        ((3, 4, 5),),
        static={"axis": 1},
        label="logsumexp_axis1",
        masked=True,
    ),
    Row("mse", mse_args, ((6,), (4, 3), (2, 3, 2)), diff=(0, 1)),
    Row(
        "softmax_cross_entropy",
        ce_int_args,
        ((4, 5), (2, 3, 6)),
        diff=(0,),
        label="softmax_cross_entropy_int",
        masked=True,
    ),
    Row(
        "softmax_cross_entropy",
        ce_prob_args,
        ((4, 5), (2, 3, 6)),
        diff=(0, 1),
        label="softmax_cross_entropy_prob",
    ),
    Row("sigmoid_binary_cross_entropy", bce_args, ((6,), (4, 3)), diff=(0, 1)),
)


# ---- convolution and pooling (rules/conv.py) ------------------------------------------------
def conv_args(rng, shape, dtype, domain):
    """x (N, H, W, C), w (kh, kw, C / groups, O), b (O,) for shape = (x_shape, w_shape)."""
    x_shape, w_shape = shape
    x = _float(rng, x_shape, dtype, domain)
    w = _float(rng, w_shape, dtype, "normal", scale=0.5)
    return x, w, _float(rng, w_shape[-1:], dtype, "normal", scale=0.3)


def distinct_image(rng, shape, dtype, domain):
    """An NHWC image of distinct values k/32 (exact in bfloat16 for up to 256 entries), so no
    window has a tied maximum; the extreme domain draws |x| ≈ 1e3 instead."""
    if domain == "extreme":
        return (_float(rng, shape, dtype, domain),)
    size = int(np.prod(shape))
    if size > 256:
        raise ValueError(f"distinct_image: at most 256 entries, got shape {shape}")
    k = rng.permutation(size) - size // 2
    return (jnp.asarray(np.reshape(k / 32.0, shape), dtype),)


# |x| ≈ 1e3 inputs on the default rows; the rows for each setting check the plain domain.
CONV_ROWS: tuple[Row, ...] = (
    Row("conv2d", conv_args, (((2, 5, 5, 3), (3, 3, 3, 4)),), diff=(0, 1, 2)),
    Row(
        "conv2d",
        conv_args,
        (((2, 7, 6, 3), (3, 3, 3, 2)),),
        diff=(0, 1, 2),
        static={"strides": (2, 2), "padding": "SAME"},
        label="conv2d_stride2_same",
        extreme=False,
    ),
    Row(
        "conv2d",
        conv_args,
        (((2, 5, 6, 2), (3, 2, 2, 3)),),
        diff=(0, 1, 2),
        static={"strides": (2, 1), "padding": ((2, 0), (1, 3))},
        label="conv2d_explicit_asymmetric",
        extreme=False,
    ),
    Row(
        "conv2d",
        conv_args,
        (((2, 7, 7, 2), (3, 3, 2, 3)),),
        diff=(0, 1, 2),
        static={"dilation": (2, 2), "padding": "VALID"},
        label="conv2d_dilation2_valid",
        extreme=False,
    ),
    Row(
        "conv2d",
        conv_args,
        (((2, 5, 5, 4), (3, 3, 2, 6)),),
        diff=(0, 1, 2),
        static={"groups": 2},
        label="conv2d_groups2",
        extreme=False,
    ),
    Row(
        "conv2d",
        conv_args,
        (((1, 9, 8, 6), (3, 2, 2, 6)),),
        diff=(0, 1, 2),
        static={"groups": 3, "strides": (2, 3), "dilation": (2, 1), "padding": ((1, 2), (0, 1))},
        label="conv2d_groups3_stride_dilation_explicit",
        extreme=False,
    ),
    Row("max_pool2d", distinct_image, ((2, 5, 7, 2),)),
    Row(
        "max_pool2d",
        distinct_image,
        ((2, 5, 6, 2),),
        static={"window": (3, 2), "strides": (2, 1), "padding": ((1, 1), (0, 1))},
        label="max_pool2d_overlap_explicit",
        extreme=False,
    ),
    Row("avg_pool2d", unary, ((2, 5, 7, 2),)),
    Row(
        "avg_pool2d",
        unary,
        ((2, 5, 6, 2),),
        static={"window": (3, 3), "strides": (2, 1), "padding": "SAME"},
        label="avg_pool2d_overlap_same",
        extreme=False,
    ),
    Row("flatten", unary, ((3, 2, 2, 2),), extreme=False),
)

# ---- recurrent networks (rules/recurrent.py) ------------------------------------------------


def recurrent_args(kind):
    """Primals of ``rnn``/``lstm``/``gru`` for a shape (N, T, I, H): x (scaled to |x| ≈ 1e3 in
    the extreme domain), states of size ~0.5, weights ~0.5 and biases ~0.3."""
    gates, states, biases = {"rnn": (1, 1, 1), "lstm": (4, 2, 1), "gru": (3, 1, 2)}[kind]

    def make(rng, shape, dtype, domain):
        n, t, i, h = shape
        x = _float(rng, (n, t, i), dtype, domain)
        s = tuple(_float(rng, (n, h), dtype, "normal", scale=0.5) for _ in range(states))
        w_x = _float(rng, (i, gates * h), dtype, "normal", scale=0.5)
        w_h = _float(rng, (h, gates * h), dtype, "normal", scale=0.5)
        b = tuple(_float(rng, (gates * h,), dtype, "normal", scale=0.3) for _ in range(biases))
        return (x, *s, w_x, w_h, *b)

    return make


# (N, T, I, H): one step and five; each scan compiles once per shape and dtype.
RECURRENT_SHAPES = ((2, 1, 3, 4), (3, 5, 2, 3))

RECURRENT_ROWS: tuple[Row, ...] = (
    Row("rnn", recurrent_args("rnn"), RECURRENT_SHAPES, diff=(0, 1, 2, 3, 4)),
    Row("lstm", recurrent_args("lstm"), RECURRENT_SHAPES, diff=(0, 1, 2, 3, 4, 5)),
    Row("gru", recurrent_args("gru"), RECURRENT_SHAPES, diff=(0, 1, 2, 3, 4, 5)),
    Row("last_step", unary, ((3, 1, 4), (2, 5, 3), (2, 3, 4, 2))),
)

# ---- normalization, embedding and attention (rules/normalization.py, rules/attention.py) ----


def norm_args(with_beta):
    """x (any shape), γ near 1 and (for layer_norm) β: the features are the last axis."""

    def make(rng, shape, dtype, domain):
        x = _float(rng, shape, dtype, domain)
        gamma = jnp.asarray(1.0 + 0.3 * rng.standard_normal(shape[-1:]), dtype)
        beta = (_float(rng, shape[-1:], dtype, "normal", scale=0.3),) * with_beta
        return (x, gamma, *beta)

    return make


def embedding_args(rng, shape, dtype, domain):
    """shape = (ids shape, V, D); more ids than rows, so ids repeat."""
    ids_shape, vocab, features = shape
    ids = jnp.asarray(rng.integers(0, vocab, size=ids_shape), jnp.int32)
    return ids, _float(rng, (vocab, features), dtype, domain)


def add_positions_args(rng, shape, dtype, domain):
    """shape = (x shape (..., T, D), L) with L >= T."""
    x_shape, length = shape
    return _float(rng, x_shape, dtype, domain), _float(rng, (length, x_shape[-1]), dtype, "normal")


def attention_args(causal):
    """x (N, T, D), four (D, D) weights, four (D,) biases and a boolean padding mask (N, T).

    ``masked``: about a third of the keys padded; with ``causal`` the first key of the first
    example is padded too, so that query has no allowed key (a fully masked row). ``extreme``:
    |x| ≈ 1e3 with small weights, so the scores reach ≈ 1e3 and only the max-shift keeps
    softmax finite.
    """

    def make(rng, shape, dtype, domain):
        n, t, d = shape
        x = _float(rng, shape, dtype, domain)
        # bfloat16: the reference runs in bfloat16, and its db_k (exactly 0) and dW_q, dW_k are
        # cancelling sums whose rounding grows as |W|³; smaller weights keep that under 2e-2.
        w_scale = 0.02 if domain == "extreme" else 0.3 if dtype == BF16 else 0.6
        ws = tuple(_float(rng, (d, d), dtype, "normal", scale=w_scale) for _ in range(4))
        bs = tuple(_float(rng, (d,), dtype, "normal", scale=0.3) for _ in range(4))
        mask = np.ones((n, t), bool)
        if domain == "masked":
            mask = rng.uniform(size=(n, t)) >= 0.35
            mask[:, -1] = True
            mask[0, 0] = not causal
        return (x, *ws, *bs, jnp.asarray(mask))

    return make


ATTENTION_DIFF = tuple(range(9))

TRANSFORMER_ROWS: tuple[Row, ...] = (
    Row("layer_norm", norm_args(True), ((6,), (2, 3, 4)), diff=(0, 1, 2)),
    Row(
        "layer_norm",
        norm_args(True),
        ((3, 5),),
        diff=(0, 1, 2),
        static={"eps": 0.1},
        label="layer_norm_eps0.1",
    ),
    Row("rms_norm", norm_args(False), ((6,), (2, 3, 4)), diff=(0, 1)),
    Row("embedding", embedding_args, (((7,), 4, 3), ((2, 6), 3, 2)), diff=(1,)),
    Row("add_positions", add_positions_args, (((3, 4), 5), ((2, 3, 4), 3)), diff=(0, 1)),
    Row(
        "multi_head_attention",
        attention_args(False),
        ((2, 3, 4), (1, 4, 6)),
        diff=ATTENTION_DIFF,
        zero=(6,),
        static={"num_heads": 2},
        extreme=False,
        masked=True,
    ),
    Row(
        "multi_head_attention",
        attention_args(True),
        ((2, 4, 4),),
        diff=ATTENTION_DIFF,
        zero=(6,),
        static={"num_heads": 2, "causal": True},
        label="multi_head_attention_causal",
        extreme=False,
        masked=True,
    ),
    # Scores ≈ 1e3 (past exp's float64 overflow at 709) make softmax one-hot; autodiff of the
    # forward then leaves rounding noise ≈ eps·|q|·|k| in dW_q, dW_k, which only float64 keeps
    # below the table's tolerance. tests/test_transformer.py checks float32 there against float64.
    Row(
        "multi_head_attention",
        attention_args(True),
        ((2, 3, 4),),
        diff=ATTENTION_DIFF,
        zero=(6,),
        static={"num_heads": 2, "causal": True},
        label="multi_head_attention_extreme",
        dtypes=(F64,),
    ),
)

# The blockwise rule (rules/flash_attention.py): blocks of 2 keys, so that T = 3, 5 span
# several blocks and end in a padded one; the same inputs as multi_head_attention's rows.
FLASH_ROWS: tuple[Row, ...] = (
    Row(
        "flash_attention",
        attention_args(False),
        ((1, 5, 6),),
        diff=ATTENTION_DIFF,
        zero=(6,),
        static={"num_heads": 2, "block_size": 2},
        extreme=False,
        masked=True,
    ),
    Row(
        "flash_attention",
        attention_args(True),
        ((2, 5, 4),),
        diff=ATTENTION_DIFF,
        zero=(6,),
        static={"num_heads": 2, "causal": True, "block_size": 2},
        label="flash_attention_causal",
        extreme=False,
        masked=True,
    ),
    Row(
        "flash_attention",
        attention_args(True),
        ((2, 3, 4),),
        diff=ATTENTION_DIFF,
        zero=(6,),
        static={"num_heads": 2, "causal": True, "block_size": 2},
        label="flash_attention_extreme",
        dtypes=(F64,),
    ),
)
TRANSFORMER_ROWS = TRANSFORMER_ROWS + FLASH_ROWS

# ---- training/evaluation modes (rules/normalization.py batch norm, rules/stochastic.py) ---------


def batch_norm_inference_args(rng, shape, dtype, domain):
    """x (..., D), running mean and variance (D,) (variance in [0.5, 2]), γ near 1 and β."""
    x = _float(rng, shape, dtype, domain)
    d = shape[-1:]
    mean = _float(rng, d, dtype, domain, scale=1.0)
    var = jnp.asarray(rng.uniform(0.5, 2.0, size=d), dtype)
    gamma = jnp.asarray(1.0 + 0.3 * rng.standard_normal(d), dtype)
    return x, mean, var, gamma, _float(rng, d, dtype, "normal", scale=0.3)


def dropout_args(rng, shape, dtype, domain):
    """x and a raw PRNG key (uint32 key data) drawn from the row's generator."""
    key = np.asarray(rng.integers(0, 2**32, size=(2,), dtype=np.uint64), np.uint32)
    return _float(rng, shape, dtype, domain), jnp.asarray(key)


MODE_ROWS: tuple[Row, ...] = (
    Row("batch_norm", norm_args(True), ((6, 3), (2, 3, 3, 2)), diff=(0, 1, 2)),
    Row(
        "batch_norm",
        norm_args(True),
        ((4, 5),),
        diff=(0, 1, 2),
        static={"eps": 0.1},
        label="batch_norm_eps0.1",
    ),
    Row(
        "batch_norm_inference",
        batch_norm_inference_args,
        ((5, 3), (2, 3, 2, 4)),
        diff=(0, 1, 2, 3, 4),
    ),
    Row("dropout", dropout_args, ((7, 5), (2, 3, 4)), static={"rate": 0.3}),
    Row("dropout", dropout_args, ((6, 4),), static={"rate": 0.0}, label="dropout_rate0"),
)

ROWS = ROWS + CONV_ROWS + RECURRENT_ROWS + TRANSFORMER_ROWS + MODE_ROWS

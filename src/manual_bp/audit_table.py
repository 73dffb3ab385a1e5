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

__all__ = ["ALL_DTYPES", "ROWS", "Row"]

F64, F32, BF16 = jnp.float64, jnp.float32, jnp.bfloat16
ALL_DTYPES = (F64, F32, BF16)


@dataclasses.dataclass(frozen=True, eq=False)
class Row:
    rule: str
    make: Callable[[np.random.Generator, Any, Any, str], tuple]
    shapes: tuple
    diff: tuple[int, ...] = (0,)
    static: dict = dataclasses.field(default_factory=dict)
    label: str = ""
    dtypes: tuple = ALL_DTYPES
    extreme: bool = True
    masked: bool = False

    @property
    def id(self) -> str:
        return self.label or self.rule

    def domains(self) -> tuple[str, ...]:
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
CONV_ROWS: tuple[Row, ...] = ()

# ---- recurrent networks (rules/recurrent.py) ------------------------------------------------
RECURRENT_ROWS: tuple[Row, ...] = ()

# ---- normalization, embedding and attention (rules/normalization.py, rules/attention.py) ----
TRANSFORMER_ROWS: tuple[Row, ...] = ()

ROWS = ROWS + CONV_ROWS + RECURRENT_ROWS + TRANSFORMER_ROWS

"""A table of bad inputs across the public API: each raises ValueError/TypeError naming the
op or layer, what was expected and what came — before any tracing, eager or under jit."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

import manual_bp
from manual_bp import RULES, nn

f32, f64 = jnp.float32, jnp.float64


def z(*shape, dtype=f32):
    return jnp.zeros(shape, dtype)


NET = nn.serial(nn.Dense(3), nn.Tanh(), nn.Dense(2))
PARAMS = NET.init(jax.random.key(0), (4, 5))
X, Y = z(4, 5), jnp.zeros((4,), jnp.int32)


def vg(params=PARAMS, x=X, y=Y, net=NET, loss="softmax_cross_entropy"):
    return manual_bp.value_and_grad(net, loss)(params, x, y)


def with_param(path, value):
    params = jax.tree.map(lambda a: a, PARAMS)
    node = params
    for k in path[:-1]:
        node = node[k]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return params


BAD = [
    # rules
    (
        "dense w rank",
        lambda: RULES["dense"](z(4, 5), z(5), z(5)),
        ValueError,
        r"dense: w must have rank 2, got rank 1 \(shape \(5,\)\)",
    ),
    (
        "dense x features",
        lambda: RULES["dense"](z(4, 6), z(5, 3), z(3)),
        ValueError,
        r"dense: x must have shape \(\.\.\., 5\) to match w of shape \(5, 3\), got \(4, 6\)",
    ),
    (
        "dense b shape",
        lambda: RULES["dense"](z(4, 5), z(5, 3), z(4)),
        ValueError,
        r"dense: b must have shape \(3,\), got \(4,\)",
    ),
    (
        "dense int x",
        lambda: RULES["dense"](jnp.zeros((4, 5), jnp.int32), z(5, 3), z(3)),
        TypeError,
        r"dense: x must have a floating dtype .*got int32",
    ),
    (
        "dense mixed dtypes",
        lambda: RULES["dense"](z(4, 5, dtype=f64), z(5, 3), z(3)),
        TypeError,
        r"dense: all inputs must share one dtype, got x: float64, w: float32, b: float32",
    ),
    (
        "dense list x",
        lambda: RULES["dense"]([[1.0]], z(1, 3), z(3)),
        TypeError,
        r"dense: x must be an array, got list",
    ),
    (
        "matmul contraction",
        lambda: RULES["matmul"](z(4, 3), z(2, 5)),
        ValueError,
        r"matmul: contracted dims differ: a is \(4, 3\) \(k=3\), b is \(2, 5\) \(k=2\)",
    ),
    (
        "matmul rank",
        lambda: RULES["matmul"](z(3), z(3, 2)),
        ValueError,
        r"matmul: a must have rank >= 2, got rank 1",
    ),
    (
        "matmul batch",
        lambda: RULES["matmul"](z(2, 4, 3), z(5, 3, 2)),
        ValueError,
        r"matmul: b must have shape \(k, n\) or \(2, 3, 'n'\)",
    ),
    (
        "sigmoid int",
        lambda: RULES["sigmoid"](jnp.zeros(3, jnp.int32)),
        TypeError,
        r"sigmoid: z must have a floating dtype",
    ),
    (
        "softmax axis",
        lambda: RULES["softmax"](z(2, 3), axis=2),
        ValueError,
        r"softmax: axis 2 is out of range for an input of rank 2",
    ),
    (
        "logsumexp axis type",
        lambda: RULES["logsumexp"](z(2, 3), axis=1.0),
        TypeError,
        r"logsumexp: axis must be an int, got float",
    ),
    (
        "leaky slope type",
        lambda: RULES["leaky_relu"](z(3), negative_slope="0.1"),
        TypeError,
        r"leaky_relu: negative_slope must be a Python real number, got str",
    ),
    (
        "elu alpha",
        lambda: RULES["elu"](z(3), alpha=-1.0),
        ValueError,
        r"elu: alpha must be > 0, got -1.0",
    ),
    (
        "gelu approximate",
        lambda: RULES["gelu"](z(3), approximate="tanh"),
        TypeError,
        r"gelu: approximate must be a bool, got str",
    ),
    (
        "mse shapes",
        lambda: RULES["mse"](z(4, 3), z(4, 2)),
        ValueError,
        r"mse: target must have shape \(4, 3\), got \(4, 2\)",
    ),
    ("mse empty", lambda: RULES["mse"](z(0, 3), z(0, 3)), ValueError, r"mse: pred is empty"),
    (
        "ce label shape",
        lambda: RULES["softmax_cross_entropy"](z(4, 3), jnp.zeros(3, jnp.int32)),
        ValueError,
        r"softmax_cross_entropy: integer labels must have shape \(4,\), got \(3,\)",
    ),
    (
        "ce target shape",
        lambda: RULES["softmax_cross_entropy"](z(4, 3), z(4)),
        ValueError,
        r"softmax_cross_entropy: probability targets must have shape \(4, 3\), got \(4,\)",
    ),
    (
        "ce target dtype",
        lambda: RULES["softmax_cross_entropy"](z(4, 3), z(4, 3, dtype=f64)),
        TypeError,
        r"softmax_cross_entropy: all inputs must share one dtype",
    ),
    (
        "ce labels list",
        lambda: RULES["softmax_cross_entropy"](z(4, 3), [0, 1, 2, 0]),
        TypeError,
        r"softmax_cross_entropy: labels must be an array, got list",
    ),
    (
        "bce shapes",
        lambda: RULES["sigmoid_binary_cross_entropy"](z(4, 3), z(3)),
        ValueError,
        r"sigmoid_binary_cross_entropy: labels must have shape \(4, 3\), got \(3,\)",
    ),
    # layers and networks
    (
        "Dense features",
        lambda: nn.Dense(0),
        ValueError,
        r"Dense: features must be a positive int, got 0",
    ),
    ("Elu alpha", lambda: nn.Elu(alpha=0.0), ValueError, r"elu: alpha must be > 0"),
    ("serial empty", lambda: nn.serial(), ValueError, r"serial: needs at least one layer"),
    (
        "serial non-layer",
        lambda: nn.serial(nn.Tanh(), "relu"),
        TypeError,
        r"serial: argument 1 must be a manual_bp.nn.Layer, got 'relu'",
    ),
    (
        "serial duplicate names",
        lambda: nn.serial(nn.Tanh(name="a"), nn.Relu(name="a")),
        ValueError,
        r"serial: layer names must be unique, repeated: \['a'\]",
    ),
    (
        "forward wrong features",
        lambda: NET.forward(PARAMS, z(4, 7)),
        ValueError,
        r"dense_0: dense: x must have shape \(\.\.\., 5\) .*got \(4, 7\)",
    ),
    # value_and_grad: the params tree, the input, the loss
    (
        "params missing layer",
        lambda: vg(params=with_param(["dense_2"], None)),
        ValueError,
        r"params: keys do not match the network: missing \['dense_2'\], unexpected \[\]",
    ),
    (
        "params missing leaf",
        lambda: vg(params=with_param(["dense_0", "b"], None)),
        ValueError,
        r"params\['dense_0'\]: keys do not match the network: missing \['b'\]",
    ),
    (
        "params wrong shape",
        lambda: vg(params=with_param(["dense_2", "w"], z(2, 3))),
        ValueError,
        r"params\['dense_2'\]\['w'\]: expected shape \(3, 2\) for an input of shape \(4, 5\), "
        r"got \(2, 3\)",
    ),
    (
        "params int leaf",
        lambda: vg(params=with_param(["dense_0", "b"], jnp.zeros(3, jnp.int32))),
        TypeError,
        r"params\['dense_0'\]\['b'\]: expected a floating dtype, got int32",
    ),
    (
        "params not a dict",
        lambda: vg(params=[1, 2]),
        TypeError,
        r"params: expected a dict with keys \['dense_0', 'dense_2', 'tanh_1'\], got list",
    ),
    (
        "x wrong features",
        lambda: vg(x=z(4, 6)),
        ValueError,
        r"params\['dense_0'\]\['w'\]: expected shape \(6, 3\) for an input of shape \(4, 6\), "
        r"got \(5, 3\)",
    ),
    (
        "x int",
        lambda: vg(x=jnp.zeros((4, 5), jnp.int32)),
        TypeError,
        r"x must have a floating dtype",
    ),
    ("x scalar", lambda: vg(x=jnp.float32(1.0)), ValueError, r"x must have rank >= 1, got rank 0"),
    (
        "labels shape",
        lambda: vg(y=jnp.zeros((3,), jnp.int32)),
        ValueError,
        r"softmax_cross_entropy: integer labels must have shape \(4,\), got \(3,\)",
    ),
    (
        "unknown loss",
        lambda: manual_bp.value_and_grad(NET, "hinge"),
        ValueError,
        r"unknown rule 'hinge'; registered rules: .*softmax_cross_entropy",
    ),
    (
        "net not a layer",
        lambda: manual_bp.value_and_grad(lambda p, x: x, "mse"),
        TypeError,
        r"expected a manual_bp.nn.Layer as the network, got function",
    ),
    (
        "register duplicate",
        lambda: manual_bp.register("sigmoid", lambda z: z, lambda r, g: g),
        ValueError,
        r"register: a rule named 'sigmoid' is already registered",
    ),
]


@pytest.mark.parametrize(("call", "exc", "pattern"), [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_bad_input_raises_a_clear_error(call, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        call()
    assert type(info.value) in (ValueError, TypeError)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"params": [jnp.zeros(3, f32)]}, r"params: expected a dict"),
        ({"x": jnp.zeros((4, 6), f32)}, r"params\['dense_0'\]\['w'\]: expected shape \(6, 3\)"),
    ],
)
def test_errors_are_raised_before_tracing_under_jit(kwargs, pattern):
    f = jax.jit(manual_bp.value_and_grad(NET, "softmax_cross_entropy"))
    args = {"params": PARAMS, "x": X, "y": Y} | kwargs
    with pytest.raises((ValueError, TypeError), match=pattern):
        f(args["params"], args["x"], args["y"])


def test_messages_name_shapes_not_tracers():
    with pytest.raises(ValueError) as info:
        jax.jit(lambda x: RULES["dense"](x, z(5, 3), z(3)))(z(4, 6))
    assert not re.search(r"Traced|tracer", str(info.value))

"""Convolution and pooling: whole networks against the reference, layer shapes, the max-pool
tie convention, the avg-pool padding convention and bad settings.

Every conv/pool rule is also checked row by row in ``tests/test_rules.py`` (the ``CONV_ROWS``
of the audit table: strides with SAME padding, explicit asymmetric padding, dilation, groups).
"""

from __future__ import annotations

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import manual_bp
import reference
from _compare import (
    assert_close,
    assert_matches_reference,
    assert_trees_close,
    random_cotangent,
    rng_for,
)
from manual_bp import RULES, nn

F64, F32 = jnp.float64, jnp.float32
KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)

# ---- whole networks ---------------------------------------------------------------------------

NETWORKS = {
    # conv (no bias) → batch norm → relu → pool, twice; dropout before the last dense layer
    "lenet-relu": lambda: nn.LeNet(5, channels=(3, 4), hidden=6, dropout=0.2),
    # strides, explicit asymmetric padding, dilation, groups and average pooling in one network
    "strided-grouped": lambda: nn.serial(
        nn.Conv2D(4, (3, 3), strides=(2, 1), padding="SAME"),
        nn.Tanh(),
        nn.Conv2D(6, (2, 3), padding=((1, 0), (2, 1)), dilation=(1, 2), groups=2),
        nn.Elu(),
        nn.AvgPool2D((3, 2), strides=(2, 2), padding=((1, 1), (0, 1))),
        nn.Flatten(),
        nn.Dense(5),
    ),
}
INPUT = (4, 8, 8, 1)


@functools.cache
def _fns(name, train=True):
    """Jitted ``f(params, state, x, y, key) -> ((C, new_state), grads, deltas)`` of both sides
    (the state is ``{}`` per layer for networks without batch norm)."""
    net = NETWORKS[name]()
    loss = "softmax_cross_entropy"
    manual = manual_bp.value_grad_and_deltas(net, loss, has_state=True, train=train)
    ref = reference.value_grad_and_deltas(net, loss, has_state=True, train=train)
    return net, jax.jit(manual), jax.jit(ref)


def _state(net, dtype, rng):
    """Running statistics away from their initial 0 and 1, so evaluation mode uses them."""
    shapes = jax.eval_shape(lambda k: net.init_state(k, INPUT, dtype), KEY)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray(
            rng.uniform(0.5, 2.0, s.shape)
            if path[-1].key == "var"
            else 0.3 * rng.standard_normal(s.shape),
            dtype,
        ),
        shapes,
    )


def _data(name, dtype):
    net, _, _ = _fns(name)
    rng = rng_for("conv-net", name, np.dtype(dtype).name)
    x = jnp.asarray(rng.uniform(0.0, 1.0, size=INPUT), dtype)  # digit-like pixel intensities
    # the params tree the network builds; values drawn here (variance 1 / fan-in for weights,
    # biases off zero so every term of the backward pass is exercised)
    shapes = jax.eval_shape(lambda k: net.init(k, INPUT, dtype), KEY)
    params = jax.tree.map(
        lambda s: jnp.asarray(
            rng.standard_normal(s.shape)
            * (1 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1),
            dtype,
        ),
        shapes,
    )
    y = jnp.asarray(rng.integers(0, 5, size=INPUT[:1]), jnp.int32)
    return params, _state(net, dtype, rng), x, y


@pytest.mark.parametrize(
    ("name", "dtype", "train"),
    [
        ("lenet-relu", F64, True),
        ("lenet-relu", F32, True),
        ("lenet-relu", F64, False),
        ("strided-grouped", F64, True),
    ],
    ids=lambda v: (
        v if isinstance(v, str) else f"train={v}" if isinstance(v, bool) else np.dtype(v).name
    ),
)
def test_grads_deltas_and_new_state_match_reference(name, dtype, train):
    _, manual, ref = _fns(name, train)
    params, state, x, y = _data(name, dtype)
    key = jax.random.key(7)
    (c, new_state), grads, deltas = manual(params, state, x, y, key)
    (rc, r_new_state), rgrads, rdeltas = ref(params, state, x, y, key)
    assert_matches_reference(name, (c, grads, deltas), (rc, rgrads, rdeltas), dtype)
    tol = 1e-10 if dtype == F64 else 1e-5
    assert_trees_close(new_state, r_new_state, dtype, f"{name}: new state", tol=tol)
    changed = [
        bool(np.any(a != b))
        for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state), strict=True)
    ]
    if train:  # training mode moves every running statistic; evaluation mode keeps them
        assert all(changed), name
    else:
        assert not any(changed), name


def test_lenet_layers_and_check_network():
    net, _, _ = _fns("lenet-relu")
    assert [layer.kind for layer in net.children] == [
        "conv2d",
        "batch_norm",
        "relu",
        "max_pool2d",
        "conv2d",
        "batch_norm",
        "relu",
        "max_pool2d",
        "flatten",
        "dense",
        "relu",
        "dropout",
        "dense",
    ]
    params, state, x, y = _data("lenet-relu", F64)
    report = manual_bp.check_network(
        net, "softmax_cross_entropy", params, x, y, state=state, key=jax.random.key(3)
    )
    assert report.ok, str(report)
    assert len(report.layers) == len(net.children)


def test_layer_output_shapes_match_forward():
    """``output_shape`` equals the shape the layer's forward and the reference produce
    (computed abstractly, without running either)."""
    x = jax.ShapeDtypeStruct((2, 9, 7, 4), F32)
    layers = [
        nn.Conv2D(6),
        nn.Conv2D(3, (2, 3), strides=2, padding="VALID"),
        nn.Conv2D(4, (3, 2), strides=(2, 3), padding=((2, 0), (1, 3)), dilation=(2, 1)),
        nn.Conv2D(6, (3, 3), groups=2, dilation=2),
        nn.MaxPool2D(),
        nn.MaxPool2D((3, 3), strides=(2, 1), padding="SAME"),
        nn.AvgPool2D((2, 3), padding=((1, 0), (0, 2))),
        nn.AvgPool2D(3, strides=2, padding="SAME"),
        nn.Flatten(),
    ]
    for layer in layers:
        params = jax.eval_shape(lambda k, layer=layer: layer.init(k, x.shape, F32), KEY)
        y, _ = jax.eval_shape(layer.forward, params, x)
        assert layer.output_shape(x.shape) == y.shape, layer.config
        net = nn.serial(layer)
        ref = jax.eval_shape(
            lambda p, h, net=net: reference.forward(net, p, h), {net.children[0].name: params}, x
        )
        assert ref.shape == y.shape, layer.config


def test_conv2d_init_and_tape():
    layer = nn.Conv2D(32, (3, 3), groups=2)
    params = layer.init(jax.random.key(1), (1, 4, 4, 16), F64)
    chex.assert_shape((params["w"], params["b"]), ((3, 3, 8, 32), (32,)))
    chex.assert_type((params["w"], params["b"]), F64)
    assert np.all(np.asarray(params["b"]) == 0)
    fan_in = 3 * 3 * 8
    assert 0.9 < float(jnp.var(params["w"])) * fan_in < 1.1, "LeCun normal: variance 1 / fan_in"
    x = jnp.ones((1, 4, 4, 16), F64)
    _, tape = layer.forward(params, x)
    assert tape is x, "the tape of a conv layer is its input alone"


# ---- max pooling: ties ------------------------------------------------------------------------


def _max_pool_bwd(x, g, **static):
    out, res = RULES["max_pool2d"].fwd(x, **static)
    return out, RULES["max_pool2d"].bwd(res, g, **static)[0]


@pytest.mark.parametrize("dtype", [F64, F32, jnp.bfloat16])
def test_max_pool_ties_go_to_the_first_maximum_in_row_major_order(dtype):
    # window (0, 0): all four equal; window (0, 1): tie between its (0, 1) and (1, 0) entries;
    # window (1, 0): tie between (1, 0) and (1, 1); window (1, 1): a unique maximum.
    img = np.array(
        [
            [2.0, 2.0, 0.0, 5.0],
            [2.0, 2.0, 5.0, 1.0],
            [0.0, 1.0, 3.0, 4.0],
            [7.0, 7.0, 1.0, 2.0],
        ]
    )
    x = jnp.asarray(img.reshape((1, 4, 4, 1)), dtype)
    g = jnp.asarray([[3.0, -2.0], [0.5, 1.5]], dtype).reshape((1, 2, 2, 1))
    out, dx = _max_pool_bwd(x, g)
    assert np.asarray(out, np.float64).ravel().tolist() == [2.0, 5.0, 7.0, 4.0]
    expected = np.zeros((4, 4))
    expected[0, 0] = 3.0  # the first of four equal entries
    expected[0, 3] = -2.0  # (0, 1) of its window comes before (1, 0)
    expected[3, 0] = 0.5  # (1, 0) of its window comes before (1, 1)
    expected[2, 3] = 1.5
    np.testing.assert_array_equal(np.asarray(dx, np.float64).reshape((4, 4)), expected)


def test_max_pool_overlapping_windows_accumulate_on_a_shared_maximum():
    # stride 1, window 2: the 9 at (1, 1) is the maximum of all four windows
    img = np.array([[1.0, 2.0, 3.0], [4.0, 9.0, 5.0], [6.0, 7.0, 8.0]])
    x = jnp.asarray(img.reshape((1, 3, 3, 1)), F64)
    g = random_cotangent(rng_for("overlap"), jnp.zeros((1, 2, 2, 1), F64))
    _, dx = _max_pool_bwd(x, g, window=(2, 2), strides=(1, 1))
    expected = np.zeros((3, 3))
    expected[1, 1] = float(jnp.sum(g))
    np.testing.assert_allclose(np.asarray(dx).reshape((3, 3)), expected, rtol=1e-15)


def test_max_pool_padding_is_minus_infinity():
    # all-negative input with SAME padding: a padded zero must never win
    x = -1.0 - jnp.arange(9, dtype=F64).reshape((1, 3, 3, 1))
    g = random_cotangent(rng_for("pad"), jnp.zeros((1, 2, 2, 1), F64))
    out, dx = _max_pool_bwd(x, g, strides=(2, 2), padding="SAME")
    assert np.asarray(out).ravel().tolist() == [-1.0, -3.0, -7.0, -9.0]
    expected = np.zeros((3, 3))
    expected[[0, 0, 2, 2], [0, 2, 0, 2]] = np.asarray(g).ravel()
    np.testing.assert_array_equal(np.asarray(dx).reshape((3, 3)), expected)


@pytest.mark.parametrize(
    "static", [{}, {"window": (3, 3), "padding": "SAME"}], ids=["valid", "same"]
)
def test_check_rule_passes_on_tied_max_pool_input(static):
    """At a tie the rule's value lies between the one-sided derivatives (kink-aware check).

    Only for windows that do not overlap: an entry tied in two overlapping windows, first in
    one and second in the other, has one-sided derivatives 0 and g₁ + g₂ while the rule gives
    it g₁, which an elementwise range check cannot accept although it is a valid choice; the
    overlapping case is pinned down by the explicit tests above.
    """
    rng = rng_for("tied", tuple(static))
    x = jnp.asarray(rng.integers(0, 3, size=(2, 4, 4, 2)).astype(np.float64))
    report = manual_bp.check_rule("max_pool2d", x, **static)
    assert report.ok, str(report)
    assert any("kink" in c.note for c in report.comparisons), "the input must have ties"


# ---- average pooling: padding ------------------------------------------------------------------


def _avg_pool_loops(x, g, window, strides, pads):
    """Average pooling and its gradient by explicit loops over windows, count_include_pad=False."""
    n, h, w, c = x.shape
    (kh, kw), (sh, sw), ((top, bottom), (left, right)) = window, strides, pads
    rows = range(0, h + top + bottom - kh + 1, sh)
    cols = range(0, w + left + right - kw + 1, sw)
    y = np.zeros((n, len(rows), len(cols), c))
    dx = np.zeros(x.shape)
    for (p, r0), (q, c0) in itertools.product(enumerate(rows), enumerate(cols)):
        hs = [r for r in range(r0 - top, r0 - top + kh) if 0 <= r < h]
        ws = [s for s in range(c0 - left, c0 - left + kw) if 0 <= s < w]
        y[:, p, q, :] = x[:, hs][:, :, ws].mean(axis=(1, 2))
        for r, s in itertools.product(hs, ws):
            dx[:, r, s, :] += g[:, p, q, :] / (len(hs) * len(ws))
    return y, dx


def test_avg_pool_same_padding_does_not_count_padded_positions():
    x = jnp.ones((1, 3, 3, 1), F64)
    y = RULES["avg_pool2d"](x, window=(3, 3), strides=(1, 1), padding="SAME")
    np.testing.assert_array_equal(np.asarray(y), np.ones((1, 3, 3, 1)))  # not 4/9 at a corner
    img = jnp.arange(9, dtype=F64).reshape((1, 3, 3, 1))
    y = RULES["avg_pool2d"](img, window=(3, 3), strides=(1, 1), padding="SAME")
    assert float(y[0, 0, 0, 0]) == (0 + 1 + 3 + 4) / 4
    assert float(y[0, 1, 1, 0]) == 4.0


@pytest.mark.parametrize(
    ("window", "strides", "padding", "pads"),
    [
        ((3, 3), (1, 1), "SAME", ((1, 1), (1, 1))),
        ((3, 2), (2, 1), ((1, 2), (0, 1)), ((1, 2), (0, 1))),
        ((2, 2), (2, 2), "SAME", ((0, 1), (0, 1))),
    ],
)
def test_avg_pool_matches_loops_over_windows(window, strides, padding, pads):
    rng = rng_for("avg-loops", window, strides)
    x = rng.standard_normal((2, 5, 5, 3))
    rule = RULES["avg_pool2d"]
    out, res = rule.fwd(jnp.asarray(x), window=window, strides=strides, padding=padding)
    g = random_cotangent(rng, out)
    (dx,) = rule.bwd(res, g, window=window, strides=strides, padding=padding)
    y_loops, dx_loops = _avg_pool_loops(x, np.asarray(g), window, strides, pads)
    assert_close(out, y_loops, F64, "avg_pool2d forward vs loops")
    assert_close(dx, dx_loops, F64, "avg_pool2d backward vs loops")


# ---- flatten ------------------------------------------------------------------------------------


def test_flatten_is_row_major_and_its_backward_reshapes():
    x = jnp.arange(24, dtype=F32).reshape((2, 3, 2, 2))
    out, res = RULES["flatten"].fwd(x)
    np.testing.assert_array_equal(np.asarray(out), np.arange(24).reshape((2, 12)))
    (dx,) = RULES["flatten"].bwd(res, out)
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(x))


# ---- bad settings -----------------------------------------------------------------------------


def z(*shape, dtype=F32):
    return jnp.zeros(shape, dtype)


def conv(x=None, w=None, b=None, **static):
    x = z(2, 5, 5, 4) if x is None else x
    w = z(3, 3, 4, 6) if w is None else w
    b = z(6) if b is None else b
    return RULES["conv2d"](x, w, b, **static)


BAD = [
    ("stride 0", lambda: conv(strides=(0, 1)), r"conv2d: strides must be positive, got \(0, 1\)"),
    ("dilation -1", lambda: conv(dilation=-1), r"conv2d: dilation must be positive"),
    ("padding name", lambda: conv(padding="same"), r'conv2d: padding must be "SAME", "VALID"'),
    ("padding pairs", lambda: conv(padding=((1, 1),)), r"conv2d: padding must be"),
    ("padding < 0", lambda: conv(padding=((1, -1), (0, 0))), r"must be non-negative"),
    (
        "groups channels",
        lambda: conv(w=z(3, 3, 2, 6), groups=3),
        r"conv2d: input channels \(4\) and output channels \(6\) must both be divisible by "
        r"groups=3",
    ),
    (
        "groups w shape",
        lambda: conv(w=z(3, 3, 4, 6), groups=2),
        r"conv2d: w must have shape \(kh, kw, C / groups, O\) = \(3, 3, 2, 6\) .* got "
        r"\(3, 3, 4, 6\)",
    ),
    ("groups 0", lambda: conv(groups=0), r"conv2d: groups must be a positive int, got 0"),
    (
        "kernel too large",
        lambda: conv(w=z(7, 3, 4, 6), padding="VALID"),
        r"conv2d: the kernel \(7, 3\) is larger than the padded input \(5, 5\)",
    ),
    (
        "dilated kernel too large",
        lambda: conv(dilation=(3, 1), padding=((0, 1), (0, 0))),
        r"conv2d: the kernel \(3, 3\) dilated by \(3, 1\) \(spanning \(7, 3\)\) is larger than "
        r"the padded input \(6, 5\)",
    ),
    ("x rank", lambda: conv(x=z(5, 5, 4)), r"conv2d: x must have rank 4, got rank 3"),
    ("b shape", lambda: conv(b=z(4)), r"conv2d: b must have shape \(6,\), got \(4,\)"),
    (
        "pool window 0",
        lambda: RULES["max_pool2d"](z(1, 4, 4, 1), window=(0, 2)),
        r"max_pool2d: window must be positive",
    ),
    (
        "pool too large",
        lambda: RULES["avg_pool2d"](z(1, 4, 4, 1), window=(5, 2)),
        r"avg_pool2d: the window \(5, 2\) is larger than the padded input \(4, 4\)",
    ),
    (
        "pool padding >= window",
        lambda: RULES["max_pool2d"](z(1, 4, 4, 1), padding=((2, 0), (0, 0))),
        r"max_pool2d: explicit padding must be smaller than the window",
    ),
    (
        "pool strides 0",
        lambda: RULES["avg_pool2d"](z(1, 4, 4, 1), strides=(1, 0)),
        r"avg_pool2d: strides must be positive",
    ),
    ("Conv2D features", lambda: nn.Conv2D(0), r"Conv2D: features must be a positive int"),
    (
        "Conv2D features % groups",
        lambda: nn.Conv2D(5, groups=2),
        r"Conv2D: features \(5\) must be divisible by groups=2",
    ),
    (
        "Conv2D channels % groups",
        lambda: nn.Conv2D(4, groups=2).init(jax.random.key(0), (1, 6, 6, 3)),
        r"Conv2D: input channels \(3\) must be divisible by groups=2",
    ),
    (
        "Conv2D kernel too large",
        lambda: nn.Conv2D(4, (5, 5), padding="VALID").init(jax.random.key(0), (1, 4, 4, 1)),
        r"Conv2D: conv2d: the kernel \(5, 5\) is larger than the padded input \(4, 4\)",
    ),
    ("MaxPool2D padding", lambda: nn.MaxPool2D(padding="FULL"), r"MaxPool2D: padding must be"),
    (
        "LeNet activation",
        lambda: nn.LeNet(activation="swish"),
        r"LeNet: activation must be one of \[",
    ),
]


@pytest.mark.parametrize(("what", "call", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_settings_raise_value_error_with_a_clear_message(what, call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_bad_stride_type_is_a_type_error():
    with pytest.raises(TypeError, match=r"conv2d: strides must be an int or a pair of ints"):
        conv(strides=(1.5, 1))

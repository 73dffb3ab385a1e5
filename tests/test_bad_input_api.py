"""Bad inputs across every public entry point, each with the exact error it must give.

``tests/test_bad_input.py`` covers the rules, ``value_and_grad`` and the params tree; this
table walks the rest of the public API: every layer constructor and forward of
``manual_bp.nn``, the verification tools (``manual_bp.verify``, ``manual_bp.verify.audit``), the
data loaders, ``fit`` and its non-finite guard (``manual_bp.train.guard``), checkpoints, run
outputs (``manual_bp.train.report``), the device mesh (``manual_bp.parallel``, on one device),
``manual_bp.adapter`` and the ``manual-bp`` commands. Every error is a ValueError or
TypeError raised before any tracing, naming the op, layer or argument, what was expected and
what came.
``test_every_public_callable_has_a_row`` fails when a public function is added without one.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import manual_bp
import reference
from manual_bp import (
    RULES,
    Rule,
    adapter,
    credit,
    curvature,
    data,
    forward_grad,
    nn,
    parallel,
    per_example,
    testing,
    train,
    verify,
)
from manual_bp.data import Dataset
from manual_bp.train import checkpoint, guard, report
from manual_bp.verify import audit, survey
from manual_bp.verify.table import unary

f32 = jnp.float32
KEY = jax.random.key(0)


def z(*shape, dtype=f32):
    return jnp.zeros(shape, dtype)


def ints(*shape, value=0):
    return jnp.full(shape, value, jnp.int32)


SCALE = Rule("scale", lambda x, a: (x * a, (x, a)), lambda r, g: (g * r[1], g * r[0]))
TANH_ROW = verify.Row("tanh", unary, ((3,),))


def scale_init(key, input_shape, dtype):
    return {"a": jnp.ones(input_shape, dtype)}


def scale_backward(rule):
    """The backward of a from_rule layer y = x · a (a of x's shape) made from ``rule``."""
    layer = nn.from_rule(rule, params=("a",), init=scale_init)
    params = layer.init(KEY, (2, 3))
    y, tape = layer.forward(params, z(2, 3))
    return layer.backward(params, tape, y)


RNG = np.random.default_rng(0)
GOOD = Dataset(
    RNG.standard_normal((24, 6)).astype(np.float32),
    RNG.integers(0, 3, 24).astype(np.int32),
    RNG.standard_normal((8, 6)).astype(np.float32),
    RNG.integers(0, 3, 8).astype(np.int32),
    3,
    "synthetic",
)
NET = train.mlp((4,), 3, "tanh")
PARAMS = NET.init(KEY, (8, 6), f32)
OPT = optax.adam(1e-2)
FA = nn.serial(credit.feedback(nn.Dense(4), "fa"), nn.Tanh(), credit.feedback(nn.Dense(3), "fa"))
FA_PARAMS, FA_STATE = FA.init(KEY, (8, 6), f32), FA.init_state(KEY, (8, 6), f32)
DFA = credit.direct_feedback(nn.Dense(4), nn.Tanh(), nn.Dense(3))
DFA_PARAMS = DFA.init(KEY, (8, 6), f32)
LM = nn.TransformerLM(5, max_len=4, features=4, num_heads=1, num_blocks=1)


def fit(dataset=GOOD, **kw):
    args = {"optimizer": OPT, "epochs": 1, "batch_size": 8, "key": jax.random.key(1)} | kw
    net, params = args.pop("net", NET), args.pop("params", PARAMS)
    return train.fit(net, "softmax_cross_entropy", params, dataset, **args)


def fit_lm(x_train, x_test):
    """fit on a tiny language model: token ids (N, 4) in, next-token targets below 5."""
    data = Dataset(x_train, ints(8, 4), x_test, ints(2, 4), 5, "tokens")
    return fit(data, net=LM, params=LM.init(KEY, (8, 4)))


def bad_data(**kw):
    return GOOD._replace(**kw)


def forward(layer, input_shape, x, ctx=None):
    params = layer.init(KEY, input_shape)
    return layer.forward(params, x) if ctx is None else layer.forward(params, x, ctx)


def save(path, **kw):
    args = {
        "params": PARAMS,
        "opt_state": OPT.init(PARAMS),
        "epoch": 1,
        "key": KEY,
        "config": {},
    } | kw
    return checkpoint.save_checkpoint(path, **args)


def load(path, params=PARAMS, opt_state=None):
    opt_state = OPT.init(params) if opt_state is None else opt_state
    return checkpoint.load_checkpoint(path, params_like=params, opt_state_like=opt_state)


def saved_then_loaded(tmp, **kw):
    save(tmp / "c.npz")
    return load(tmp / "c.npz", **kw)


def cli(capsys, *argv):
    """Run ``manual-bp ARGV``; return the exit code and the last line of stderr."""
    from manual_bp.cli import main

    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


def mesh():
    """A one-device mesh: this test process has one CPU device."""
    return parallel.data_parallel_mesh()


RECORDS = [{"epoch": 1, "train_loss": 1.0, "test_loss": 1.0, "test_accuracy": 0.5}]


def jsonl(tmp, text):
    (tmp / "metrics.jsonl").write_text(text)
    return tmp / "metrics.jsonl"


def non_finite():
    info = dict.fromkeys(("params", "opt_state", "state", "x", "y", "key"))
    return guard.NonFiniteError("non-finite loss", epoch=1, step=0, kind="loss", where="x", **info)


def diagnose(**kw):
    """guard.diagnose on fit's arguments for one epoch of NET, with ``kw`` replaced."""
    args = {
        "step_fn": lambda carry, batch, key: (carry, None),
        "carry": (PARAMS, OPT.init(PARAMS), {}),
        "epoch_key": KEY,
        "dropout_key": KEY,
        "data": (GOOD.x_train, GOOD.y_train),
        "batch_size": 8,
        "losses_finite": np.ones(3, bool),
        "epoch": 1,
    } | kw
    net, loss = args.pop("net", NET), args.pop("loss", RULES["softmax_cross_entropy"])
    return guard.diagnose(net, loss, **args)


# (id, the public name it covers, call(tmp_path), exception, message pattern)
BAD = [
    # --- manual_bp ------------------------------------------------------------------------
    (
        "get_rule unknown",
        "get_rule",
        lambda t: manual_bp.get_rule("hinge"),
        ValueError,
        r"unknown rule 'hinge'; registered rules: .*dense",
    ),
    (
        "get_rule not a name",
        "get_rule",
        lambda t: manual_bp.get_rule(3),
        TypeError,
        r"expected a manual_bp.Rule or a rule name, got int",
    ),
    (
        "register non-callable",
        "register",
        lambda t: manual_bp.register("custom_unregistered", 1, 2),
        TypeError,
        r"register\('custom_unregistered'\): fwd and bwd must be callable",
    ),
    (
        "as_custom_vjp bad static",
        "as_custom_vjp",
        lambda t: manual_bp.as_custom_vjp("elu", alpha=-1.0)(z(3)),
        ValueError,
        r"elu: alpha must be > 0, got -1.0",
    ),
    (
        "check_rule list primal",
        "check_rule",
        lambda t: manual_bp.check_rule("sigmoid", [1.0, 2.0]),
        TypeError,
        r"check_rule\('sigmoid'\): primal 0 must be an array, got list",
    ),
    (
        "check_rule no float primal",
        "check_rule",
        lambda t: manual_bp.check_rule("sigmoid", ints(3)),
        TypeError,
        r"check_rule\('sigmoid'\): no floating primal to differentiate",
    ),
    (
        "assert_rule_correct int primal",
        "assert_rule_correct",
        lambda t: manual_bp.assert_rule_correct("tanh", ints(3)),
        TypeError,
        r"check_rule\('tanh'\): no floating primal",
    ),
    (
        "check_rule negative tolerance",
        "check_rule",
        lambda t: manual_bp.check_rule("tanh", z(3), tolerance=-1e-3),
        ValueError,
        r"check_rule\('tanh'\): tolerance must be a finite number >= 0 \(or None\), got -0.001",
    ),
    (
        "check_network nan tolerance",
        "check_network",
        lambda t: manual_bp.check_network(
            NET, "softmax_cross_entropy", PARAMS, z(8, 6), ints(8), tolerance=float("nan")
        ),
        ValueError,
        r"check_network: tolerance must be a finite number >= 0 \(or None\), got nan",
    ),
    (
        "check_network params",
        "check_network",
        lambda t: manual_bp.check_network(NET, "softmax_cross_entropy", {}, z(8, 6), ints(8)),
        ValueError,
        r"params: keys do not match the network: missing \['dense_0', 'dense_2', 'tanh_1'\]",
    ),
    (
        "value_and_grad has_state type",
        "value_and_grad",
        lambda t: manual_bp.value_and_grad(NET, "mse", has_state="yes"),
        TypeError,
        r"has_state and train must be Python bools, got has_state='yes'",
    ),
    (
        "value_grad_and_deltas stateful net",
        "value_grad_and_deltas",
        lambda t: manual_bp.value_grad_and_deltas(nn.serial(nn.Dense(3), nn.BatchNorm()), "mse"),
        ValueError,
        r"keeps state \(batch-norm statistics or feedback matrices\): use "
        r"value_and_grad\(net, loss, has_state=True\)",
    ),
    (
        "value_and_jvp dx shape",
        "value_and_jvp",
        lambda t: manual_bp.value_and_jvp(NET, "softmax_cross_entropy")(
            PARAMS, z(8, 6), ints(8), None, z(8, 5)
        ),
        ValueError,
        r"value_and_jvp\('serial'\): dx must have x's shape \(8, 6\) and dtype float32, "
        r"got \(8, 5\) float32",
    ),
    (
        "hvp v tree",
        "hvp",
        lambda t: manual_bp.hvp(NET, "softmax_cross_entropy")(PARAMS, z(8, 6), ints(8), {}),
        ValueError,
        r"hvp: v: params: keys do not match the network: missing \['dense_0', 'dense_2', "
        r"'tanh_1'\]",
    ),
    # --- manual_bp.nn: constructors ----------------------------------------------------------
    ("Dense 0", "Dense", lambda t: nn.Dense(0), ValueError, r"Dense: features must be a positive"),
    ("Elu alpha", "Elu", lambda t: nn.Elu(alpha=0.0), ValueError, r"elu: alpha must be > 0"),
    (
        "Gelu approximate",
        "Gelu",
        lambda t: nn.Gelu("tanh"),
        TypeError,
        r"gelu: approximate must be a bool, got str",
    ),
    (
        "LeakyRelu slope",
        "LeakyRelu",
        lambda t: nn.LeakyRelu("0.1"),
        TypeError,
        r"leaky_relu: negative_slope must be a Python real number, got str",
    ),
    (
        "LogSoftmax axis type",
        "LogSoftmax",
        lambda t: nn.LogSoftmax(axis="last"),
        TypeError,
        r"log_softmax: axis must be an int, got str",
    ),
    (
        "Softmax axis type",
        "Softmax",
        lambda t: nn.Softmax(axis=1.5),
        TypeError,
        r"softmax: axis must be an int, got float",
    ),
    (
        "Conv2D stride 0",
        "Conv2D",
        lambda t: nn.Conv2D(4, strides=0),
        ValueError,
        r"Conv2D: strides must be positive, got \(0, 0\)",
    ),
    (
        "Conv2D kernel 0",
        "Conv2D",
        lambda t: nn.Conv2D(4, kernel_size=(3, 0)),
        ValueError,
        r"Conv2D: kernel_size must be positive, got \(3, 0\)",
    ),
    (
        "Conv2D kernel larger than the padded input",
        "Conv2D",
        lambda t: nn.Conv2D(2, 5, padding="VALID").init(KEY, (1, 3, 3, 1)),
        ValueError,
        r"Conv2D: conv2d: the kernel \(5, 5\) is larger than the padded input \(3, 3\)",
    ),
    (
        "conv2d negative padding",
        "Conv2D",
        lambda t: RULES["conv2d"](z(1, 5, 5, 1), z(3, 3, 1, 2), z(2), padding=((-1, 0), (0, 0))),
        ValueError,
        r"conv2d: explicit padding must be non-negative, got \(\(-1, 0\), \(0, 0\)\)",
    ),
    (
        "conv2d groups",
        "Conv2D",
        lambda t: RULES["conv2d"](z(1, 5, 5, 3), z(3, 3, 1, 2), z(2), groups=2),
        ValueError,
        r"conv2d: input channels \(3\) and output channels \(2\) must both be divisible by "
        r"groups=2",
    ),
    (
        "MaxPool2D window 0",
        "MaxPool2D",
        lambda t: nn.MaxPool2D((0, 2)),
        ValueError,
        r"MaxPool2D: window must be positive, got \(0, 2\)",
    ),
    (
        "MaxPool2D window larger than the input",
        "MaxPool2D",
        lambda t: forward(nn.MaxPool2D(4), (1, 3, 3, 1), z(1, 3, 3, 1)),
        ValueError,
        r"max_pool2d: the window \(4, 4\) is larger than the padded input \(3, 3\)",
    ),
    (
        "AvgPool2D negative stride",
        "AvgPool2D",
        lambda t: nn.AvgPool2D(2, strides=-1),
        ValueError,
        r"AvgPool2D: strides must be positive, got \(-1, -1\)",
    ),
    (
        "AvgPool2D rank",
        "AvgPool2D",
        lambda t: RULES["avg_pool2d"](z(3, 3, 1)),
        ValueError,
        r"avg_pool2d: x must have rank 4, got rank 3 \(shape \(3, 3, 1\)\)",
    ),
    (
        "LeNet activation",
        "LeNet",
        lambda t: nn.LeNet(10, activation="swish"),
        ValueError,
        r"LeNet: activation must be one of \[.*'tanh'\], got 'swish'",
    ),
    (
        "LeNet channels",
        "LeNet",
        lambda t: nn.LeNet(10, channels=(0, 3)),
        ValueError,
        r"LeNet: channels must be two positive ints, got \(0, 3\)",
    ),
    (
        "BatchNorm momentum",
        "BatchNorm",
        lambda t: nn.BatchNorm(2.0),
        ValueError,
        r"BatchNorm: momentum must be in \[0, 1\], got 2.0",
    ),
    (
        "Dropout rate",
        "Dropout",
        lambda t: nn.Dropout(1.0),
        ValueError,
        r"Dropout: rate must be in \[0, 1\), got 1.0",
    ),
    (
        "Dropout without a key",
        "Dropout",
        lambda t: forward(nn.Dropout(0.5), (2, 3), z(2, 3), nn.Context(train=True)),
        ValueError,
        r"Dropout: training mode needs a PRNG key in the forward pass's Context",
    ),
    ("GRU 0", "GRU", lambda t: nn.GRU(0), ValueError, r"GRU: hidden must be a positive int"),
    ("RNN -1", "RNN", lambda t: nn.RNN(-1), ValueError, r"RNN: hidden must be a positive int"),
    (
        "LSTM rank",
        "LSTM",
        lambda t: nn.LSTM(3).init(KEY, (4, 3)),
        ValueError,
        r"LSTM: input_shape must be \(N, T, I\), got \(4, 3\)",
    ),
    (
        "GRUClassifier classes",
        "GRUClassifier",
        lambda t: nn.GRUClassifier(4, 0),
        ValueError,
        r"Dense: features must be a positive int, got 0",
    ),
    (
        "LSTMClassifier hidden",
        "LSTMClassifier",
        lambda t: nn.LSTMClassifier(0, 3),
        ValueError,
        r"LSTM: hidden must be a positive int, got 0",
    ),
    (
        "Embedding float ids",
        "Embedding",
        lambda t: forward(nn.Embedding(5, 4), (2, 3), z(2, 3)),
        TypeError,
        r"embedding: ids must have an integer dtype, got float32",
    ),
    (
        "Embedding vocab",
        "Embedding",
        lambda t: nn.Embedding(0, 3),
        ValueError,
        r"Embedding: vocab must be a positive int, got 0",
    ),
    (
        "LayerNorm eps",
        "LayerNorm",
        lambda t: nn.LayerNorm(-1.0),
        ValueError,
        r"LayerNorm: eps must be a positive Python number, got -1.0",
    ),
    (
        "RMSNorm int input",
        "RMSNorm",
        lambda t: forward(nn.RMSNorm(), (2, 3), ints(2, 3)),
        TypeError,
        r"rms_norm: x must have a floating dtype .*got int32",
    ),
    (
        "MultiHeadAttention heads",
        "MultiHeadAttention",
        lambda t: nn.MultiHeadAttention(3).init(KEY, (2, 4, 4)),
        ValueError,
        r"MultiHeadAttention: num_heads=3 must divide D=4",
    ),
    (
        "PositionalEmbedding too short",
        "PositionalEmbedding",
        lambda t: forward(nn.PositionalEmbedding(3), (2, 3, 4), z(2, 5, 4)),
        ValueError,
        r"add_positions: table must have shape \(L, 4\) with L >= 5",
    ),
    (
        "TransformerLM heads",
        "TransformerLM",
        lambda t: nn.TransformerLM(10, max_len=8, features=5, num_heads=2).init(KEY, (2, 4)),
        ValueError,
        r"MultiHeadAttention: num_heads=2 must divide D=5",
    ),
    (
        "remat non-layer",
        "remat",
        lambda t: nn.remat("dense"),
        TypeError,
        r"remat: expected a manual_bp.nn.Layer, got str",
    ),
    (
        "remat_serial every",
        "remat_serial",
        lambda t: nn.remat_serial(nn.Tanh(), every=0),
        ValueError,
        r"remat_serial: every must be a positive",
    ),
    (
        "MultiHeadAttention block_size",
        "MultiHeadAttention",
        lambda t: nn.MultiHeadAttention(2, block_size=0),
        ValueError,
        r"MultiHeadAttention: block_size must be a positive",
    ),
    (
        "serial non-layer",
        "serial",
        lambda t: nn.serial(nn.Tanh(), "relu"),
        TypeError,
        r"serial: argument 1 must be a manual_bp.nn.Layer, got 'relu'",
    ),
    (
        "residual changes the shape",
        "residual",
        lambda t: nn.residual(nn.Dense(3)).init(KEY, (4, 5)),
        ValueError,
        r"residual: block 'dense_0' must keep the input shape \(4, 5\), its output is \(4, 3\)",
    ),
    (
        "from_rule int",
        "from_rule",
        lambda t: nn.from_rule(3),
        TypeError,
        r"from_rule: expected a manual_bp\.Rule or a rule name, got int",
    ),
    (
        "from_rule params str",
        "from_rule",
        lambda t: nn.from_rule(SCALE, params="a", init=scale_init),
        TypeError,
        r"from_rule\('scale'\): params must be a tuple of parameter names, got 'a'",
    ),
    (
        "from_rule no init",
        "from_rule",
        lambda t: nn.from_rule(SCALE, params=("a",)),
        TypeError,
        r"from_rule\('scale'\): a layer with parameters \('a',\) needs init\(key, input_shape, "
        r"dtype\) -> dict, got NoneType",
    ),
    (
        "from_rule init without params",
        "from_rule",
        lambda t: nn.from_rule("tanh", init=scale_init),
        ValueError,
        r"from_rule\('tanh'\): init was given but params is empty; name the parameters",
    ),
    (
        "from_rule init keys",
        "from_rule",
        lambda t: nn.from_rule(SCALE, params=("a",), init=lambda k, s, d: {"b": z(*s)}).init(
            KEY, (2, 3)
        ),
        ValueError,
        r"from_rule\('scale'\): init must return a dict with keys \['a'\], got \['b'\]",
    ),
    (
        "from_rule bwd arity",
        "from_rule",
        lambda t: scale_backward(Rule("scale", SCALE.fwd, lambda r, g: (g * r[1],))),
        TypeError,
        r"from_rule\('scale'\): bwd must return 2 cotangents \(x, a\), got tuple of length 1",
    ),
    # --- manual_bp.nn: forwards and tree checks ----------------------------------------------
    (
        "Relu int",
        "Relu",
        lambda t: forward(nn.Relu(), (3,), ints(3)),
        TypeError,
        r"relu: z must have a floating dtype",
    ),
    (
        "Sigmoid list",
        "Sigmoid",
        lambda t: nn.Sigmoid().forward({}, [1.0]),
        TypeError,
        r"sigmoid: z must be an array, got list",
    ),
    (
        "Tanh int",
        "Tanh",
        lambda t: forward(nn.Tanh(), (3,), ints(3)),
        TypeError,
        r"tanh: z must have a floating dtype",
    ),
    (
        "Silu int",
        "Silu",
        lambda t: forward(nn.Silu(), (3,), ints(3)),
        TypeError,
        r"silu: z must have a floating dtype",
    ),
    (
        "Softplus int",
        "Softplus",
        lambda t: forward(nn.Softplus(), (3,), ints(3)),
        TypeError,
        r"softplus: z must have a floating dtype",
    ),
    (
        "Flatten int",
        "Flatten",
        lambda t: nn.Flatten().forward({}, jnp.zeros((2, 3, 3, 1), jnp.int32)),
        TypeError,
        r"flatten: x must have a floating dtype",
    ),
    (
        "Flatten rank 1",
        "Flatten",
        lambda t: nn.Flatten().forward({}, z(6)),
        ValueError,
        r"flatten: x must have rank >= 2, got rank 1 \(shape \(6,\)\)",
    ),
    (
        "Flatten shape rank 1",
        "Flatten",
        lambda t: nn.serial(nn.Flatten(), nn.Dense(2)).init(KEY, (6,)),
        ValueError,
        r"Flatten: input_shape must be \(N, ...\) with rank >= 2, got \(6,\)",
    ),
    (
        "Context not a Context",
        "Context",
        lambda t: forward(NET, (8, 6), z(8, 6), ctx={"train": True}),
        TypeError,
        r"serial: the forward pass's context must be a manual_bp.nn.Context or None, got dict",
    ),
    (
        "Context train not a bool",
        "Context",
        lambda t: forward(NET, (8, 6), z(8, 6), ctx=nn.Context(train=1)),
        TypeError,
        r"serial: Context.train must be a Python bool .*got int 1",
    ),
    (
        "Context key not a key",
        "Context",
        lambda t: forward(nn.serial(nn.Dropout(0.5)), (8, 6), z(8, 6), nn.Context(True, z(2))),
        TypeError,
        r"serial: Context: key must be a PRNG key .*shape \(2,\) and dtype float32",
    ),
    (
        "Context state not a dict",
        "Context",
        lambda t: forward(nn.BatchNorm(), (8, 6), z(8, 6), nn.Context(True, KEY, [1, 2])),
        TypeError,
        r"BatchNorm: Context.state must be a dict \(net.init_state\(...\)\) or None, got list",
    ),
    (
        "Context taps not a dict",
        "Context",
        lambda t: forward(NET, (8, 6), z(8, 6), nn.Context(True, taps=[])),
        TypeError,
        r"serial: Context.taps must be a dict or None, got list",
    ),
    (
        "layer name with a slash",
        "serial",
        lambda t: nn.serial(nn.Dense(3, name="enc/out")),
        ValueError,
        r"serial: argument 0: layer name 'enc/out' contains '/', which separates nested",
    ),
    (
        "serial name not a str",
        "serial",
        lambda t: nn.serial(nn.Dense(3), name=7),
        TypeError,
        r"serial: a layer name must be a str or None, got int",
    ),
    (
        "residual block name with a slash",
        "residual",
        lambda t: nn.residual(nn.Dense(3, name="a/b")),
        ValueError,
        r"residual: block: layer name 'a/b' contains '/'",
    ),
    (
        "LastStep int",
        "LastStep",
        lambda t: nn.LastStep().forward({}, ints(2, 3, 4)),
        TypeError,
        r"last_step: x must have a floating dtype",
    ),
    (
        "check_params wrong leaf",
        "check_params",
        lambda t: nn.check_params(NET, {**PARAMS, "dense_2": {"w": z(3, 4), "b": z(3)}}, (8, 6)),
        ValueError,
        r"params\['dense_2'\]\['w'\]: expected shape \(4, 3\) for an input of shape \(8, 6\), "
        r"got \(3, 4\)",
    ),
    (
        "check_params not a layer",
        "check_params",
        lambda t: nn.check_params(3, {}, (4, 5)),
        TypeError,
        r"expected a manual_bp.nn.Layer, got int",
    ),
    (
        "check_state missing",
        "check_state",
        lambda t: nn.check_state(nn.BatchNorm(), {}, (4, 3)),
        ValueError,
        r"state: keys do not match the network: missing \['mean', 'var'\]",
    ),
    (
        "by_layer not a dict",
        "by_layer",
        lambda t: nn.by_layer([z(3)]),
        TypeError,
        r"by_layer: tree must be a dict of parameters by layer name, got list",
    ),
    # --- manual_bp.train ---------------------------------------------------------------------
    (
        "mlp activation",
        "mlp",
        lambda t: train.mlp((3,), 2, "swish"),
        ValueError,
        r"mlp: unknown activation 'swish'; choose one of: sigmoid, tanh",
    ),
    (
        "mlp hidden",
        "mlp",
        lambda t: train.mlp((3, 0), 2),
        ValueError,
        r"mlp: hidden sizes must be positive ints, got \[3, 0\]",
    ),
    (
        "build_model kind",
        "build_model",
        lambda t: train.build_model("vit", GOOD),
        ValueError,
        r"build_model: unknown model 'vit'; choose one of mlp, cnn, lstm, gru",
    ),
    (
        "verify_gradients params",
        "verify_gradients",
        lambda t: train.verify_gradients(NET, "softmax_cross_entropy", {}, z(8, 6), ints(8)),
        ValueError,
        r"params: keys do not match the network",
    ),
    (
        "fit label too large",
        "fit",
        lambda t: fit(bad_data(y_train=np.full(24, 3, np.int32))),
        ValueError,
        r"fit: data.y_train must hold class ids in \[0, 3\) for num_classes=3, got labels "
        r"from 3 to 3",
    ),
    (
        "fit negative test label",
        "fit",
        lambda t: fit(bad_data(y_test=np.array([0, 1, -1, 2, 0, 1, 2, 0], np.int32))),
        ValueError,
        r"fit: data.y_test must hold class ids in \[0, 3\) .*got labels from -1 to 2",
    ),
    (
        "fit token id outside the vocabulary",
        "fit",
        lambda t: fit_lm(ints(8, 4, value=5), ints(2, 4)),
        ValueError,
        r"fit: data.x_train must hold token ids in \[0, 5\) for the embedding 'embed' "
        r"\(vocab=5\), got ids from 5 to 5",
    ),
    (
        "fit float inputs to an embedding",
        "fit",
        lambda t: fit_lm(z(8, 4), z(2, 4)),
        TypeError,
        r"fit: data.x_train feeds the embedding 'embed', so it must hold integer token ids, "
        r"got dtype float32",
    ),
    (
        "fit empty test split",
        "fit",
        lambda t: fit(bad_data(x_test=np.zeros((0, 6), np.float32), y_test=np.zeros(0, np.int32))),
        ValueError,
        r"fit: the test split is empty \(data.x_test has 0 examples\)",
    ),
    (
        "fit non-finite features",
        "fit",
        lambda t: fit(bad_data(x_train=np.where(GOOD.x_train > 2, np.inf, GOOD.x_train))),
        ValueError,
        r"fit: data.x_train has \d+ non-finite values \(NaN or inf\) of 144",
    ),
    (
        "fit feature shapes",
        "fit",
        lambda t: fit(bad_data(x_test=np.zeros((8, 7), np.float32))),
        ValueError,
        r"fit: data.x_test examples have shape \(7,\) but data.x_train examples have shape "
        r"\(6,\)",
    ),
    (
        "fit list features",
        "fit",
        lambda t: fit(bad_data(x_train=GOOD.x_train.tolist())),
        TypeError,
        r"fit: data.x_train must be an array, got list",
    ),
    (
        "fit num_classes vs network",
        "fit",
        lambda t: fit(bad_data(num_classes=5)),
        ValueError,
        r"fit: the network gives 3 outputs per example \(output shape \(8, 3\)\), but "
        r"data.num_classes is 5",
    ),
    (
        "fit batch larger than the data",
        "fit",
        lambda t: fit(batch_size=25),
        ValueError,
        r"fit: batch_size 25 is larger than the training set \(24 examples\)",
    ),
    (
        "fit params of another network",
        "fit",
        lambda t: fit(params=train.mlp((5,), 3, "tanh").init(KEY, (8, 6), f32)),
        ValueError,
        r"params\['dense_0'\]\['b'\]: expected shape \(4,\) for an input of shape \(8, 6\), "
        r"got \(5,\)",
    ),
    (
        "fit opt_state of another optimizer",
        "fit",
        lambda t: fit(opt_state=optax.sgd(0.1).init(PARAMS)),
        ValueError,
        r"fit: opt_state does not match optimizer.init\(params\) .*missing \['\[0\].count'",
    ),
    (
        "fit opt_state of another model",
        "fit",
        lambda t: fit(opt_state=OPT.init(train.mlp((5,), 3, "tanh").init(KEY, (8, 6), f32))),
        ValueError,
        r"fit: opt_state\[0\].mu\['dense_0'\]\['b'\]: expected shape \(4,\) and dtype float32 "
        r"\(as optimizer.init\(params\) gives\), got \(5,\) float32",
    ),
    (
        "fit optimizer",
        "fit",
        lambda t: fit(optimizer="adam"),
        TypeError,
        r"fit: optimizer must be an optax GradientTransformation .*got str",
    ),
    (
        "fit key",
        "fit",
        lambda t: fit(key=0),
        TypeError,
        r"fit: key must be one PRNG key \(jax.random.key\(seed\)\), got int",
    ),
    (
        "fit callback",
        "fit",
        lambda t: fit(callback=3),
        TypeError,
        r"fit: callback must be callable or None, got int",
    ),
    # --- manual_bp.data ----------------------------------------------------------------------
    (
        "load_digits seed",
        "load_digits",
        lambda t: data.load_digits(seed=-1),
        ValueError,
        r"load_digits: seed must be a non-negative int, got -1",
    ),
    (
        "load_mnist1d samples",
        "load_mnist1d",
        lambda t: data.load_mnist1d(num_samples=15),
        ValueError,
        r"load_mnist1d: num_samples must be a positive multiple of 10",
    ),
    (
        "load_mnist5k fraction",
        "load_mnist5k",
        lambda t: data.load_mnist5k(test_fraction=1.5),
        ValueError,
        r"load_mnist5k: test_fraction must be a number in \(0, 1\), got 1.5",
    ),
    (
        "load_npz labels out of range",
        "load_npz",
        lambda t: data.load_npz(_npz(t, y=np.arange(12) % 4), num_classes=3),
        ValueError,
        r"load_npz: .*d.npz: labels must be in \[0, 3\) for num_classes=3, found label 3",
    ),
    (
        "load_npz negative labels",
        "load_npz",
        lambda t: data.load_npz(_npz(t, y=np.arange(12) % 4 - 1)),
        ValueError,
        r"load_npz: .*d.npz: 'y' has negative labels \(min -1\)",
    ),
    (
        "load_idx num_classes",
        "load_idx",
        lambda t: data.load_idx(t, num_classes=0),
        ValueError,
        r"load_idx: num_classes must be an int in 1..256, got 0",
    ),
    (
        "load_dataset spec",
        "load_dataset",
        lambda t: data.load_dataset("cifar"),
        ValueError,
        r"load_dataset: unknown dataset 'cifar'; choose one of: digits, mnist1d",
    ),
    # --- manual_bp.train.checkpoint ----------------------------------------------------------
    (
        "save non-finite params",
        "save_checkpoint",
        lambda t: save(
            t / "c.npz", params={**PARAMS, "dense_0": {**PARAMS["dense_0"], "b": z(4) / 0}}
        ),
        ValueError,
        r"save_checkpoint: params/dense_0/b has 4 non-finite values \(NaN or inf\) of 4; "
        r"refusing to write them to .*c.npz",
    ),
    (
        "save epoch",
        "save_checkpoint",
        lambda t: save(t / "c.npz", epoch=-1),
        ValueError,
        r"save_checkpoint: epoch must be a non-negative int, got -1",
    ),
    (
        "save key",
        "save_checkpoint",
        lambda t: save(t / "c.npz", key=7),
        TypeError,
        r"save_checkpoint: key must be a typed PRNG key \(jax.random.key\(seed\)\), got int",
    ),
    (
        "save config",
        "save_checkpoint",
        lambda t: save(t / "c.npz", config={"lr": object()}),
        TypeError,
        r"save_checkpoint: config must be plain JSON data: Object of type object",
    ),
    (
        "load other model",
        "load_checkpoint",
        lambda t: saved_then_loaded(t, params=train.mlp((5,), 3, "tanh").init(KEY, (8, 6), f32)),
        ValueError,
        r"checkpoint .*c.npz: params/dense_0/b has shape \(4,\) and dtype float32, the model "
        r"expects \(5,\) float32",
    ),
    (
        "load other optimizer",
        "load_checkpoint",
        lambda t: saved_then_loaded(t, opt_state=optax.sgd(0.1, momentum=0.9).init(PARAMS)),
        ValueError,
        r"checkpoint .*c.npz: it was written for a different model or optimizer",
    ),
    (
        "load missing file",
        "load_checkpoint",
        lambda t: load(t / "none.npz"),
        ValueError,
        r"checkpoint .*none.npz: no such file",
    ),
    # --- manual_bp.credit: swapped backward rules and alignment ---
    (
        "feedback str",
        "feedback",
        lambda t: credit.feedback("dense", "fa"),
        TypeError,
        r"feedback: layer must be a manual_bp.nn.Layer, got 'dense'",
    ),
    (
        "feedback variant",
        "feedback",
        lambda t: credit.feedback(nn.Dense(3), "nope"),
        ValueError,
        r"feedback: variant must be one of \('backprop', 'fa', 'sign', 'kp'\), got 'nope'",
    ),
    (
        "feedback tanh",
        "feedback",
        lambda t: credit.feedback(nn.Tanh(), "fa"),
        ValueError,
        r"feedback: layer kind 'tanh' has no weights that carry error backward",
    ),
    (
        "feedback twice",
        "feedback",
        lambda t: credit.feedback(credit.feedback(nn.Dense(3), "fa"), "fa"),
        ValueError,
        r"feedback: layer 'dense' is already wrapped",
    ),
    (
        "feedback weights",
        "feedback",
        lambda t: credit.feedback(nn.Dense(3), "fa", weights=("x",)),
        ValueError,
        r"feedback: weights must be a non-empty subset of \('w',\) for a dense layer",
    ),
    (
        "feedback no state",
        "feedback",
        lambda t: manual_bp.value_and_grad(FA, "softmax_cross_entropy")(
            FA_PARAMS, z(8, 6), ints(8)
        ),
        ValueError,
        r"the network 'serial' keeps state .*has_state=True",
    ),
    (
        "dfa str",
        "direct_feedback",
        lambda t: credit.direct_feedback("x"),
        TypeError,
        r"serial: argument 0 must be a manual_bp.nn.Layer, got 'x'",
    ),
    (
        "dfa empty",
        "direct_feedback",
        lambda t: credit.direct_feedback(),
        ValueError,
        r"serial: needs at least one layer",
    ),
    (
        "dfa no state",
        "direct_feedback",
        lambda t: manual_bp.value_and_grad(DFA, "softmax_cross_entropy", train=True)(
            DFA_PARAMS, z(8, 6), ints(8)
        ),
        ValueError,
        r"direct_feedback: training mode needs the feedback matrices",
    ),
    (
        "as_backprop str",
        "as_backprop",
        lambda t: credit.as_backprop("x"),
        TypeError,
        r"as_backprop: expected a manual_bp.nn.Layer, got 'x'",
    ),
    (
        "as_backprop combinator",
        "as_backprop",
        lambda t: credit.as_backprop(nn.serial(nn.Dense(3))._replace(kind="fanout")),
        ValueError,
        r"as_backprop: cannot rebuild a 'fanout' combinator",
    ),
    (
        "alignment loss",
        "alignment",
        lambda t: credit.alignment(FA, "nope"),
        ValueError,
        r"unknown rule 'nope'",
    ),
    (
        "alignment x",
        "alignment",
        lambda t: credit.alignment(FA, "softmax_cross_entropy")(
            FA_PARAMS, FA_STATE, z(8, 5), ints(8)
        ),
        ValueError,
        r"params\['dense_0'\]\['w'\]: expected shape \(5, 4\) for an input of shape",
    ),
    (
        "alignment state",
        "alignment",
        lambda t: credit.alignment(FA, "softmax_cross_entropy")(FA_PARAMS, {}, z(8, 6), ints(8)),
        ValueError,
        r"state: keys do not match the network: missing \['dense_0'",
    ),
    # --- manual_bp.per_example ---
    (
        "per-example str",
        "per_example_grads",
        lambda t: per_example.per_example_grads("x", "softmax_cross_entropy"),
        TypeError,
        r"per_example_grads: expected a manual_bp.nn.Layer, got 'x'",
    ),
    (
        "per-example batch norm",
        "per_example_grads",
        lambda t: per_example.per_example_grads(nn.serial(nn.Dense(4), nn.BatchNorm()), "mse"),
        ValueError,
        r"per_example_grads: the network keeps batch statistics",
    ),
    (
        "per-example y",
        "per_example_grads",
        lambda t: per_example.per_example_grads(NET, "softmax_cross_entropy")(
            PARAMS, z(8, 6), ints(7)
        ),
        ValueError,
        r"per_example_grads: y must have one entry per example \(8\), got shape \(7,\)",
    ),
    (
        "per-example empty",
        "per_example_grads",
        lambda t: per_example.per_example_grads(NET, "softmax_cross_entropy")(
            PARAMS, z(0, 6), ints(0)
        ),
        ValueError,
        r"per_example_grads: the batch is empty",
    ),
    (
        "statistics str",
        "gradient_statistics",
        lambda t: per_example.gradient_statistics(3, "softmax_cross_entropy"),
        TypeError,
        r"per_example_grads: expected a manual_bp.nn.Layer, got 3",
    ),
    (
        "clip 0",
        "clip_per_example",
        lambda t: per_example.clip_per_example({"w": z(4, 3)}, 0.0),
        ValueError,
        r"clip_per_example: max_norm must be a positive number, got 0.0",
    ),
    (
        "clip scalar leaf",
        "clip_per_example",
        lambda t: per_example.clip_per_example({"w": z(4, 3), "b": z()}, 1.0),
        ValueError,
        r"clip_per_example: every leaf of grads needs the same leading \(per-example\) axis",
    ),
    (
        "clip empty",
        "clip_per_example",
        lambda t: per_example.clip_per_example({}, 1.0),
        ValueError,
        r"clip_per_example: grads holds no arrays",
    ),
    # --- manual_bp.parallel (a one-device mesh: this process has one CPU device) ---
    (
        "parse_mesh_shape int",
        "parse_mesh_shape",
        lambda t: parallel.parse_mesh_shape(8),
        TypeError,
        r"parse_mesh_shape: expected a str such as '4x2', got int",
    ),
    (
        "parse_mesh_shape 4y2",
        "parse_mesh_shape",
        lambda t: parallel.parse_mesh_shape("4y2"),
        ValueError,
        r"parse_mesh_shape: expected DATA or DATAxMODEL with positive integers \(e\.g\. 8 or "
        r"4x2\), got '4y2'",
    ),
    (
        "data_parallel_mesh too many devices",
        "data_parallel_mesh",
        lambda t: parallel.data_parallel_mesh(2),
        ValueError,
        r"data_parallel_mesh: asked for 2 devices, but 1 is available \(cpu\)",
    ),
    (
        "data_parallel_mesh devices str",
        "data_parallel_mesh",
        lambda t: parallel.data_parallel_mesh("cpu"),
        TypeError,
        r"data_parallel_mesh: devices must be None, an int or a sequence of jax\.Device, got str",
    ),
    (
        "data_parallel_mesh shape",
        "data_parallel_mesh",
        lambda t: parallel.data_parallel_mesh(mesh_shape=(2,)),
        ValueError,
        r"data_parallel_mesh: mesh_shape \(2,\) needs 2 devices, got 1",
    ),
    (
        "data_axis_size str",
        "data_axis_size",
        lambda t: parallel.data_axis_size("mesh"),
        TypeError,
        r"data_axis_size: mesh must be a jax\.sharding\.Mesh, got str",
    ),
    (
        "replicated_sharding str",
        "replicated_sharding",
        lambda t: parallel.replicated_sharding("mesh"),
        TypeError,
        r"replicated_sharding: mesh must be a jax\.sharding\.Mesh, got str",
    ),
    (
        "batch_sharding negative axis",
        "batch_sharding",
        lambda t: parallel.batch_sharding(mesh(), -1),
        ValueError,
        r"batch_sharding: axis must be an int >= 0 \(the batch axis\), got -1",
    ),
    (
        "replicate str leaf",
        "replicate",
        lambda t: parallel.replicate({"w": "x"}, mesh()),
        TypeError,
        r"replicate: every leaf of tree must be an array or a number, got str at tree\['w'\]",
    ),
    (
        "replicate str mesh",
        "replicate",
        lambda t: parallel.replicate({}, "mesh"),
        TypeError,
        r"replicate: mesh must be a jax\.sharding\.Mesh, got str",
    ),
    (
        "shard_batch scalar",
        "shard_batch",
        lambda t: parallel.shard_batch({"x": z()}, mesh()),
        ValueError,
        r"shard_batch: every leaf needs a batch axis 0, got shape \(\)",
    ),
    (
        "shard_batch axis str",
        "shard_batch",
        lambda t: parallel.shard_batch(z(8, 3), mesh(), "0"),
        TypeError,
        r"shard_batch: axis must be an int >= 0 \(the batch axis\), got '0'",
    ),
    (
        "constrain_batch scalar",
        "constrain_batch",
        lambda t: parallel.constrain_batch((z(8, 3), z()), mesh()),
        ValueError,
        r"constrain_batch: every leaf needs a batch axis 0, got shape \(\)",
    ),
    (
        "constrain_batch str mesh",
        "constrain_batch",
        lambda t: parallel.constrain_batch(z(8, 3), "mesh"),
        TypeError,
        r"constrain_batch: mesh must be a jax\.sharding\.Mesh, got str",
    ),
    (
        "process_rows batch 0",
        "process_rows",
        lambda t: parallel.process_rows(0, mesh()),
        ValueError,
        r"process_rows: batch_size must be a positive int, got 0",
    ),
    (
        "process_rows batch str",
        "process_rows",
        lambda t: parallel.process_rows("8", mesh()),
        TypeError,
        r"process_rows: batch_size must be a positive int, got '8'",
    ),
    (
        "shard_local_batch rows",
        "shard_local_batch",
        lambda t: parallel.shard_local_batch(np.zeros((7, 3)), mesh(), 8),
        ValueError,
        r"shard_local_batch: each leaf must hold this process's 8 rows of the global batch of 8, "
        r"got shape \(7, 3\)",
    ),
    (
        "data_parallel_value_and_grad str net",
        "data_parallel_value_and_grad",
        lambda t: parallel.data_parallel_value_and_grad("x", "mse", mesh()),
        TypeError,
        r"data_parallel_value_and_grad: expected a manual_bp\.nn\.Layer as the network, got str",
    ),
    (
        "data_parallel_value_and_grad str mesh",
        "data_parallel_value_and_grad",
        lambda t: parallel.data_parallel_value_and_grad(NET, "mse", "mesh"),
        TypeError,
        r"data_parallel_value_and_grad: mesh must be a jax\.sharding\.Mesh, got str",
    ),
    (
        "shard_map_value_and_grad unknown loss",
        "shard_map_value_and_grad",
        lambda t: parallel.shard_map_value_and_grad(NET, "nope", mesh()),
        ValueError,
        r"shard_map_value_and_grad: unknown rule 'nope'; registered rules: ",
    ),
    (
        "place_for_fit batch 0",
        "place_for_fit",
        lambda t: parallel.place_for_fit(mesh(), 0, PARAMS, OPT.init(PARAMS), {}, z(8, 6), ints(8)),
        ValueError,
        r"fit: batch_size must be a positive int, got 0",
    ),
    (
        "tensor_parallel_shardings str params",
        "tensor_parallel_shardings",
        lambda t: parallel.tensor_parallel_shardings("abc", mesh()),
        TypeError,
        r"tensor_parallel_shardings: every leaf of params must be an array or a number, got str",
    ),
    (
        "matching_shardings mismatched",
        "matching_shardings",
        lambda t: parallel.matching_shardings(OPT.init(PARAMS), PARAMS, {}, mesh()),
        ValueError,
        r"matching_shardings: shardings must have the tree structure of params .*got 0 "
        r"shardings for 4 parameters",
    ),
    (
        "state_shardings mismatched",
        "state_shardings",
        lambda t: parallel.state_shardings({}, PARAMS, {}, mesh()),
        ValueError,
        r"state_shardings: shardings must have the tree structure of params .*got 0 "
        r"shardings for 4 parameters",
    ),
    (
        "state_shardings string leaf",
        "state_shardings",
        lambda t: parallel.state_shardings(
            {"dense_0": {"feedback": {"w": "B"}}},
            PARAMS,
            parallel.tensor_parallel_shardings(PARAMS, mesh()),
            mesh(),
        ),
        TypeError,
        r"state_shardings: every leaf of state must be an array or a number, got str at "
        r"state\['dense_0'\]\['feedback'\]\['w'\]",
    ),
    (
        "initialize_distributed address",
        "initialize_distributed",
        lambda t: parallel.initialize_distributed("nowhere", 2, 0),
        ValueError,
        r"initialize_distributed: coordinator must be HOST:PORT, got 'nowhere'",
    ),
    (
        "initialize_distributed str count",
        "initialize_distributed",
        lambda t: parallel.initialize_distributed("127.0.0.1:1234", "2", 0),
        TypeError,
        r"initialize_distributed: num_processes must be an int, got str",
    ),
    (
        "cli_mesh devices 0",
        "cli_mesh",
        lambda t: parallel.cli_mesh(0, None, 8),
        ValueError,
        r"cli_mesh: devices must be a positive int, got 0",
    ),
    (
        "cli_mesh batch 0",
        "cli_mesh",
        lambda t: parallel.cli_mesh(1, None, 0),
        ValueError,
        r"cli_mesh: batch_size must be a positive int, got 0",
    ),
    (
        "cli_mesh shape",
        "cli_mesh",
        lambda t: parallel.cli_mesh(1, "4y2", 8),
        ValueError,
        r"argument --mesh-shape: expected DATA or DATAxMODEL",
    ),
    (
        "tolerance_for kind",
        "tolerance_for",
        lambda t: verify.tolerance_for(f32, "loose"),
        ValueError,
        r"tolerance_for: kind must be one of \('rule', 'network'\), got 'loose'",
    ),
    (
        "tolerance_for dtype",
        "tolerance_for",
        lambda t: verify.tolerance_for("no-such-dtype"),
        TypeError,
        r"tolerance_for: expected a dtype, got 'no-such-dtype'",
    ),
    (
        "audit_networks dtypes",
        "audit_networks",
        lambda t: audit.audit_networks(["float16"]),
        ValueError,
        r"audit_networks: dtypes must be a sequence of 'float64' and 'float32'",
    ),
    (
        "audit_networks progress",
        "audit_networks",
        lambda t: audit.audit_networks(progress=3),
        TypeError,
        r"audit_networks: progress must be callable or None, got int",
    ),
    (
        "check_one_network name",
        "check_one_network",
        lambda t: audit.check_one_network("mlp-nope", "float32"),
        ValueError,
        r"check_one_network: unknown network 'mlp-nope'; bundled: \[",
    ),
    (
        "check_one_network dtype",
        "check_one_network",
        lambda t: audit.check_one_network("mlp-tanh", "bfloat16"),
        ValueError,
        r"check_one_network: dtype must be 'float64' or 'float32', got 'bfloat16'",
    ),
    (
        "false_alarms seeds",
        "false_alarms",
        lambda t: survey.false_alarms(seeds=0),
        ValueError,
        r"false_alarms: seeds must be a positive int, got 0",
    ),
    (
        "false_alarms dtypes",
        "false_alarms",
        lambda t: survey.false_alarms(dtypes="float32"),
        ValueError,
        r"false_alarms: dtypes must be a sequence of",
    ),
    (
        "detection_power kinds",
        "detection_power",
        lambda t: survey.detection_power(kinds=("flip",)),
        ValueError,
        r"detection_power: unknown kinds \['flip'\]",
    ),
    (
        "detection_power progress",
        "detection_power",
        lambda t: survey.detection_power(progress="x"),
        TypeError,
        r"detection_power: progress must be callable or None, got str",
    ),
    (
        "survey detection_seeds",
        "survey",
        lambda t: survey.survey(detection_seeds=0),
        ValueError,
        r"survey: detection_seeds must be a positive int, got 0",
    ),
    (
        "to_markdown result",
        "to_markdown",
        lambda t: survey.to_markdown([]),
        TypeError,
        r"to_markdown: expected what survey\(\) returns",
    ),
    # --- manual_bp.verify.audit (its messages name the ``manual-bp verify`` command) ---
    (
        "audit unknown dtype",
        "audit",
        lambda t: audit.audit(dtypes=["float8"]),
        ValueError,
        r"verify: unknown dtype\(s\) \['float8'\]",
    ),
    (
        "audit shapes 0",
        "audit",
        lambda t: audit.audit(shapes=0),
        ValueError,
        r"verify: shapes must be a positive int",
    ),
    (
        "audit rules str",
        "audit",
        lambda t: audit.audit(rules="dense"),
        TypeError,
        r"verify: rules must be a sequence of rule names, got 'dense'",
    ),
    (
        "audit progress not callable",
        "audit",
        lambda t: audit.audit(progress=3),
        TypeError,
        r"verify: progress must be callable or None, got int",
    ),
    (
        "write_json directory",
        "write_json",
        lambda t: audit.write_json(t, {}),
        ValueError,
        r"write_json: .* is a directory, expected a file path",
    ),
    (
        "write_json missing folder",
        "write_json",
        lambda t: audit.write_json(t / "none" / "a.json", {}),
        ValueError,
        r"write_json: folder .*none does not exist",
    ),
    (
        "write_json not JSON",
        "write_json",
        lambda t: audit.write_json(t / "a.json", {"a": object()}),
        TypeError,
        r"write_json: payload is not JSON-serializable: Object of type object",
    ),
    (
        "audit networks unknown",
        "audit",
        lambda t: audit.audit(networks=["nope"]),
        TypeError,
        r"verify: networks must be a bool or a sequence of bundled network names",
    ),
    (
        "audit_networks names",
        "audit_networks",
        lambda t: audit.audit_networks(names=["nope"]),
        ValueError,
        r"audit_networks: names must be a sequence of \[",
    ),
    (
        "audit_module without ROWS",
        "audit_module",
        lambda t: audit.audit_module("json"),
        ValueError,
        r"verify --module json: the module has no ROWS; a module audited by manual-bp verify "
        r"exposes ROWS",
    ),
    (
        "audit_module rules str",
        "audit_module",
        lambda t: audit.audit_module("user_rules", rules="prelu"),
        TypeError,
        r"verify: rules must be a sequence of rule names, got 'prelu'",
    ),
    (
        "check_case str row",
        "check_case",
        lambda t: audit.check_case("tanh", RULES["tanh"], (3,), f32, "normal"),
        TypeError,
        r"check_case: row must be a manual_bp\.verify\.Row, got str",
    ),
    (
        "check_case domain",
        "check_case",
        lambda t: audit.check_case(TANH_ROW, RULES["tanh"], (3,), f32, "masked"),
        ValueError,
        r"check_case: domain must be one of \('normal', 'extreme'\), got 'masked'",
    ),
    (
        "load_module int",
        "load_module",
        lambda t: audit.load_module(3),
        TypeError,
        r"load_module: module must be a module, a module name or a \.py path, got int",
    ),
    (
        "load_module missing file",
        "load_module",
        lambda t: audit.load_module(t / "none.py"),
        ValueError,
        r"verify --module .*none\.py: no such file",
    ),
    (
        "load_module import error",
        "load_module",
        lambda t: audit.load_module("no_such_module_here"),
        ValueError,
        r"verify --module no_such_module_here: cannot import it: ModuleNotFoundError",
    ),
    (
        "load_rules without ROWS",
        "load_rules",
        lambda t: audit.load_rules("json"),
        ValueError,
        r"verify --module json: the module has no ROWS",
    ),
    (
        "row_cases str",
        "row_cases",
        lambda t: audit.row_cases("tanh"),
        TypeError,
        r"row_cases: row must be a manual_bp\.verify\.Row, got str",
    ),
    (
        "rules_of list",
        "rules_of",
        lambda t: audit.rules_of([1]),
        TypeError,
        r"rules_of: ROWS must be a tuple of manual_bp\.verify\.Row, got \[1\]",
    ),
    (
        "rules_of unknown rule",
        "rules_of",
        lambda t: audit.rules_of((verify.Row("no_such_rule", unary, ((3,),)),)),
        ValueError,
        r"rules_of: rows name rule\(s\) \['no_such_rule'\], which are neither in RULES nor "
        r"registered",
    ),
    # --- manual_bp.testing ---
    (
        "cases int",
        "cases",
        lambda t: testing.cases(3),
        TypeError,
        r"cases: ROWS must be a tuple of manual_bp\.verify\.Row, got 3",
    ),
    (
        "cases rule without a row",
        "cases",
        lambda t: testing.cases((TANH_ROW,), {"tanh": RULES["tanh"], "relu": RULES["relu"]}),
        ValueError,
        r"cases: rule\(s\) \['relu'\] have no row, so they are never checked",
    ),
    (
        "cases shapes 0",
        "cases",
        lambda t: testing.cases((TANH_ROW,), shapes=0),
        ValueError,
        r"cases: shapes must be a positive int or None \(all\), got 0",
    ),
    (
        "check str",
        "check",
        lambda t: testing.check("tanh"),
        TypeError,
        r"check: case must be a manual_bp\.testing\.Case, got str",
    ),
    # --- reference.register: a reference forward for a layer kind of the user's own ---
    (
        "reference.register built-in kind",
        "reference.register",
        lambda t: reference.register("dense", lambda params, x: x),
        ValueError,
        r"reference\.register: kind 'dense' has a built-in reference forward",
    ),
    (
        "reference.register not callable",
        "reference.register",
        lambda t: reference.register("my_kind", 3),
        TypeError,
        r"reference\.register\('my_kind'\): fn must be callable, got int",
    ),
    (
        "check_network references list",
        "check_network",
        lambda t: verify.check_network(NET, "mse", PARAMS, z(8, 6), z(8, 3), references=[1]),
        TypeError,
        r"check_network: references must be a dict of layer kind -> fn\(params, x, \*\*config\)",
    ),
    (
        "check_network references built-in kind",
        "check_network",
        lambda t: verify.check_network(
            NET, "mse", PARAMS, z(8, 6), z(8, 3), references={"dense": lambda p, x: x}
        ),
        ValueError,
        r"check_network: references: kind 'dense' has a built-in reference forward",
    ),
    # --- manual_bp.train.report ---
    (
        "layer_norms grads str",
        "layer_norms",
        lambda t: report.layer_norms("x", {}),
        TypeError,
        r"layer_norms: grads must be a dict, got str",
    ),
    (
        "layer_norms delta list",
        "layer_norms",
        lambda t: report.layer_norms({}, {"dense_0": [1.0, 2.0]}),
        TypeError,
        r"layer_norms: deltas\['dense_0'\] must be an array, got list",
    ),
    (
        "step_norms outputs list",
        "step_norms",
        lambda t: report.step_norms({}, {"dense_0": z(2, 3)}, {"dense_0": [1.0]}),
        TypeError,
        r"step_norms: outputs\['dense_0'\] must be an array, got list",
    ),
    (
        "write_metrics directory",
        "write_metrics",
        lambda t: report.write_metrics(t, RECORDS),
        ValueError,
        r"write_metrics: expected a file path, got .*, which is a directory",
    ),
    (
        "write_metrics record not a dict",
        "write_metrics",
        lambda t: report.write_metrics(t / "metrics.jsonl", [1]),
        TypeError,
        r"write_metrics: records\[0\] must be a dict, got int",
    ),
    (
        "read_metrics directory",
        "read_metrics",
        lambda t: report.read_metrics(t),
        ValueError,
        r"read_metrics: expected a metrics\.jsonl file, got .*, a directory",
    ),
    (
        "read_metrics bad line",
        "read_metrics",
        lambda t: report.read_metrics(jsonl(t, '{"epoch": 1}\nnot json\n')),
        ValueError,
        r"read_metrics: .*metrics\.jsonl: line 2 is not JSON",
    ),
    (
        "write_plots missing folder",
        "write_plots",
        lambda t: report.write_plots(t / "none", RECORDS),
        ValueError,
        r"write_plots: expected an existing folder, got .*none, which does not exist",
    ),
    (
        "write_plots no records",
        "write_plots",
        lambda t: report.write_plots(t, []),
        ValueError,
        r"write_plots: records is empty",
    ),
    (
        "write_plots record keys",
        "write_plots",
        lambda t: report.write_plots(t, [{"epoch": 1}]),
        ValueError,
        r"write_plots: records\[0\] lacks \['train_loss', 'test_loss', 'test_accuracy'\]",
    ),
    # --- manual_bp.train.guard ---
    (
        "tree_is_finite str leaf",
        "tree_is_finite",
        lambda t: guard.tree_is_finite({"a": "x"}),
        TypeError,
        r"tree_is_finite: every leaf of tree must be an array or a number, got str at "
        r"tree\['a'\]",
    ),
    (
        "epoch_batches batch 0",
        "epoch_batches",
        lambda t: guard.epoch_batches(KEY, z(8, 3), z(8), 0),
        ValueError,
        r"epoch_batches: batch_size must be an int in \[1, 8\] \(the number of examples\), got 0",
    ),
    (
        "epoch_batches lengths",
        "epoch_batches",
        lambda t: guard.epoch_batches(KEY, z(8, 3), z(7), 4),
        ValueError,
        r"epoch_batches: x and y must hold the same number of examples, got x of shape \(8, 3\) "
        r"and y of shape \(7,\)",
    ),
    (
        "epoch_batches key int",
        "epoch_batches",
        lambda t: guard.epoch_batches(0, z(8, 3), z(8), 4),
        TypeError,
        r"epoch_batches: epoch_key must be a PRNG key \(jax\.random\.key\), got int",
    ),
    (
        "diagnose str loss",
        "diagnose",
        lambda t: diagnose(loss="softmax_cross_entropy"),
        TypeError,
        r"diagnose: loss must be a manual_bp\.Rule, got str",
    ),
    (
        "diagnose carry",
        "diagnose",
        lambda t: diagnose(carry=(PARAMS, OPT.init(PARAMS))),
        TypeError,
        r"diagnose: carry must be a tuple \(params, opt_state, state\), got a tuple of length 2",
    ),
    (
        "diagnose no flags",
        "diagnose",
        lambda t: diagnose(losses_finite=np.zeros(0, bool)),
        ValueError,
        r"diagnose: losses_finite must be a non-empty 1-D array of per-step flags, got shape "
        r"\(0,\)",
    ),
    (
        "name_primitive err str",
        "name_primitive",
        lambda t: guard.name_primitive(NET, RULES["softmax_cross_entropy"], "err"),
        TypeError,
        r"name_primitive: err must be the NonFiniteError raised by fit, got str",
    ),
    (
        "name_primitive str net",
        "name_primitive",
        lambda t: guard.name_primitive("net", RULES["softmax_cross_entropy"], non_finite()),
        TypeError,
        r"name_primitive: expected a manual_bp\.nn\.Layer as the network, got str",
    ),
    # --- manual_bp.verify and manual_bp.adapter: the functions manual_bp exports (rows in
    # its section above), here called through their own modules ---
    (
        "check_rule unknown",
        "check_rule",
        lambda t: verify.check_rule("nope", z(3)),
        ValueError,
        r"check_rule: unknown rule 'nope'; registered rules: ",
    ),
    (
        "check_network str net",
        "check_network",
        lambda t: verify.check_network("x", "mse", PARAMS, z(8, 6), z(8, 3)),
        TypeError,
        r"check_network: net must be a manual_bp\.nn\.Layer, got str",
    ),
    (
        "check_network list x",
        "check_network",
        lambda t: verify.check_network(NET, "mse", PARAMS, [[0.0] * 6] * 8, z(8, 3)),
        TypeError,
        r"check_network: x must be an array, got list",
    ),
    (
        "assert_rule_correct unknown",
        "assert_rule_correct",
        lambda t: verify.assert_rule_correct("nope", z(3)),
        ValueError,
        r"check_rule: unknown rule 'nope'",
    ),
    (
        "as_custom_vjp unknown",
        "as_custom_vjp",
        lambda t: adapter.as_custom_vjp("nope"),
        ValueError,
        r"as_custom_vjp: unknown rule 'nope'; registered rules: ",
    ),
    (
        "as_custom_vjp str primal",
        "as_custom_vjp",
        lambda t: adapter.as_custom_vjp("tanh")("x"),
        TypeError,
        r"as_custom_vjp\('tanh'\): primal 0 must be an array or a number, got str",
    ),
    (
        "as_primitive unknown",
        "as_primitive",
        lambda t: manual_bp.as_primitive("nope"),
        ValueError,
        r"as_primitive: unknown rule 'nope'; registered rules: ",
    ),
    (
        "as_primitive no jvp",
        "as_primitive",
        lambda t: manual_bp.as_primitive(SCALE),
        TypeError,
        r"as_primitive\('scale'\): the rule has no jvp, so it has no forward mode; .*"
        r"use manual_bp\.as_custom_vjp",
    ),
    (
        "as_primitive unhashable static",
        "as_primitive",
        lambda t: manual_bp.as_primitive("softmax", axis=[0]),
        TypeError,
        r"as_primitive\('softmax'\): static keywords must be hashable",
    ),
    (
        "as_primitive str primal",
        "as_primitive",
        lambda t: manual_bp.as_primitive("tanh")("x"),
        TypeError,
        r"as_primitive\('tanh'\): primal 0 must be an array or a number, got str",
    ),
    # --- manual_bp.curvature: loss factors, diagonal GGN, Kronecker factors, K-FAC ---
    (
        "hessian_factor loss",
        "hessian_factor",
        lambda t: curvature.hessian_factor("tanh", z(2, 3), z(2, 3)),
        ValueError,
        r"hessian_factor: no Hessian factor for the loss 'tanh'; supported: ",
    ),
    (
        "hessian_factor rank",
        "hessian_factor",
        lambda t: curvature.hessian_factor("mse", z(2), z(2)),
        ValueError,
        r"hessian_factor: out must have rank",
    ),
    (
        "mc_hessian_factor samples",
        "mc_hessian_factor",
        lambda t: curvature.mc_hessian_factor("mse", z(2, 3), z(2, 3), KEY, 0),
        ValueError,
        r"mc_hessian_factor: samples must be a positive int",
    ),
    (
        "loss_hessian rank",
        "loss_hessian",
        lambda t: curvature.loss_hessian(z(2, 3)),
        ValueError,
        r"loss_hessian: factor must have rank",
    ),
    (
        "diag_ggn net",
        "diag_ggn",
        lambda t: curvature.diag_ggn("mlp", "mse"),
        TypeError,
        r"diag_ggn: expected a manual_bp.nn.Layer as the network, got 'mlp'",
    ),
    (
        "diag_ggn params shape",
        "diag_ggn",
        lambda t: curvature.diag_ggn(nn.mlp([3], 2), "mse")(
            nn.mlp([3], 2).init(KEY, (2, 4)), z(2, 5), z(2, 2)
        ),
        ValueError,
        r"params\['dense_0'\]\['w'\]: expected shape \(5, 3\)",
    ),
    (
        "dense_diag_ggn batch norm",
        "dense_diag_ggn",
        lambda t: curvature.dense_diag_ggn(nn.serial(nn.Dense(2), nn.BatchNorm()), "mse"),
        ValueError,
        r"dense_diag_ggn: the network .* keeps batch statistics",
    ),
    (
        "kfac_factors kind",
        "kfac_factors",
        lambda t: curvature.kfac_factors(nn.mlp([3], 2), "mse", kind="kfra"),
        ValueError,
        r"kfac_factors: kind must be one of \('kfac', 'kflr'\), got 'kfra'",
    ),
    (
        "conv_patches groups",
        "conv_patches",
        lambda t: curvature.conv_patches(nn.Conv2D(2, (1, 1), groups=2, name="g"), z(1, 2, 2, 2)),
        ValueError,
        r"conv_patches: layer 'g' has groups=2",
    ),
    (
        "hessian_diag kind",
        "hessian_diag",
        lambda t: curvature.hessian_diag(nn.serial(nn.Dense(3), nn.LayerNorm()), "mse"),
        ValueError,
        r"hessian_diag: layer 'layer_norm_1' of kind 'layer_norm' is not supported",
    ),
    (
        "layer_projections kind",
        "layer_projections",
        lambda t: curvature.layer_projections(nn.Tanh(name="t"), {}, z(1, 2), z(1, 2)),
        ValueError,
        r"layer_projections: layer 't' of kind 'tanh' has no Kronecker factors",
    ),
    (
        "diag_ggn_preconditioner damping",
        "diag_ggn_preconditioner",
        lambda t: curvature.diag_ggn_preconditioner(nn.mlp([3], 2), "mse", damping=0.0),
        ValueError,
        r"diag_ggn_preconditioner: damping must be > 0, got 0.0",
    ),
    (
        "kfac damping",
        "kfac",
        lambda t: curvature.kfac(nn.mlp([3], 2), "mse", damping=-1.0),
        ValueError,
        r"kfac: damping must be > 0, got -1.0",
    ),
    (
        "weight_perturbed loss",
        "weight_perturbed",
        lambda t: forward_grad.weight_perturbed(NET, "nope"),
        ValueError,
        r"unknown rule 'nope'",
    ),
    (
        "weight_perturbed params",
        "weight_perturbed",
        lambda t: forward_grad.weight_perturbed(NET, "softmax_cross_entropy")(
            NET.init(KEY, (8, 5), f32), z(8, 6), ints(8), KEY
        ),
        ValueError,
        r"params\['dense_0'\]\['w'\]: expected shape \(6, 4\)",
    ),
    (
        "activity_perturbed net",
        "activity_perturbed",
        lambda t: forward_grad.activity_perturbed(nn.Dense(3), "mse"),
        TypeError,
        r"activity_perturbed: expected a manual_bp\.nn\.serial network, got Layer",
    ),
    (
        "as_grad_fn estimator",
        "as_grad_fn",
        lambda t: forward_grad.as_grad_fn("backward"),
        ValueError,
        r"as_grad_fn: estimator must be one of \('weight', 'activity'\), got 'backward'",
    ),
    (
        "as_grad_fn batch norm",
        "as_grad_fn",
        lambda t: train.fit(
            nn.serial(nn.Dense(4), nn.BatchNorm(), nn.Dense(3)),
            "softmax_cross_entropy",
            nn.serial(nn.Dense(4), nn.BatchNorm(), nn.Dense(3)).init(KEY, (8, 6), f32),
            GOOD,
            optimizer=OPT,
            epochs=1,
            batch_size=8,
            key=jax.random.key(1),
            grad_fn=forward_grad.as_grad_fn("weight"),
        ),
        TypeError,
        r"forward gradients \(weight-perturbed\): network 'serial' has state \(batch-norm",
    ),
    (
        "forward alignment estimator",
        "alignment",
        lambda t: forward_grad.alignment(NET, "softmax_cross_entropy", "exact"),
        ValueError,
        r"alignment: estimator must be one of \('weight', 'activity'\), got 'exact'",
    ),
    (
        "weight_angles trees",
        "weight_angles",
        lambda t: manual_bp.grad.weight_angles(PARAMS, {"dense_0": PARAMS["dense_0"]}),
        ValueError,
        r"weight_angles: grads and reference must hold the same layers' weights",
    ),
    (
        "ggn_vector_product net",
        "ggn_vector_product",
        lambda t: curvature.ggn_vector_product(None, "mse"),
        TypeError,
        r"ggn_vector_product: expected a manual_bp.nn.Layer as the network, got None",
    ),
]


def _npz(folder: Path, y: np.ndarray) -> Path:
    path = folder / "d.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((len(y), 3)), y=y)
    return path


@pytest.mark.parametrize(("call", "exc", "pattern"), [pytest.param(*b[2:], id=b[0]) for b in BAD])
def test_bad_input_raises_a_clear_error(call, exc, pattern, tmp_path):
    with pytest.raises(exc, match=pattern) as info:
        call(tmp_path)
    assert type(info.value) in (ValueError, TypeError)
    assert not re.search(r"Traced<|tracer", str(info.value))


def test_fit_rejects_before_compiling(monkeypatch):
    """fit's checks run before jax.jit traces anything."""

    def no_tracing(*args, **kwargs):
        raise AssertionError("jax.jit was reached")

    monkeypatch.setattr(jax, "jit", no_tracing)
    with pytest.raises(ValueError, match=r"fit: data.y_train must hold class ids"):
        fit(bad_data(y_train=np.full(24, 7, np.int32)))


# --- the manual-bp command: each bad argument exits 2 with one line -------------------------

CLI_BAD = [
    (["train", "--epochs", "0"], r"argument --epochs: expected a positive integer, got '0'"),
    (["train", "--hidden", "16,-2"], r"argument --hidden: expected comma-separated positive"),
    (["train", "--lr", "nan"], r"argument --lr: expected a positive number, got 'nan'"),
    (["train", "--batch-size", "100000"], r"argument --batch-size: 100000 is larger than the"),
    (["train", "--dataset", "npz:"], r"argument --dataset: load_dataset: 'npz:' needs a PATH"),
    (["train", "--dataset", "idx:{tmp}/none"], r"load_idx: .*none: directory not found"),
    (["train", "--out", "{tmp}/file"], r"argument --out: .*file exists and is not a directory"),
    (["train", "--resume", "--out", "{tmp}"], r"argument --resume: no checkpoint at .*"),
    (["verify", "--rule", "nope"], r"unknown rule\(s\) nope; registered: "),
    (["verify", "--dtype", "float8"], r"argument --dtype: invalid choice: 'float8'"),
    (["verify", "--network", "nope"], r"unknown network\(s\) nope; bundled: mlp-sigmoid-deep"),
    (["verify", "--module", "no_such_mod"], r"verify --module no_such_mod: cannot import it"),
    (["verify", "--module", "json"], r"verify --module json: the module has no ROWS"),
    (["verify", "--module", "user_rules", "--rule", "tanh"], r"unknown rule\(s\) tanh; the module"),
    (
        ["verify", "--module", "user_rules", "--network", "mlp-tanh"],
        r"--network audits the bundled",
    ),
    (["train", "--feedback", "xx"], r"argument --feedback: invalid choice: 'xx'"),
    (["train", "--dropout", "1.5"], r"argument --dropout: expected a rate in \[0, 1\), got '1.5'"),
    (["train", "--devices", "0"], r"argument --devices: expected a positive integer, got '0'"),
    (["train", "--mesh-shape", "4y2"], r"argument --mesh-shape: expected DATA or DATAxMODEL"),
    (["bench", "--models", "nope"], r"argument --models: invalid choice: 'nope'"),
    (["bench", "--repeats", "0"], r"argument --repeats: expected a positive integer, got '0'"),
    (["fly"], r"argument COMMAND: invalid choice: 'fly'"),
]


@pytest.mark.parametrize(("argv", "pattern"), CLI_BAD, ids=[" ".join(a) for a, _ in CLI_BAD])
def test_cli_bad_arguments_exit_2_with_a_clear_line(argv, pattern, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, line = cli(capsys, *(a.replace("{tmp}", str(tmp_path)) for a in argv))
    assert code == 2
    assert re.search(pattern, line), line
    assert line.startswith("manual-bp")


# --- every public callable is in a table ------------------------------------------------------

NOT_CALLED_WITH_DATA = {
    "Rule": "a NamedTuple (checked where it is registered or called)",
    "NetworkReport": "a result type",
    "RuleReport": "a result type",
    "Layer": "a NamedTuple (its constructors are in the table)",
    "has_state": "a predicate over a network's description",
    "Checkpoint": "a result type",
    "Dataset": "a NamedTuple (checked by fit)",
    "FitResult": "a result type",
    "NonFiniteError": "an exception class (raised by fit, built by guard.diagnose)",
    "Comparison": "a result type (of check_rule and check_network)",
    "LayerCheck": "a result type (of check_network)",
    "Tolerance": "a NamedTuple of two numbers (a row of the tolerance table)",
    "Row": "a dataclass of one audit-table row (checked by rules_of and check_case)",
    "Case": "a NamedTuple of one table case (made by cases, checked by check)",
    "Kronecker": "a NamedTuple of two factor matrices (a result type of kfac_factors)",
    "KfacState": "a NamedTuple (the state kfac's init builds)",
    "DiagGgnState": "a NamedTuple (the state diag_ggn_preconditioner's init builds)",
    "Projection": "a NamedTuple of a weight's inputs and deltas (a result type of "
    "layer_projections)",
}


def test_every_public_callable_has_a_row():
    """Each public callable of the modules in ``public_api.BAD_INPUT_MODULES`` (manual_bp,
    manual_bp.nn, data, train, checkpoint, credit, per_example, parallel, audit, report, guard,
    verify, adapter, survey, testing, curvature) has a row in this table or in
    tests/test_bad_input.py, or is listed above as holding no inputs.
    Constants (DATA_AXIS,
    PLOTS, NETWORKS, EXIT_NON_FINITE) are not callable and are skipped. (manual_bp.parallel's
    errors on 8 devices are tested in tests/test_parallel.py.)"""
    import public_api
    import test_bad_input

    covered = {b[1] for b in BAD}
    covered |= {"value_and_grad", "register"} if test_bad_input.BAD else set()
    public = {
        name
        for module in public_api.load(public_api.BAD_INPUT_MODULES)
        for name in module.__all__
        if callable(getattr(module, name)) and not isinstance(getattr(module, name), ModuleType)
    }
    missing = sorted(public - covered - set(NOT_CALLED_WITH_DATA))
    assert not missing, f"public names without a bad-input row: {missing}"

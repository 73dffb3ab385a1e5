"""Training with handwritten gradients: a jit-compiled loop of forward, backward, optax update.

Gradient descent on C(θ) = (1/B) Σₙ Cⁿ(θ) over mini-batches of B examples:
θ ← θ + optimizer.update(∂C/∂θ), with ∂C/∂θ from the handwritten backward pass
(:func:`manual_bp.value_and_grad`). One epoch is a single compiled call: the training set is
shuffled into ``n // B`` batches and ``jax.lax.scan`` runs the steps over them.

Shapes: ``x`` is ``(n, d)``, ``y`` is ``(n,)`` integer class ids (or ``(n, c)`` targets).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from . import credit, guard, nn
from ._checks import is_int
from ._fit_checks import check_fit_inputs
from .data import Dataset
from .grad import backprop, value_and_grad, value_grad_and_deltas
from .parallel import constrain_batch, place_for_fit
from .rules import Rule, get_rule

__all__ = [
    "ACTIVATIONS",
    "FEEDBACK",
    "MODELS",
    "FitResult",
    "build_model",
    "fit",
    "mlp",
    "verify_gradients",
]

ACTIVATIONS = nn.ACTIVATIONS
mlp = nn.mlp

GradFn = Callable[..., Callable[..., tuple[Any, Any]]]


class FitResult(NamedTuple):
    """What :func:`fit` returns: the trained ``params``, the per-epoch ``history``, the
    network's final ``state`` (batch-norm statistics; ``{}`` per layer without) and the
    optimizer's ``opt_state``."""

    params: Any
    history: list[dict[str, float]]
    state: Any
    opt_state: Any


_RTOL = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 2e-2}
"""Relative tolerance of :func:`verify_gradients`, by the least precise dtype compared."""


MODELS = ("mlp", "cnn", "lstm", "gru")
"""The model kinds :func:`build_model` (and ``manual-bp train --model``) builds."""


def build_model(
    kind: str,
    data: Dataset,
    *,
    hidden: Sequence[int] = (128,),
    activation: str = "relu",
    dropout: float = 0.0,
    batch_norm: bool = True,
    feedback: str = "backprop",
) -> tuple[nn.Layer, Dataset]:
    """A classifier of ``kind`` for ``data``, and the data laid out for it.

    The datasets hold flat examples (n, d). ``mlp`` uses them as they are, with ``hidden`` as
    its widths. ``cnn`` is :func:`manual_bp.nn.LeNet` on square images (n, s, s, 1) when
    d = s², else on 1-D signals (n, d, 1, 1) with 5×1 kernels and 2×1 pools; its dense layer
    has ``hidden[0]`` units. ``lstm``/``gru`` read an image row by row (n, s, s), or a
    signal one value per step (n, d, 1), with ``hidden[0]`` units, then classify the last step.
    ``dropout`` goes to :func:`mlp` and LeNet; ``batch_norm`` to LeNet. ``feedback`` is how
    the error is sent backward (:data:`FEEDBACK`): ``"backprop"``, or a
    :func:`manual_bp.credit.feedback` variant on every weighted layer, or ``"dfa"``
    (:func:`manual_bp.credit.direct_feedback` over the model's layers).
    """
    if kind not in MODELS:
        raise ValueError(f"build_model: unknown model {kind!r}; choose one of {', '.join(MODELS)}")
    if feedback not in FEEDBACK:
        raise ValueError(f"build_model: feedback must be one of {FEEDBACK}, got {feedback!r}")
    if kind == "mlp":
        return _with_feedback(mlp(hidden, data.num_classes, activation, dropout), feedback), data
    d = int(data.x_train.shape[1])
    side = math.isqrt(d)
    image = side * side == d
    width = int(hidden[0]) if len(hidden) else 64
    if kind == "cnn":
        shape = (side, side, 1) if image else (d, 1, 1)
        kernel, pool = ((3, 3), (2, 2)) if image else ((5, 1), (2, 1))
        net = nn.LeNet(
            data.num_classes,
            channels=(16, 32),
            hidden=width,
            activation=activation,
            kernel_size=kernel,
            pool=pool,
            batch_norm=batch_norm,
            dropout=dropout,
        )
    else:
        shape = (side, side) if image else (d, 1)
        make = nn.LSTMClassifier if kind == "lstm" else nn.GRUClassifier
        net = make(width, data.num_classes)

    def view(x: np.ndarray) -> np.ndarray:
        return np.reshape(x, (x.shape[0], *shape))

    net = _with_feedback(net, feedback)
    return net, data._replace(x_train=view(data.x_train), x_test=view(data.x_test))


FEEDBACK = ("backprop", "fa", "sign", "kp", "dfa")
"""How :func:`build_model` (and ``manual-bp train --feedback``) sends the error backward."""


def _with_feedback(net: nn.Layer, feedback: str) -> nn.Layer:
    """The model's top-level layers with their backward swapped (see :mod:`manual_bp.credit`)."""
    if feedback == "backprop":
        return net
    if feedback == "dfa":
        return credit.direct_feedback(*net.children, name=net.name)
    layers = [
        credit.feedback(c, feedback) if c.kind in credit.TRANSPORT else c for c in net.children
    ]
    return nn.serial(*layers, name=net.name)


def _accuracy(out: jax.Array, y: jax.Array) -> jax.Array:
    """Fraction of rows whose arg-max output is the label (or the target's arg-max)."""
    pred = jnp.argmax(out, axis=-1)
    target = y if jnp.issubdtype(y.dtype, jnp.integer) else jnp.argmax(y, axis=-1)
    return jnp.mean((pred.astype(target.dtype) == target).astype(jnp.float32))


def fit(
    net: nn.Layer,
    loss: Rule | str,
    params: Any,
    data: Dataset,
    *,
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    grad_fn: GradFn | None = None,
    callback: Callable[[dict[str, float]], None] | None = None,
    opt_state: Any = None,
    start_epoch: int = 0,
    on_epoch_end: Callable[[int, Any, Any, Any], None] | None = None,
    stop_on_non_finite: bool = False,
    state: Any = None,
    taps: bool = False,
    mesh: Any = None,
) -> FitResult:
    """Train ``params`` on ``data`` with mini-batch gradient descent.

    Each step takes a batch (x_b, y_b) of B examples and applies

    .. math:: (C, σ'), g = \\mathrm{grad\\_fn}(net, loss)(θ, σ, x_b, y_b, k), \\quad
              (u, s) = \\mathrm{optimizer.update}(g, s, θ), \\quad θ ← θ + u, \\quad σ ← σ'

    in training mode, where σ is the network's state (batch-norm running statistics, carried
    through the steps) and k the step's dropout key. Each epoch shuffles the training set with
    ``jax.random.fold_in(key, epoch)``, drops the last incomplete batch, and runs its
    ``n // B`` steps as one ``jax.lax.scan`` inside one ``jax.jit``; step i's key is
    ``fold_in(fold_in(fold_in(key, epoch), STEP_KEYS), i)``. After it, the test split is
    evaluated in evaluation mode (running statistics, no dropout) in one jitted call.

    Args:
      net: the network (a :class:`manual_bp.nn.Layer`).
      loss: a loss rule or its name, e.g. ``"softmax_cross_entropy"``.
      params: the initial parameters (a pytree matching ``net``).
      data: a :class:`~manual_bp.data.Dataset`.
      optimizer: an optax ``GradientTransformation``.
      epochs: number of passes over the training set (``0`` returns ``params`` unchanged).
      batch_size: examples per step, at most the training set's size.
      key: a JAX PRNG key for the shuffles.
      grad_fn: ``grad_fn(net, loss, has_state=True) -> f(params, state, x, y, key) ->
        ((C, new_state), ∂C/∂params)``; default :func:`manual_bp.value_and_grad` (the
        handwritten backward). Pass ``reference.value_and_grad`` to run the same loop on
        ``jax.grad``.
      callback: called with each epoch's history record as soon as it is complete.
      opt_state: the optimizer state to continue from (default ``optimizer.init(params)``).
      start_epoch: epochs already done (resuming from a checkpoint); training runs epochs
        ``start_epoch + 1 .. epochs``. Epoch e always shuffles with ``fold_in(key, e)``, so a
        resumed run is bit-identical to an uninterrupted one.
      on_epoch_end: ``on_epoch_end(epoch, params, opt_state, state)`` after each epoch
        (checkpoints).
      stop_on_non_finite: stop at the first epoch with a step whose loss, gradient or
        update is not finite (flags from the scan's losses, and the parameters checked
        once per epoch), before ``callback`` and ``on_epoch_end`` see that epoch, and raise
        :class:`manual_bp.guard.NonFiniteError` naming the step and the layer. Off, a
        diverged run returns its non-finite losses (learning-rate sweeps rely on that).
      state: the network's state to continue from (default ``net.init_state(...)``).
      taps: record, at every step and from the step's own forward and backward pass (no extra
        pass), every layer's delta norm ‖∂C/∂(output)‖, output norm ‖a‖ (each the mean over
        the batch of the per-example L2 norm) and gradient norm ‖∂C/∂θ‖; each epoch's record
        gets their means over its steps as ``norms = {"delta": {layer: ·}, "activation":
        {...}, "grad": {...}}``. Needs the handwritten backward (no ``grad_fn``).
      mesh: a :class:`jax.sharding.Mesh` with a ``"data"`` axis (see
        :func:`manual_bp.parallel.data_parallel_mesh`): each step's batch is split over it and
        the parameters, optimizer state and network state are replicated (or, with a
        ``"model"`` axis, dense weights split over it); XLA inserts the all-reduce of the
        handwritten gradients. ``batch_size`` must divide by the data axis's size.

    Returns:
      a :class:`FitResult` ``(params, history, state, opt_state)``; ``history[i]`` has
      ``epoch`` (1-based), ``train_loss`` (mean over that epoch's steps), ``test_loss``,
      ``test_accuracy`` and ``seconds`` (wall time of the epoch and its evaluation; the first
      includes compilation).

    Raises:
      manual_bp.guard.NonFiniteError: with ``stop_on_non_finite``, see above.
      ValueError: for a non-positive ``batch_size``, a negative ``epochs``, or a
        ``batch_size`` larger than the training set.
    """
    if not isinstance(net, nn.Layer):
        raise TypeError(f"fit: net must be a manual_bp.nn.Layer, got {type(net).__name__}")
    if not isinstance(data, Dataset):
        raise TypeError(f"fit: data must be a manual_bp.data.Dataset, got {type(data).__name__}")
    if not is_int(epochs) or epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative int, got {epochs!r}")
    if not is_int(batch_size) or batch_size <= 0:
        raise ValueError(f"fit: batch_size must be a positive int, got {batch_size!r}")
    n = len(data.x_train)
    if len(data.y_train) != n:
        raise ValueError(f"fit: x_train has {n} examples but y_train has {len(data.y_train)}")
    if batch_size > n:
        raise ValueError(
            f"fit: batch_size {batch_size} is larger than the training set ({n} examples); "
            f"use a batch_size of at most {n}"
        )
    loss = get_rule(loss)
    check_fit_inputs(  # labels in range, opt_state of this optimizer, ...: before tracing
        net,
        params,
        data,
        optimizer=optimizer,
        batch_size=batch_size,
        key=key,
        opt_state=opt_state,
        state=state,
        callbacks={"callback": callback, "on_epoch_end": on_epoch_end},
    )
    if taps and grad_fn not in (None, value_and_grad):
        raise ValueError("fit: taps come from the handwritten backward pass; pass grad_fn=None")
    f = (grad_fn or value_and_grad)(net, loss, has_state=True)
    steps = n // batch_size

    def gradients(params, state, xb, yb, key):
        if not taps:
            (c, state), grads = f(params, state, xb, yb, key)
            return c, state, grads, {}
        outputs: dict[str, Any] = {}
        c, state, grads, deltas = backprop(
            net, loss, params, xb, yb, state=state, key=key, taps=outputs
        )
        return c, state, grads, _tap_norms(grads, deltas, outputs)

    def step(carry, batch, dropout_key):
        params, opt_state, state = carry
        xb, yb, i = batch
        c, state, grads, norms = gradients(
            params, state, xb, yb, jax.random.fold_in(dropout_key, i)
        )
        # optax mixes Python floats with its int32 step count (Adam's β^t), which strict dtype
        # promotion rejects; the forward and backward above stay under the caller's setting.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return (params, opt_state, state), (c, norms)

    @jax.jit
    def run_epoch(params, opt_state, state, key, x, y):
        order = jax.random.permutation(key, x.shape[0])[: steps * batch_size]
        order = jnp.reshape(order, (steps, batch_size))
        dropout_key = jax.random.fold_in(key, STEP_KEYS)
        (params, opt_state, state), (losses, norms) = lax.scan(
            lambda carry, batch: step(carry, batch, dropout_key),
            (params, opt_state, state),
            (*constrain_batch((x[order], y[order]), mesh, 1, where="fit"), jnp.arange(steps)),
        )
        finite = (jnp.isfinite(losses), guard.tree_is_finite((params, state)))  # the guard
        return params, opt_state, state, jnp.mean(losses), jax.tree.map(jnp.mean, norms), finite

    @jax.jit
    def evaluate(params, state, x, y):
        out, _ = net.forward(params, x, nn.Context(train=False, state=state))
        return loss(out, y), _accuracy(out, y)

    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    if not is_int(start_epoch) or not 0 <= start_epoch <= epochs:
        raise ValueError(f"fit: start_epoch must be in [0, epochs={epochs}], got {start_epoch!r}")
    if opt_state is None:
        opt_state = optimizer.init(params)
    if state is None:
        state = net.init_state(key, (batch_size, *x_train.shape[1:]), _float_dtype(params))
    if mesh is not None:
        params, opt_state, state, x_train, y_train = place_for_fit(
            mesh, batch_size, params, opt_state, state, x_train, y_train
        )
    history: list[dict[str, float]] = []
    for epoch in range(start_epoch + 1, epochs + 1):
        start = time.perf_counter()
        started = (params, opt_state, state)
        params, opt_state, state, train_loss, norms, finite = run_epoch(
            params, opt_state, state, jax.random.fold_in(key, epoch), x_train, y_train
        )
        if stop_on_non_finite and not (bool(jnp.all(finite[0])) and bool(finite[1])):
            epoch_key = jax.random.fold_in(key, epoch)
            raise guard.diagnose(
                net,
                loss,
                step_fn=step,
                carry=started,
                epoch_key=epoch_key,
                dropout_key=jax.random.fold_in(epoch_key, STEP_KEYS),
                data=(x_train, y_train),
                batch_size=batch_size,
                losses_finite=finite[0],
                epoch=epoch,
            )
        test_loss, test_accuracy = evaluate(params, state, x_test, y_test)
        record = {
            "epoch": epoch,
            "train_loss": float(train_loss),
            "test_loss": float(test_loss),
            "test_accuracy": float(test_accuracy),
        }
        if taps:
            record["norms"] = jax.tree.map(float, norms)
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        if callback is not None:
            callback(record)
        if on_epoch_end is not None:
            on_epoch_end(epoch, params, opt_state, state)
    return FitResult(params, history, state, opt_state)


STEP_KEYS = 0x5EED
"""Step i of an epoch draws its dropout masks from ``fold_in(fold_in(epoch_key, STEP_KEYS), i)``
(the epoch key itself shuffles the training set)."""


def _wide(a: Any) -> Any:
    """float16/bfloat16 (and integer) arrays as float32, wider ones as they are."""
    floating = jnp.issubdtype(a.dtype, jnp.floating)
    return a if floating and jnp.dtype(a.dtype).itemsize >= 4 else a.astype(jnp.float32)


def _mean_norm(a: Any) -> Any:
    """Mean over the batch (first axis) of the per-example L2 norm, in float32 or wider."""
    a = _wide(a)
    a = jnp.reshape(a, (a.shape[0], -1)) if a.ndim > 1 else jnp.reshape(a, (1, -1))
    return jnp.mean(jnp.sqrt(jnp.sum(a * a, axis=1)))


def _tap_norms(grads: Any, deltas: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    """Per-layer norms of the delta, the output and the parameter gradient (all its arrays)."""
    grad_norms = {}

    def walk(tree, prefix):
        if isinstance(tree, dict) and tree and all(isinstance(v, dict) for v in tree.values()):
            for k, v in tree.items():
                walk(v, f"{prefix}{k}/")
            return
        leaves = jax.tree.leaves(tree)
        if leaves:
            total = sum(jnp.sum(jnp.square(_wide(leaf))) for leaf in leaves)
            grad_norms[prefix.rstrip("/")] = jnp.sqrt(total)

    walk(grads, "")
    return {
        "delta": {k: _mean_norm(d) for k, d in deltas.items()},
        "activation": {k: _mean_norm(a) for k, a in outputs.items() if k in deltas},
        "grad": grad_norms,
    }


def _float_dtype(params: Any) -> Any:
    floats = [
        leaf.dtype for leaf in jax.tree.leaves(params) if jnp.issubdtype(leaf.dtype, jnp.floating)
    ]
    return floats[0] if floats else jnp.float32


def _leaves(prefix: str, tree: Any) -> dict[str, Any]:
    def name(path):
        return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)

    return {
        f"{prefix}/{name(path)}": leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def verify_gradients(
    net: nn.Layer,
    loss: Rule | str,
    params: Any,
    x: Any,
    y: Any,
    *,
    state: Any = None,
    key: Any = None,
) -> dict:
    """Compare the handwritten gradients and deltas with ``jax.grad`` of the reference network.

    On one batch, in training mode (``state`` defaults to ``net.init_state``, ``key`` feeds
    dropout), with backprop in every layer (:func:`manual_bp.credit.as_backprop`; fixed
    feedback matrices are left out of the comparison), for every parameter gradient ∂C/∂θ,
    every layer delta ∂C/∂(output), every leaf of the new state and the loss C itself, with m
    the manual and r the reference value:

    .. math:: \\mathrm{abs} = \\max|m − r|, \\qquad \\mathrm{rel} = \\mathrm{abs} / \\max|r|

    per leaf (``rel`` is 0 where both are exactly 0). ``ok`` holds when every ``rel`` is
    within the tolerance of the least precise dtype compared (float32: 1e-4, float64: 1e-9,
    float16: 1e-2, bfloat16: 2e-2).

    Returns:
      a dict with ``loss``, ``max_abs_error``, ``max_rel_error``, ``worst`` (the leaf with the
      largest ``rel``, e.g. ``"grads/dense_0/w"``), ``num_compared``, ``dtype``,
      ``tolerance`` and ``ok``.

    Raises:
      ValueError: if the two sides return differently structured gradients or deltas.
    """
    import reference

    loss = get_rule(loss)
    if state is None:
        state = net.init_state(jax.random.key(0), x.shape, _float_dtype(params))
    net = credit.as_backprop(net)  # the handwritten backprop rules, whatever net trains with
    manual_fn = jax.jit(value_grad_and_deltas(net, loss, has_state=True))
    reference_fn = jax.jit(reference.value_grad_and_deltas(net, loss, has_state=True))
    (m_value, m_state), m_grads, m_deltas = manual_fn(params, state, x, y, key)
    (r_value, r_state), r_grads, r_deltas = reference_fn(params, state, x, y, key)
    manual = {"loss": m_value, **_leaves("grads", m_grads), **_leaves("deltas", m_deltas)}
    ref = {"loss": r_value, **_leaves("grads", r_grads), **_leaves("deltas", r_deltas)}
    manual.update(_leaves("state", m_state))
    ref.update(_leaves("state", r_state))
    # feedback matrices (credit assignment) are not part of the function the reference
    # differentiates: they are fixed, or (Kolen–Pollack) given W's gradient by definition
    manual = {k: v for k, v in manual.items() if "feedback/" not in k}
    ref = {k: v for k, v in ref.items() if "feedback/" not in k}
    if manual.keys() != ref.keys():
        raise ValueError(
            "verify_gradients: manual and reference results differ in structure: "
            f"only manual {sorted(manual.keys() - ref.keys())}, "
            f"only reference {sorted(ref.keys() - manual.keys())}"
        )

    dtypes = {np.dtype(v.dtype) for v in manual.values()}
    dtype = max(dtypes, key=lambda d: float(jnp.finfo(d).eps))
    rtol = _RTOL.get(dtype.name, 1e-4)
    max_abs, max_rel, worst = 0.0, 0.0, ""
    for name, m in manual.items():
        m64 = np.asarray(m).astype(np.float64)
        r64 = np.asarray(ref[name]).astype(np.float64)
        if m64.shape != r64.shape:
            raise ValueError(
                f"verify_gradients: {name} has shape {m64.shape} (manual) "
                f"but {r64.shape} (reference)"
            )
        abs_err = float(np.max(np.abs(m64 - r64), initial=0.0))
        scale = float(np.max(np.abs(r64), initial=0.0))
        if not math.isfinite(abs_err):  # a NaN or inf on either side fails the check
            abs_err = rel_err = math.inf
        elif abs_err == 0.0:
            rel_err = 0.0
        else:
            rel_err = abs_err / scale if scale > 0.0 else math.inf
        max_abs = max(max_abs, abs_err)
        if rel_err > max_rel:
            max_rel, worst = rel_err, name
    return {
        "loss": float(m_value),
        "max_abs_error": max_abs,
        "max_rel_error": max_rel,
        "worst": worst,
        "num_compared": len(manual),
        "dtype": dtype.name,
        "tolerance": rtol,
        "ok": bool(max_rel <= rtol),
    }

"""Training with handwritten gradients: a jit-compiled loop of forward, backward, optax update.

Gradient descent on C(θ) = (1/B) Σₙ Cⁿ(θ) over mini-batches of B examples:
θ ← θ + optimizer.update(∂C/∂θ), with ∂C/∂θ from the handwritten backward pass
(:func:`manual_bp.value_and_grad`). One epoch is a single compiled call: the training set is
shuffled into ``n // B`` batches and ``jax.lax.scan`` runs the steps over them.

Shapes: ``x`` is ``(n, d)``, ``y`` is ``(n,)`` integer class ids (or ``(n, c)`` targets).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from .. import nn
from .._checks import is_int
from ..data import Dataset
from ..grad import backprop, value_and_grad
from ..parallel import constrain_batch, place_for_fit
from ..rules import Rule, get_rule
from . import guard
from .inputs import check_fit_inputs
from .report import step_norms

__all__ = ["OPTIMIZER_KEYS", "STEP_KEYS", "FitResult", "GradFn", "fit", "float_dtype"]

GradFn = Callable[..., Callable[..., tuple[Any, Any]]]
"""``grad_fn(net, loss, has_state=True) -> f(params, state, x, y, key) -> ((C, state), grads)``."""


class FitResult(NamedTuple):
    """What :func:`fit` returns: the trained ``params``, the per-epoch ``history``, the
    network's final ``state`` (batch-norm statistics; ``{}`` per layer without) and the
    optimizer's ``opt_state``."""

    params: Any
    history: list[dict[str, float]]
    state: Any
    opt_state: Any


STEP_KEYS = 0x5EED
"""Step i of an epoch draws its dropout masks from ``fold_in(fold_in(epoch_key, STEP_KEYS), i)``
(the epoch key itself shuffles the training set)."""

OPTIMIZER_KEYS = 0x0C7A
"""An optimizer that takes the batch (an ``optax.GradientTransformationExtraArgs``) gets step
i's ``key=fold_in(step_key, OPTIMIZER_KEYS)``, ``step_key`` the step's dropout key: the labels
the Monte-Carlo curvature of :func:`manual_bp.curvature.kfac` samples."""


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
    through the steps) and k the step's dropout key. An optimizer that takes extra arguments
    (an ``optax.GradientTransformationExtraArgs``, such as :func:`manual_bp.curvature.kfac`
    chained with ``optax.sgd``) also gets the batch: ``update(g, s, θ, x=x_b, y=y_b,
    key=k', net_state=σ)`` with ``k' = fold_in(k, OPTIMIZER_KEYS)``; the others ignore it.
    Each epoch shuffles the training set with ``jax.random.fold_in(key, epoch)``, drops the
    last incomplete batch, and runs its ``n // B`` steps as one ``jax.lax.scan`` inside one
    ``jax.jit``; step i's key is ``fold_in(fold_in(fold_in(key, epoch), STEP_KEYS), i)``.
    After it, the test split is evaluated in evaluation mode (running statistics, no dropout)
    in one jitted call.

    Args:
      net: the network (a :class:`manual_bp.nn.Layer`).
      loss: a loss rule or its name, e.g. ``"softmax_cross_entropy"``.
      params: the initial parameters (a pytree matching ``net``).
      data: a :class:`~manual_bp.data.Dataset`.
      optimizer: an optax ``GradientTransformation`` (or ``GradientTransformationExtraArgs``,
        which is handed the batch, see above).
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
        :class:`manual_bp.train.guard.NonFiniteError` naming the step and the layer. Off, a
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
      manual_bp.train.guard.NonFiniteError: with ``stop_on_non_finite``, see above.
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
        return c, state, grads, step_norms(grads, deltas, outputs)

    takes_batch = isinstance(optimizer, optax.GradientTransformationExtraArgs)

    def step(carry, batch, dropout_key):
        params, opt_state, state = carry
        xb, yb, i = batch
        step_key = jax.random.fold_in(dropout_key, i)
        c, new_state, grads, norms = gradients(params, state, xb, yb, step_key)
        extra = {}
        if takes_batch:  # curvature preconditioners need the batch, not just its gradient
            key = jax.random.fold_in(step_key, OPTIMIZER_KEYS)
            extra = {"x": xb, "y": yb, "key": key, "net_state": state}
        # optax mixes Python floats with its int32 step count (Adam's β^t), which strict dtype
        # promotion rejects; the forward and backward above stay under the caller's setting.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
            params = optax.apply_updates(params, updates)
        return (params, opt_state, new_state), (c, norms)

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
        state = net.init_state(key, (batch_size, *x_train.shape[1:]), float_dtype(params))
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


def float_dtype(params: Any) -> Any:
    """The dtype of the first floating leaf of ``params`` (float32 when there is none)."""
    floats = [
        leaf.dtype for leaf in jax.tree.leaves(params) if jnp.issubdtype(leaf.dtype, jnp.floating)
    ]
    return floats[0] if floats else jnp.float32

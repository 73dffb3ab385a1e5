"""Non-finite guard for training: find the first step whose loss, gradient or update is not
finite, and name the layer that produced it.

:func:`manual_bp.train.fit` (``stop_on_non_finite=True``) flags each step's loss as finite or
not, from the losses its ``lax.scan`` already returns, and checks once per epoch that the
parameters and the network state are finite (:func:`tree_is_finite`): no work inside the step,
no host round trip. A NaN gradient under a finite loss makes the updated parameters NaN, so it
shows up in the next step's loss or in the end-of-epoch check. After a flagged epoch ``fit``
stops before ``callback`` and ``on_epoch_end`` (so no checkpoint is written from that epoch:
the last checkpoint on disk stays the last finite one) and raises :class:`NonFiniteError`,
built by :func:`diagnose`:

1. replay the epoch from its starting parameters with fit's own step function, jitted, up to
   the first step with a non-finite loss, or to an earlier step whose update leaves non-finite
   parameters or state; that is the culprit, and the replay gives what it started from;
2. run that step's batch eagerly: the forward pass with taps (every layer's output, in forward
   order), the loss, then :func:`manual_bp.value_grad_and_deltas` (every layer's delta,
   checked from the loss backwards, the order the backward pass produces them) and the
   gradients;
3. name the first non-finite one: a layer's activation, the loss, a layer's delta, a
   parameter gradient, or (all of them finite) the optimizer update of a parameter.

:func:`name_primitive` (``manual-bp train --debug-nans``) additionally runs the culprit step's
forward and backward under ``jax.experimental.checkify`` to name the primitive that generated
the first NaN or division by zero.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import nn
from .._checks import prefix_errors, require_array, require_int, require_leaves, require_ndim
from ..nn.core import forward_order
from ..rules import Rule

__all__ = [
    "EXIT_NON_FINITE",
    "NonFiniteError",
    "diagnose",
    "epoch_batches",
    "name_primitive",
    "tree_is_finite",
]


EXIT_NON_FINITE = 3
"""The exit code of ``manual-bp train`` when training stopped at a non-finite step."""


def tree_is_finite(tree: Any) -> jax.Array:
    """One boolean: every floating leaf of ``tree`` is finite (jit-friendly)."""
    require_leaves("tree_is_finite", tree)
    flags = [
        jnp.all(jnp.isfinite(leaf))
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or an infinity; ``str(error)`` is a one-line diagnosis.

    Attributes: ``epoch`` (1-based) and ``step`` (0-based, within the epoch) of the first
    non-finite step; ``kind`` (``"activation"``, ``"loss"``, ``"delta"``, ``"gradient"`` or
    ``"update"``) and ``where`` (the layer name or parameter path) of the first non-finite
    value; ``params``, ``opt_state``, ``state``, ``x``, ``y`` and ``key``: what that step
    started from, for post-mortem use (:func:`name_primitive`).
    """

    def __init__(self, message: str, **info: Any) -> None:
        super().__init__(message)
        self.epoch: int = info.pop("epoch")
        self.step: int = info.pop("step")
        self.kind: str = info.pop("kind")
        self.where: str = info.pop("where")
        self.params = info.pop("params")
        self.opt_state = info.pop("opt_state")
        self.state = info.pop("state")
        self.x, self.y, self.key = info.pop("x"), info.pop("y"), info.pop("key")


def _finite(a: Any) -> bool:
    a = np.asarray(a)
    return not np.issubdtype(a.dtype, np.inexact) or bool(np.all(np.isfinite(a)))


def _first_bad_leaf(tree: Any, prefix: str) -> str | None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not _finite(leaf):
            return f"{prefix}{jax.tree_util.keystr(path)}"
    return None


def _count_bad(a: Any) -> str:
    a = np.asarray(a, np.float64)
    nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
    return f"{nan} NaN and {inf} inf of {a.size} values"


def epoch_batches(epoch_key: jax.Array, x: Any, y: Any, batch_size: int) -> tuple[Any, Any]:
    """The batches of an epoch, stacked ``(steps, batch_size, ...)``: the order ``fit`` uses
    (a permutation drawn from the epoch's key, the last incomplete batch dropped)."""
    if not isinstance(epoch_key, jax.Array | np.ndarray):
        raise TypeError(
            f"epoch_batches: epoch_key must be a PRNG key (jax.random.key), got "
            f"{type(epoch_key).__name__}"
        )
    for arg, a in (("x", x), ("y", y)):
        require_array("epoch_batches", arg, a)
        require_ndim("epoch_batches", arg, a, at_least=1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            "epoch_batches: x and y must hold the same number of examples, got x of shape "
            f"{tuple(x.shape)} and y of shape {tuple(y.shape)}"
        )
    n = x.shape[0]
    require_int(
        "epoch_batches", "batch_size", batch_size, f"an int in [1, {n}] (the number of examples)",
        at_least=1, at_most=n,
    )  # fmt: skip
    steps = x.shape[0] // batch_size
    order = jax.random.permutation(epoch_key, x.shape[0])[: steps * batch_size]
    order = jnp.reshape(order, (steps, batch_size))
    return x[order], y[order]


def diagnose(
    net: nn.Layer,
    loss: Rule,
    *,
    step_fn: Callable[..., Any],
    carry: tuple[Any, Any, Any],
    epoch_key: jax.Array,
    dropout_key: jax.Array,
    data: tuple[Any, Any],
    batch_size: int,
    losses_finite: Any,
    epoch: int,
) -> NonFiniteError:
    """Build the :class:`NonFiniteError` for an epoch with a non-finite step loss or non-finite
    parameters or network state at its end. ``step_fn(carry, (x_b, y_b, i), dropout_key) ->
    (carry, outputs)`` is fit's own step, ``carry = (params, opt_state, state)`` what the
    epoch started from, ``epoch_key`` the key that shuffled the epoch, ``data`` its
    ``(x_train, y_train)`` and ``losses_finite`` the per-step flags of its losses.

    The culprit is the first step whose loss is not finite, or earlier, the first step whose
    update left non-finite parameters or state (a NaN gradient under a finite loss)."""
    from ..grad import value_grad_and_deltas

    if not isinstance(net, nn.Layer):
        raise TypeError(f"diagnose: net must be a manual_bp.nn.Layer, got {type(net).__name__}")
    if not isinstance(loss, Rule):
        raise TypeError(f"diagnose: loss must be a manual_bp.Rule, got {type(loss).__name__}")
    if not callable(step_fn):
        raise TypeError(f"diagnose: step_fn must be callable, got {type(step_fn).__name__}")
    for arg, value, n, what in (
        ("carry", carry, 3, "(params, opt_state, state)"),
        ("data", data, 2, "(x_train, y_train)"),
    ):
        if not isinstance(value, tuple | list) or len(value) != n:
            got = type(value).__name__
            got += f" of length {len(value)}" if isinstance(value, tuple | list) else ""
            raise TypeError(f"diagnose: {arg} must be a tuple {what}, got a {got}")
    if np.ndim(losses_finite) != 1 or np.size(losses_finite) == 0:
        raise ValueError(
            "diagnose: losses_finite must be a non-empty 1-D array of per-step flags, got "
            f"shape {np.shape(losses_finite)}"
        )
    require_int("diagnose", "epoch", epoch, "a positive int (1-based)", at_least=1)

    flags = np.asarray(losses_finite)
    bad = int(np.argmin(flags)) if not flags.all() else len(flags)
    step = jax.jit(lambda c, b: step_fn(c, b, dropout_key)[0])
    finite = jax.jit(lambda c: tree_is_finite((c[0], c[2])))
    xs, ys = epoch_batches(epoch_key, *data, batch_size)
    for i in range(bad):  # replay up to the first bad step, or to a step that breaks params
        after = step(carry, (xs[i], ys[i], jnp.asarray(i)))
        if not bool(finite(after)):
            bad = i
            break
        carry = after
    bad = min(bad, len(flags) - 1)
    params, opt_state, state = carry
    x, y = xs[bad], ys[bad]
    key = jax.random.fold_in(dropout_key, bad)
    info = {
        "epoch": epoch,
        "step": bad,
        "params": params,
        "opt_state": opt_state,
        "state": state,
        "x": x,
        "y": y,
        "key": key,
    }
    at = f"epoch {epoch}, step {bad}"

    def error(kind: str, where: str, detail: str) -> NonFiniteError:
        return NonFiniteError(
            f"non-finite {kind} at {at}: {detail}", kind=kind, where=where, **info
        )

    bad_input = _first_bad_leaf(params, "params")
    if bad_input is not None:
        return error("update", bad_input, f"{bad_input} was already non-finite before the step")
    taps: dict[str, Any] = {}
    ctx = nn.Context(train=True, key=key, state=state, taps=taps)
    out, _ = net.forward(params, x, ctx)
    for name in forward_order(net):
        if name in taps and not _finite(taps[name]):
            detail = (
                f"layer {name!r} output {_count_bad(taps[name])} (the layers before it: finite)"
            )
            return error("activation", name, detail)
    if not _finite(out):
        return error("activation", "output", f"the network's output has {_count_bad(out)}")
    c, _ = loss.fwd(out, y)
    if not _finite(c):
        return error("loss", loss.name, f"{loss.name} is {float(c)} on finite network outputs")
    (_, _), grads, deltas = value_grad_and_deltas(net, loss, has_state=True)(
        params, state, x, y, key
    )
    for name in reversed(forward_order(net)):
        if name in deltas and not _finite(deltas[name]):
            detail = (
                f"the delta ∂C/∂(output of {name!r}) has {_count_bad(deltas[name])} (the layers "
                "after it: finite); every activation and the loss are finite"
            )
            return error("delta", name, detail)
    bad_grad = _first_bad_leaf(grads, "grads")
    if bad_grad is not None:
        return error("gradient", bad_grad, f"{bad_grad} is non-finite on finite deltas")
    new_params, _, new_state = step((params, opt_state, state), (x, y, jnp.asarray(bad)))
    where = _first_bad_leaf(new_params, "params") or _first_bad_leaf(new_state, "state")
    detail = (
        f"the loss, activations, deltas and gradients are finite, but the update made "
        f"{where or 'params'} non-finite (learning rate too large?)"
    )
    return error("update", where or "params", detail)


def name_primitive(net: nn.Layer, loss: Rule, err: NonFiniteError) -> str:
    """Re-run the failed step's forward and handwritten backward under
    ``jax.experimental.checkify`` (NaN and division checks); return its message, e.g.
    ``"nan generated by primitive: log."``, or a note that no primitive generated a NaN (an
    infinity from overflow is not a checkify error)."""
    from jax.experimental import checkify

    from ..grad import value_grad_and_deltas

    if not isinstance(err, NonFiniteError):
        raise TypeError(
            f"name_primitive: err must be the NonFiniteError raised by fit, got "
            f"{type(err).__name__}"
        )
    f = prefix_errors("name_primitive", lambda: value_grad_and_deltas(net, loss, has_state=True))
    checked = checkify.checkify(f, errors=checkify.float_checks)
    found, _ = checked(err.params, err.state, err.x, err.y, err.key)
    message = found.get()
    if message is None:
        return "checkify: no primitive generated a NaN or divided by zero (an overflow to inf?)"
    return f"checkify: {message.strip().splitlines()[0]}"

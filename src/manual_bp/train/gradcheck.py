"""The training run's gradient check: the handwritten gradients and deltas of one batch
against ``jax.grad`` of the independent reference network (:func:`verify_gradients`), by
:func:`manual_bp.verify.check_network`."""

from __future__ import annotations

from typing import Any

import jax

from .. import credit, nn
from ..rules import Rule, get_rule
from ..verify import check_network
from .loop import float_dtype

__all__ = ["verify_gradients"]


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
    every layer delta ∂C/∂(output), every leaf of the new state and the loss C itself: the
    comparison of :func:`manual_bp.verify.check_network`, each array judged on the scale of the
    computation that produced it (a gradient on its layer's whole gradient, the loss on its
    per-example terms and logits), with m the manual and r the reference value:

    .. math:: \\mathrm{abs} = \\max|m − r|, \\qquad \\mathrm{rel} = \\mathrm{abs} / \\mathrm{scale}

    ``ok`` holds when every array is within the network tolerance of its dtype
    (:func:`manual_bp.verify.tolerance_for`; float32: 1e-4).

    Returns:
      a dict with ``loss``, ``max_abs_error``, ``max_rel_error``, ``worst`` (the array with the
      largest ``rel``, e.g. ``"grads/dense_0/w"``), ``num_compared``, ``dtype``,
      ``tolerance`` and ``ok``.

    Raises:
      ValueError: if the two sides return differently structured gradients or deltas.
    """
    loss = get_rule(loss)
    if state is None:
        state = net.init_state(jax.random.key(0), x.shape, float_dtype(params))
    net = credit.as_backprop(net)  # the handwritten backprop rules, whatever net trains with
    report = check_network(net, loss, params, x, y, state=state, key=key, train=True)
    # feedback matrices (credit assignment) are not part of the function the reference
    # differentiates: they are fixed, or (Kolen–Pollack) given W's gradient by definition
    compared = [c for c in report.leaves if "feedback/" not in c.primal]
    worst = max(compared, key=lambda c: c.max_rel)
    return {
        "loss": report.loss,
        "max_abs_error": max(c.max_abs for c in compared),
        "max_rel_error": worst.max_rel,
        "worst": worst.primal if worst.max_rel > 0 else "",
        "num_compared": len(compared),
        "dtype": report.dtype,
        "tolerance": report.tolerance,
        "ok": all(c.ok for c in compared),
    }

"""The training run's gradient check: the handwritten gradients and deltas of one batch
against ``jax.grad`` of the independent reference network (:func:`verify_gradients`)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import credit, nn
from ..grad import value_grad_and_deltas
from ..rules import Rule, get_rule
from .loop import float_dtype

__all__ = ["verify_gradients"]

_RTOL = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 2e-2}
"""Relative tolerance of :func:`verify_gradients`, by the least precise dtype compared."""


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
        state = net.init_state(jax.random.key(0), x.shape, float_dtype(params))
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

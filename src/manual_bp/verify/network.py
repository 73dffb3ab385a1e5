"""Check a whole network against ``jax.grad`` of the reference: every delta, every parameter
gradient, the new state and the loss, and the first layer — walking back from the loss, as the
backward pass does — whose delta ∂C/∂(output) diverges.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np

import reference

from .._checks import prefix_errors
from ..grad import value_grad_and_deltas
from ..nn import Layer
from ..rules import Rule, get_rule
from .tolerances import check_tolerance, compare, f64, is_float, tolerance_for

__all__ = ["LayerCheck", "NetworkReport", "check_network", "forward_order"]


@dataclasses.dataclass
class LayerCheck:
    """One layer's delta ∂C/∂(output) and parameter gradients against the reference."""

    name: str
    delta_max_abs: float
    delta_max_rel: float
    delta_ok: bool
    grad_max_rel: float | None
    grad_ok: bool


@dataclasses.dataclass
class NetworkReport:
    """What :func:`check_network` found; ``layers`` run from the loss back to the input."""

    loss_error: float
    layers: list[LayerCheck]
    first_divergent: str | None
    culprit: str | None
    ok: bool
    state_error: float = 0.0
    """Largest relative difference of the new state (batch-norm statistics), if any."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        lines = [
            f"check_network: loss error {self.loss_error:.3g}, new state rel error "
            f"{self.state_error:.3g}",
            f"  {'layer (from the loss back)':<28} {'delta max rel':>14} {'grad max rel':>14}  ok",
        ]
        for lc in self.layers:
            g = "" if lc.grad_max_rel is None else f"{lc.grad_max_rel:.3g}"
            ok = "ok" if lc.delta_ok and lc.grad_ok else "FAIL"
            lines.append(f"  {lc.name:<28} {lc.delta_max_rel:>14.3g} {g:>14}  {ok}")
        if self.first_divergent:
            lines.append(
                f"first divergent delta: {self.first_divergent!r}; its value comes from the "
                f"backward of {self.culprit!r}"
            )
        lines.append("result: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


def forward_order(net: Any) -> list[str]:
    """Delta names in forward order (a container after its children), from the description."""

    def walk(layer, prefix):
        for child in layer.children:
            name = prefix + child.name
            yield from walk(child, name + "/")
            yield name

    return list(walk(net, ""))


def subtree(tree: Any, name: str) -> Any:
    for part in name.split("/"):
        tree = tree[part]
    return tree


def check_network(
    net: Any,
    loss: Rule | str,
    params: Any,
    x: Any,
    y: Any,
    *,
    tolerance: float | None = None,
    state: Any = None,
    key: Any = None,
    train: bool = True,
) -> NetworkReport:
    """Compare every layer's delta and gradient with ``jax.grad`` of the reference, under jit.

    Walking back from the loss as the backward pass does, names the first layer whose delta
    ∂C/∂(output) diverges and the layer whose backward produced it (the next one in forward
    order, or the loss). A layer whose delta agrees but whose parameter gradient does not is
    reported too (its aᵀδ is wrong). A network with state (batch norm) takes ``state``, and
    its new state is compared too; ``key`` feeds dropout; ``train`` picks the mode.
    """
    if not isinstance(net, Layer):
        raise TypeError(
            f"check_network: net must be a manual_bp.nn.Layer, got {type(net).__name__}"
        )
    for arg, a in (("x", x), ("y", y)):
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise TypeError(f"check_network: {arg} must be an array, got {type(a).__name__}")
    check_tolerance("check_network", tolerance)
    loss = prefix_errors("check_network", lambda: get_rule(loss))
    floats = [leaf for leaf in jax.tree.leaves(params) if is_float(leaf)]
    dtype = np.dtype(x.dtype if is_float(x) or not floats else floats[0].dtype)
    tol = tolerance if tolerance is not None else tolerance_for(dtype, "network")
    stateful = state is not None
    args = (params, state, x, y) if stateful else (params, x, y)
    mine = value_grad_and_deltas(net, loss, has_state=stateful, train=train)
    ref = reference.value_grad_and_deltas(net, loss.name, has_state=stateful, train=train)
    c, grads, deltas = jax.jit(mine)(*args, key)
    rc, rgrads, rdeltas = jax.jit(ref)(*args, key)
    state_err = 0.0
    if stateful:
        (c, new_state), (rc, r_new_state) = c, rc
        for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(r_new_state), strict=True):
            state_err = max(state_err, compare(f64(a), f64(b), dtype, tol, 0.0, "", "").max_rel)
    order = forward_order(net)
    layers: list[LayerCheck] = []
    first = culprit = None
    for pos in range(len(order) - 1, -1, -1):
        name = order[pos]
        d = compare(f64(deltas[name]), f64(rdeltas[name]), dtype, tol, 0.0, name, "delta")
        try:
            g, rg = subtree(grads, name), subtree(rgrads, name)
        except (KeyError, TypeError):
            g = rg = None
        g_rel, g_ok = None, True
        is_leaf_layer = isinstance(g, dict) and not any(isinstance(v, dict) for v in g.values())
        if is_leaf_layer and g:
            comps = [
                compare(f64(a), f64(b), dtype, tol, 0.0, name, "grad")
                for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(rg), strict=True)
            ]
            g_rel = max(cc.max_rel for cc in comps)
            g_ok = all(cc.ok for cc in comps)
        layers.append(LayerCheck(name, d.max_abs, d.max_rel, d.ok, g_rel, g_ok))
        if not d.ok and first is None:
            first = name
            later = [n for n in order[pos + 1 :] if not name.startswith(n + "/")]
            culprit = later[0] if later else f"loss {loss.name!r}"
        if d.ok and not g_ok and first is None and culprit is None:
            culprit = name
            first = name
    loss_err = abs(float(c) - float(rc))
    ok = (
        all(lc.delta_ok and lc.grad_ok for lc in layers)
        and loss_err <= tol * max(1.0, abs(float(rc)))
        and state_err <= tol
    )
    return NetworkReport(loss_err, layers, first, culprit, ok, state_err)

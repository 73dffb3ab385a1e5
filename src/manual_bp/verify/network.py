"""Check a whole network against ``jax.grad`` of the reference: every delta, every parameter
gradient, the new state and the loss, and the first layer — walking back from the loss, as the
backward pass does — whose delta ∂C/∂(output) diverges.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import reference

from .._checks import prefix_errors
from ..grad import value_grad_and_deltas
from ..nn import Layer
from ..nn.core import forward_order
from ..rules import Rule, get_rule
from .tolerances import Comparison, check_tolerance, compare, f64, is_float, tolerance_for

__all__ = ["LayerCheck", "NetworkReport", "check_network"]


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
    leaves: list[Comparison] = dataclasses.field(default_factory=list)
    """Every compared array by path (``"loss"``, ``"grads/dense_0/w"``, ``"deltas/dense_0"``,
    ``"state/batch_norm_1/mean"``), in that order: the one comparison behind the layer rows."""
    loss: float = float("nan")
    """The handwritten loss C."""
    dtype: str = ""
    """The dtype whose tolerance judged the comparison."""
    tolerance: float = 0.0
    """The tolerance used (:func:`~manual_bp.verify.tolerance_for` of ``dtype``, ``"network"``)."""

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
    new_state = r_new_state = {}
    if stateful:
        (c, new_state), (rc, r_new_state) = c, rc

    def judge(path: str, a: Any, b: Any, floor: float = 0.0) -> Comparison:
        return compare(f64(a), f64(b), dtype, tol, floor, path, "reference")

    # each number is judged on the scale of the computation that produced it: the loss on its
    # per-example terms and the logits they came from, a gradient on its layer's whole gradient
    leaves = [judge("loss", c, rc, floor=_loss_scale(net, loss, *args, key, stateful, train))]
    layer_scale = _layer_scales(rgrads)
    leaves += _judge_tree("grads", grads, rgrads, judge, layer_scale)
    leaves += [judge(f"deltas/{k}", deltas[k], rdeltas[k]) for k in deltas]
    state_leaves = _judge_tree("state", new_state, r_new_state, judge)
    leaves += state_leaves
    by_path = {leaf.primal: leaf for leaf in leaves}
    order = forward_order(net)
    layers: list[LayerCheck] = []
    first = culprit = None
    for pos in range(len(order) - 1, -1, -1):
        name = order[pos]
        d = by_path[f"deltas/{name}"]
        try:
            g = subtree(grads, name)
        except (KeyError, TypeError):
            g = None
        g_rel, g_ok = None, True
        is_leaf_layer = isinstance(g, dict) and not any(isinstance(v, dict) for v in g.values())
        if is_leaf_layer and g:
            comps = [by_path[f"grads/{name}/{k}"] for k in g]
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
    state_err = max((leaf.max_rel for leaf in state_leaves), default=0.0)
    ok = (
        all(lc.delta_ok and lc.grad_ok for lc in layers)
        and leaves[0].ok
        and all(leaf.ok for leaf in state_leaves)
    )
    return NetworkReport(
        leaves[0].max_abs,
        layers,
        first,
        culprit,
        ok,
        state_err,
        leaves=leaves,
        loss=float(c),
        dtype=dtype.name,
        tolerance=tol,
    )


def _paths(tree: Any) -> list[tuple[str, ...]]:
    return [
        tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        for path, _ in jax.tree_util.tree_leaves_with_path(tree)
    ]


def _layer_scales(grads: Any) -> dict[tuple[str, ...], float]:
    """The size of each layer's whole gradient, max |g| over its arrays, by the layer's path
    (the path of a gradient array less its last part: ``("block", "dense_0")`` for ``w``)."""
    scales: dict[tuple[str, ...], float] = {}
    for path, leaf in zip(_paths(grads), jax.tree.leaves(grads), strict=True):
        size = float(np.max(np.abs(f64(leaf)), initial=0.0))
        scales[path[:-1]] = max(scales.get(path[:-1], 0.0), size)
    return scales


def _loss_scale(net, loss, *args) -> float:
    """The scale of the computation behind the loss: its per-example terms Cⁿ and the network's
    outputs (the logits), from the reference forward, so a wrong handwritten forward cannot
    widen its own tolerance. The loss rule's own forward gives the terms for a loss of the
    user's own."""
    *arrays, key, stateful, train = args
    params, state, x, y = arrays if stateful else (arrays[0], None, *arrays[1:])
    loss_fn = reference.FORWARD.get(loss.name) or (lambda o, t: loss.fwd(o, t)[0])

    def scale(params, state, x, y, key):
        out = reference.forward(net, params, x, state=state, key=key, train=train)
        terms = jax.vmap(lambda o, t: loss_fn(o[None], t[None]))(out, y)
        return jnp.maximum(jnp.max(jnp.abs(terms)), jnp.max(jnp.abs(out)))

    return float(jax.jit(scale)(params, state, x, y, key))


def _judge_tree(
    root: str, mine: Any, ref: Any, judge: Any, scales: dict[tuple[str, ...], float] | None = None
) -> list[Comparison]:
    """``judge(path, m, r, floor)`` for every leaf of two trees of one structure, paths
    ``root/a/b``; ``scales`` gives each leaf's floor by its parent's path."""
    parts = _paths(mine)
    paths = ["/".join([root, *p]) for p in parts]
    m_leaves, r_leaves = jax.tree.leaves(mine), jax.tree.leaves(ref)
    if jax.tree.structure(mine) != jax.tree.structure(ref):
        raise ValueError(
            f"check_network: the handwritten and the reference {root} differ in structure: "
            f"{jax.tree.structure(mine)} vs {jax.tree.structure(ref)}"
        )
    floors = [0.0 if scales is None else scales.get(p[:-1], 0.0) for p in parts]
    return [judge(p, a, b, f) for p, a, b, f in zip(paths, m_leaves, r_leaves, floors, strict=True)]

"""Check a whole network against ``jax.grad`` of the reference: every delta, every parameter
gradient, the new state and the loss, and the first layer — walking back from the loss, as the
backward pass does — whose delta ∂C/∂(output) diverges, or whose parameter's gradient does.

A layer of the user's own is compared with the reference forward registered or given for its
kind, or else with ``jax.vjp`` of its own forward, and then the whole network's gradient with
float64 finite differences of the loss (:mod:`~manual_bp.verify.independent`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import reference

from .._checks import prefix_errors
from ..grad import value_grad_and_deltas
from ..nn import Context, Layer
from ..nn.core import forward_order
from ..rules import Rule, get_rule
from .diagnosis import describe, diagnose_pattern
from .independent import (
    OWN_FORWARD,
    REFERENCE,
    SIDES,
    check_references,
    finite_difference_leaves,
    independent_sides,
    reference_loss,
    tree_paths,
)
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
    against: str = REFERENCE
    """What stood for the layer on the independent side: ``"reference"``, ``"registered
    reference"`` (``reference.register``), ``"given reference"`` (``check_network``'s
    ``references``) or ``"jax.vjp(own forward)"`` (a kind without a reference forward)."""
    failed: list[str] = dataclasses.field(default_factory=list)
    """The layer's parameters whose gradient disagrees, by name (``["alpha"]``)."""


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
    parameter: str | None = None
    """The parameter of ``culprit`` whose gradient is wrong (``None`` when its ∂C/∂(input)
    or its forward is). ``culprit`` is the layer to blame: the one whose backward produced the
    first divergent delta, or whose gradient of ``parameter`` is wrong, or — when the loss
    itself differs — the first layer whose forward differs."""
    diagnoses: list[str] = dataclasses.field(default_factory=list)
    """What is wrong, by layer and parameter, and what the error looks like."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        lines = [
            f"check_network: loss error {self.loss_error:.3g}, new state rel error "
            f"{self.state_error:.3g}",
            f"  {'layer (from the loss back)':<28} {'delta max rel':>14} {'grad max rel':>14}  "
            f"{'against':<22} ok",
        ]
        for lc in self.layers:
            g = "" if lc.grad_max_rel is None else f"{lc.grad_max_rel:.3g}"
            ok = "ok" if lc.delta_ok and lc.grad_ok else "FAIL"
            lines.append(
                f"  {lc.name:<28} {lc.delta_max_rel:>14.3g} {g:>14}  {lc.against:<22} {ok}"
                + (f"  (parameters {', '.join(lc.failed)})" if lc.failed else "")
            )
        if self.first_divergent and self.parameter:
            lines.append(
                f"first divergent gradient: layer {self.culprit!r}, parameter {self.parameter!r}"
            )
        elif self.first_divergent:
            lines.append(
                f"first divergent delta: {self.first_divergent!r}; its value comes from the "
                f"backward of {self.culprit!r}"
            )
        fd = [c for c in self.leaves if c.against.startswith("finite differences")]
        if fd:
            bad = [c.primal.removeprefix("grads/") for c in fd if not c.ok]
            lines.append(
                f"{fd[0].against} of the loss, {len(fd)} parameter arrays: max rel "
                f"{max(c.max_rel for c in fd):.3g}, "
                + (f"FAIL at {', '.join(bad)}" if bad else "ok")
            )
        lines += [f"diagnosis: {d}" for d in self.diagnoses]
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
    references: Mapping[str, Callable[..., Any]] | None = None,
) -> NetworkReport:
    """Compare every layer's delta and gradient with ``jax.grad`` of the reference, under jit.

    Walking back from the loss as the backward pass does, names the first layer whose delta
    ∂C/∂(output) diverges and the layer whose backward produced it (the next one in forward
    order, or the loss). A layer whose delta agrees but whose parameter gradient does not is
    named with that parameter (its aᵀδ is wrong). A network with state (batch norm) takes
    ``state``, and its new state is compared too; ``key`` feeds dropout; ``train`` picks the
    mode.

    A layer kind without a built-in reference forward (a layer of the user's own) is
    compared with the reference forward registered for it (``reference.register(kind, fn)``)
    or given here, ``references={kind: fn(params, x, **config) -> y}``; else with ``jax.vjp``
    of the layer's own forward, and then every parameter's gradient is also checked against
    float64 finite differences of the loss along random directions. ``report.layers`` says
    which comparison each layer got.
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
    sides = independent_sides(net, check_references(references))
    floats = [leaf for leaf in jax.tree.leaves(params) if is_float(leaf)]
    dtype = np.dtype(x.dtype if is_float(x) or not floats else floats[0].dtype)
    tol = tolerance if tolerance is not None else tolerance_for(dtype, "network")
    stateful = state is not None
    args = (params, state, x, y) if stateful else (params, x, y)
    mine = value_grad_and_deltas(net, loss, has_state=stateful, train=train)
    ref_loss = reference_loss(loss)
    ref = reference.value_grad_and_deltas(
        net, ref_loss, has_state=stateful, train=train, layers=sides.layers
    )
    c, grads, deltas = jax.jit(mine)(*args, key)
    rc, rgrads, rdeltas = jax.jit(ref)(*args, key)
    new_state = r_new_state = {}
    if stateful:
        (c, new_state), (rc, r_new_state) = c, rc
    arrays: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}

    def judge(path: str, a: Any, b: Any, floor: float = 0.0) -> Comparison:
        root, _, rest = path.partition("/")
        layer = rest if root == "deltas" else rest.rpartition("/")[0]
        arrays[path] = (f64(a), f64(b), floor)
        against = sides.sources.get(layer, REFERENCE)
        if np.shape(a) != np.shape(b):
            note = f"wrong shape: got {tuple(np.shape(a))}, expected {tuple(np.shape(b))}"
            inf = float("inf")
            return Comparison(path, against, inf, inf, inf, (), False, note, floor)
        return compare(arrays[path][0], arrays[path][1], dtype, tol, floor, path, against)

    # each number is judged on the scale of the computation that produced it: the loss on its
    # per-example terms and the logits they came from, a gradient on its layer's whole gradient
    scale = _loss_scale(net, loss, *args, key, stateful, train, sides.layers)
    leaves = [judge("loss", c, rc, floor=scale)]
    layer_scale = _layer_scales(rgrads)
    leaves += _judge_tree("grads", grads, rgrads, judge, layer_scale)
    leaves += [judge(f"deltas/{k}", deltas[k], rdeltas[k]) for k in deltas]
    state_leaves = _judge_tree("state", new_state, r_new_state, judge, extra_ok=True)
    leaves += state_leaves
    if OWN_FORWARD in sides.sources.values():
        leaves += finite_difference_leaves(net, ref_loss, mine, args, key, train, sides.layers)
    order = forward_order(net)
    layers, first, culprit, parameter = _layer_rows(order, grads, leaves, sides.sources, loss)

    def outputs() -> dict[str, Any]:  # every layer's output, for describing a wrong delta
        taps: dict[str, Any] = {}
        net.forward(params, x, Context(train, key, state, taps))
        return taps

    diagnoses = _diagnoses(layers, leaves, arrays, params, first, culprit, tol, outputs)
    if not leaves[0].ok:  # the loss differs: a forward does, and every delta follows it
        ref_outputs = reference.layer_values(
            net, params, x, state=state, key=key, train=train, layers=sides.layers
        )
        wrong = _wrong_forward(outputs(), ref_outputs, order, dtype, tol, sides.sources)
        if wrong is not None:
            culprit, parameter = wrong[0], None
            diagnoses.insert(0, wrong[1])
    state_err = max((leaf.max_rel for leaf in state_leaves), default=0.0)
    ok = (
        all(lc.delta_ok and lc.grad_ok for lc in layers)
        and leaves[0].ok
        and all(leaf.ok for leaf in state_leaves)
        and (bool(order) or all(leaf.ok for leaf in leaves))  # a network of one layer
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
        parameter=parameter,
        diagnoses=diagnoses,
    )


def _layer_rows(order, grads, leaves, sources, loss):
    """One :class:`LayerCheck` per layer from the loss back, and the first divergent layer:
    ``(layers, first_divergent, culprit, parameter)``."""
    by_path = {leaf.primal: leaf for leaf in leaves if leaf.primal.startswith("deltas/")}
    layers: list[LayerCheck] = []
    first = culprit = parameter = None
    for pos in range(len(order) - 1, -1, -1):
        name = order[pos]
        d = by_path[f"deltas/{name}"]
        try:
            g = subtree(grads, name)
        except (KeyError, TypeError):
            g = None
        g_rel, g_ok, failed = None, True, []
        is_leaf_layer = isinstance(g, dict) and not any(isinstance(v, dict) for v in g.values())
        if is_leaf_layer and g:
            comps = {k: [c for c in leaves if c.primal == f"grads/{name}/{k}"] for k in g}
            g_rel = max(cc.max_rel for k in g for cc in comps[k] if cc.against in SIDES)
            failed = [k for k in g if not all(cc.ok for cc in comps[k])]
            g_ok = not failed
        against = sources.get(name, REFERENCE)
        layers.append(LayerCheck(name, d.max_abs, d.max_rel, d.ok, g_rel, g_ok, against, failed))
        if not d.ok and first is None:
            first = name
            later = [n for n in order[pos + 1 :] if not name.startswith(n + "/")]
            culprit = later[0] if later else f"loss {loss.name!r}"
        if d.ok and not g_ok and first is None and culprit is None:
            culprit = first = name
            parameter = failed[0]
    return layers, first, culprit, parameter


def _wrong_forward(mine, ref, order, dtype, tol, sources) -> tuple[str, str] | None:
    """The first layer, in forward order, whose output differs from the independent side's."""
    for name in order:
        if name not in mine or name not in ref:
            continue
        against = sources.get(name, REFERENCE)
        c = compare(f64(mine[name]), f64(ref[name]), dtype, tol, 0.0, name, against)
        if not c.ok:
            return name, (
                f"the forward of layer {name!r} differs from the {against}: its output has max "
                f"rel error {c.max_rel:.3g} (worst at {c.worst_index}), so the loss and every "
                "delta before it differ too; fix that forward first"
            )
    return None


def _diagnoses(layers, leaves, arrays, params, first, culprit, tol, outputs) -> list[str]:
    """What is wrong with the first divergent layer, by layer and parameter: a known pattern of
    its error, or where the error sits and what it looks like (against the layer's output for
    a wrong delta, against the parameter's value for a wrong gradient)."""
    if first is None:
        return [
            f"{c.primal}: {c.against} disagrees (max rel {c.max_rel:.3g})"
            for c in leaves
            if not c.ok
        ]
    out = []
    lc = next(lc for lc in layers if lc.name == first)
    if not lc.delta_ok:
        who = culprit if culprit.startswith("loss ") else f"layer {culprit!r}"
        label = f"{who}: its backward's ∂C/∂(input), the delta of {first!r}"
        a, e, floor = arrays[f"deltas/{first}"]
        out = {f"the output of {first!r}": f64(outputs()[first])}
        return [diagnose_pattern(label, a, e, tol) or describe(label, a, e, tol, out, floor=floor)]
    for name in lc.failed:
        path = f"grads/{first}/{name}"
        label = f"layer {first!r}, parameter {name!r}"
        ref_side = next(c for c in leaves if c.primal == path and c.against in SIDES)
        if ref_side.ok:
            fd = next(c for c in leaves if c.primal == path and not c.ok)
            out.append(
                f"{label}: float64 finite differences of the loss disagree (max rel "
                f"{fd.max_rel:.3g}) though the independent side agrees: a forward is not what "
                "autodiff differentiates (a stop_gradient, a custom_vjp, an integer cast)"
            )
            continue
        a, e, floor = arrays[path]
        value = {name: f64(subtree(params, f"{first}/{name}"))}
        out.append(
            diagnose_pattern(label, a, e, tol) or describe(label, a, e, tol, value, floor=floor)
        )
    return out


def _layer_scales(grads: Any) -> dict[tuple[str, ...], float]:
    """The size of each layer's whole gradient, max |g| over its arrays, by the layer's path
    (the path of a gradient array less its last part: ``("block", "dense_0")`` for ``w``)."""
    scales: dict[tuple[str, ...], float] = {}
    for path, leaf in zip(tree_paths(grads), jax.tree.leaves(grads), strict=True):
        size = float(np.max(np.abs(f64(leaf)), initial=0.0))
        scales[path[:-1]] = max(scales.get(path[:-1], 0.0), size)
    return scales


def _loss_scale(net, loss, *args) -> float:
    """The scale of the computation behind the loss: its per-example terms Cⁿ and the network's
    outputs (the logits), from the reference forward, so a wrong handwritten forward cannot
    widen its own tolerance. The loss rule's own forward gives the terms for a loss of the
    user's own."""
    *arrays, key, stateful, train, layers = args
    params, state, x, y = arrays if stateful else (arrays[0], None, *arrays[1:])
    loss_fn = reference.FORWARD.get(loss.name) or (lambda o, t: loss.fwd(o, t)[0])

    def scale(params, state, x, y, key):
        out = reference.forward(net, params, x, state=state, key=key, train=train, layers=layers)
        terms = jax.vmap(lambda o, t: loss_fn(o[None], t[None]))(out, y)
        return jnp.maximum(jnp.max(jnp.abs(terms)), jnp.max(jnp.abs(out)))

    return float(jax.jit(scale)(params, state, x, y, key))


def _judge_tree(
    root: str,
    mine: Any,
    ref: Any,
    judge: Any,
    scales: dict[tuple[str, ...], float] | None = None,
    extra_ok: bool = False,
) -> list[Comparison]:
    """``judge(path, m, r, floor)`` for every leaf of two trees of one structure, paths
    ``root/a/b``; ``scales`` gives each leaf's floor by its parent's path. With ``extra_ok``,
    ``mine`` may hold leaves the reference does not (the state of credit assignment's feedback
    matrices, which are not part of the function the reference differentiates): the leaves
    of ``ref`` are judged, and each must be in ``mine``."""
    m_parts, r_parts = tree_paths(mine), tree_paths(ref)
    m_leaves = dict(zip(m_parts, jax.tree.leaves(mine), strict=True))
    r_leaves = dict(zip(r_parts, jax.tree.leaves(ref), strict=True))
    missing, extra = set(r_leaves) - set(m_leaves), set(m_leaves) - set(r_leaves)
    if missing or (extra and not extra_ok):
        raise ValueError(
            f"check_network: the handwritten and the reference {root} differ in structure: "
            f"{jax.tree.structure(mine)} vs {jax.tree.structure(ref)}"
        )
    return [
        judge(
            "/".join([root, *p]),
            m_leaves[p],
            r_leaves[p],
            0.0 if scales is None else scales.get(p[:-1], 0.0),
        )
        for p in r_parts
    ]

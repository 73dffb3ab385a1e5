"""Forward gradients: unbiased gradient estimates from forward-mode passes, with no backward.

* :func:`weight_perturbed` (Baydin et al. 2022, "Gradients without Backpropagation"): draw
  v ~ N(0, I) over every parameter, run one forward-mode pass for the directional derivative
  ∇C·v (:func:`manual_bp.grad.tangent_pass`, every layer's handwritten ``jvp``), and return
  ĝ = (∇C·v) v. Unbiased, since E[v vᵀ] = I; its variance grows with the number of parameters.
* :func:`activity_perturbed` (after Ren et al. 2023, "Scaling Forward Gradient With Local
  Losses", without their local losses): for each top-level layer l of a
  :func:`~manual_bp.nn.serial` network that has parameters, draw u_l ~ N(0, I) shaped like
  its output z_l, run one forward-mode pass with no parameter tangent and u_l injected at z_l,
  which gives ∇_{z_l}C·u_l, estimate the delta ĝ_{z_l} = (∇_{z_l}C·u_l) u_l (unbiased for
  ∂C/∂z_l), and turn it into the layer's weight gradient with that layer's own backward on its
  tape (for a dense layer aᵀ ĝ_z, Σ ĝ_z for b): a local rule, no backward through the network.
  One forward-mode pass per weighted layer; the noise has the size of z_l, not of θ_l, so the
  variance is lower for wide layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .grad import tangent_pass, value_and_grad, weight_angles
from .nn import Context, Layer
from .rules import Rule, get_rule

__all__ = ["ESTIMATORS", "activity_perturbed", "alignment", "as_grad_fn", "weight_perturbed"]


def _normal_like(key: Any, tree: Any) -> Any:
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    drawn = [jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves, strict=False)]
    return jax.tree.unflatten(treedef, drawn)


def weight_perturbed(net: Layer, loss: Rule | str) -> Callable[..., tuple[Any, Any]]:
    """``f(params, x, y, key) -> (C, ĝ)`` with ĝ = (∇C·v) v, v ~ N(0, I) drawn from ``key``.

    One forward-mode pass of the handwritten jvps in training mode (``key`` also seeds
    dropout masks, from a fold of it); a network without state.
    """
    loss = get_rule(loss)

    def f(params, x, y, key):
        k_v, k_net = jax.random.split(key)
        v = _normal_like(k_v, params)
        c, dc, _ = tangent_pass(net, loss, params, x, y, v, None, key=k_net)
        return c, jax.tree.map(lambda t: dc * t, v)

    return f


def activity_perturbed(net: Layer, loss: Rule | str) -> Callable[..., tuple[Any, Any]]:
    """``f(params, x, y, key) -> (C, ĝ)``: every weighted top-level layer's gradient from its
    own backward on the estimated delta ĝ_z = (∇_z C·u) u, u ~ N(0, I) (see the module).

    ``net`` is a :func:`~manual_bp.nn.serial` network without state; parameter-free layers get
    ``{}``.
    """
    loss = get_rule(loss)
    if not isinstance(net, Layer) or net.kind != "serial" or not net.children:
        raise TypeError(f"activity_perturbed: expected a manual_bp.nn.serial network, got {net!r}")

    def f(params, x, y, key):
        k_net, k_u = jax.random.split(key)
        _, tape = net.forward(params, x, Context(True, k_net, None))
        zeros = jax.tree.map(jnp.zeros_like, params)
        grads = {}
        for i, (layer, t) in enumerate(zip(net.children, tape, strict=True)):
            if not jax.tree.leaves(params[layer.name]):
                grads[layer.name] = params[layer.name]
                continue
            box = {}

            def inject(at, dz, layer=layer, i=i, box=box):
                if at.name != layer.name:
                    return dz
                u = jax.random.normal(jax.random.fold_in(k_u, i), dz.shape, dz.dtype)
                box["u"] = u
                return dz + u

            c, dc, _ = tangent_pass(net, loss, params, x, y, zeros, None, key=k_net, inject=inject)
            delta = dc * box["u"]  # ĝ_z = (∇_z C·u) u
            grads[layer.name] = layer.backward(params[layer.name], t, delta)[0]
        return c, grads

    return f


ESTIMATORS: dict[str, Callable[..., Callable[..., tuple[Any, Any]]]] = {
    "weight": weight_perturbed,
    "activity": activity_perturbed,
}
"""The forward-gradient estimators by name (``manual-bp train --grad forward`` and
``--grad forward-activity``)."""


def _estimator(name: Any, op: str) -> Callable[..., Callable[..., tuple[Any, Any]]]:
    if not isinstance(name, str) or name not in ESTIMATORS:
        raise ValueError(f"{op}: estimator must be one of {tuple(ESTIMATORS)}, got {name!r}")
    return ESTIMATORS[name]


def as_grad_fn(estimator: str) -> Callable[..., Callable[..., tuple[Any, Any]]]:
    """The estimator named ``estimator`` (a key of :data:`ESTIMATORS`) as a ``grad_fn`` of
    :func:`manual_bp.train.fit`: ``grad_fn(net, loss, has_state=True) -> f(params, state, x, y,
    key) -> ((C, state), ĝ)``. The network must have no state (the estimators run one
    training-mode forward-mode pass and return no new batch statistics); its state, every
    layer's ``{}``, passes through.
    """
    make = _estimator(estimator, "as_grad_fn")

    def grad_fn(net: Layer, loss: Rule | str, has_state: bool = True):
        f = make(net, loss)

        def with_state(params, state, x, y, key):
            if jax.tree.leaves(state):
                raise TypeError(
                    f"forward gradients ({estimator}-perturbed): network "
                    f"{net.name or net.kind!r} has state (batch-norm statistics); the "
                    "estimators take networks without state"
                )
            c, g = f(params, x, y, key)
            return (c, state), g

        if has_state:
            return with_state
        return f

    return grad_fn


def alignment(net: Layer, loss: Rule | str, estimator: str) -> Callable[..., dict[str, Any]]:
    """``f(params, state, x, y, key) -> {"grads": {layer path: °}}``: for every layer with
    weights, the angle between one draw of the estimator's ĝ (from ``key``) and the true
    gradient ∂C/∂θ of the handwritten backward, on the same batch and dropout masks (see
    :func:`manual_bp.grad.weight_angles`). The cosine is cos(°); a weight-perturbed estimate
    of P weights has E[cos²] ≈ 1/(P + 2) against the gradient of the whole network.

    The same record as :func:`manual_bp.credit.alignment`'s, without ``"deltas"``, so that
    ``manual-bp train --grad forward`` plots it. Works under jit.
    """
    _estimator(estimator, "alignment")
    estimate = as_grad_fn(estimator)(net, loss, has_state=True)
    exact = value_and_grad(net, loss, has_state=True)

    def f(params, state, x, y, key=None):
        key = jax.random.key(0) if key is None else key
        _, g_hat = estimate(params, state, x, y, key)
        # the estimators draw dropout masks from a split of the key; the backward gets the same
        k_net = jax.random.split(key)[1 if estimator == "weight" else 0]
        _, g = exact(params, state, x, y, key=k_net)
        return {"grads": weight_angles(g_hat, g)}

    return f

"""The diagonal of the Hessian of the batch loss, by backpropagating per-example Hessians.

For networks (``serial``, nested or not) of Dense, Conv2D, max and average pooling, flatten
and elementwise activations: every layer's output depends on the parameters of earlier
layers only through its input, so the Hessian Hₙ(z) = ∂²C/∂zₙ² of the batch loss C with
respect to example n's output z of a layer follows from the one after it (Dangel, Kunstner &
Hennig 2020, "BackPACK"; Dangel, Harmeling & Hennig 2020, "Modular block-diagonal curvature
approximations for feedforward architectures"):

* at the network's output, Hₙ = Sₙ Sₙᵀ, the loss's exact Hessian factor
  (:func:`~manual_bp.curvature.hessian_factor`, which carries the loss's 1/N);
* through a layer with Jacobian Jₙ = ∂zₙ/∂xₙ (Dense, Conv2D, pooling, flatten):
  Hₙ(x) = Jₙᵀ Hₙ(z) Jₙ, applied by the layer's own handwritten backward twice — to the
  columns of Hₙ(z), then to the rows of the result — without forming Jₙ;
* through an elementwise activation a = σ(z): Hₙ(z) = diag σ' Hₙ(a) diag σ' + diag(σ''(z) ⊙
  δₙ), with δₙ = ∂C/∂aₙ the ordinary backward pass's delta and σ'' the second derivative
  beside the activation's rule (:data:`manual_bp.rules.SECOND_DERIVATIVES`); the relus'
  σ'' is 0 away from the kink.

A Dense or Conv2D layer's output z_np,o = Σ_i x̃_np,i W_io + b_o is linear in its weights, so
their Hessian has no second-order term: with x̃ the inputs by position (Conv2D: the input
patches, :func:`~manual_bp.curvature.conv_patches`; Dense on vectors: one position)

.. math:: \\operatorname{diag} H_{W_{io}}
   = Σ_n Σ_{p,q} x̃_{np,i}\\, x̃_{nq,i}\\, H_n(z)_{(p,o),(q,o)},
   \\qquad \\operatorname{diag} H_{b_o} = Σ_n Σ_{p,q} H_n(z)_{(p,o),(q,o)}.

Unlike the GGN's diagonal, the Hessian's may be negative (the activations' σ'' terms).
Cost per layer with M outputs and M' inputs per example: M + M' backward passes of the
layer on the batch (vectorized over the cotangents), O(N·M²) memory for the Hessians Hₙ(z) and
O(N·P²·I·O) for a Conv2D layer's weights (P output positions, I = kh·kw·C); for the digits
MLP (64 → 256 → 10) about 2·256 batch backward passes of the last layers and N·256² numbers.
Call it on minibatches and sum (weighted by their share of the loss) for a large training set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ..nn import Layer, has_state
from ..rules import SECOND_DERIVATIVES, Rule, get_rule
from .columns import delta_of, leaves, run_forward
from .factors import FACTOR_LOSSES
from .kronecker import conv_patches

__all__ = ["HESSIAN_KINDS", "hessian_diag"]

_WEIGHTED = ("dense", "conv2d")
_LINEAR = ("max_pool2d", "avg_pool2d", "flatten")
HESSIAN_KINDS = (*_WEIGHTED, *_LINEAR, *SECOND_DERIVATIVES)
"""The layer kinds :func:`hessian_diag` carries the Hessian through (the activations are those
with a second derivative beside their rule)."""


def _input_transpose(layer: Layer, params: Any, tape: Any, out_shape, h):
    """Jₙᵀ Hₙ Jₙ for every example: h (N, M, M) over the flattened outputs -> (N, M', M')."""
    n = h.shape[0]

    def back(dy):  # (N, M) -> (N, M'): Jₙᵀ dyₙ by the layer's own backward
        return jnp.reshape(layer.backward(params, tape, jnp.reshape(dy, out_shape))[2], (n, -1))

    left = jax.vmap(back, in_axes=2, out_axes=2)(h)  # (N, M', M): Jᵀ H
    return jax.vmap(back, in_axes=1, out_axes=1)(left)  # rows of Jᵀ H pushed again: Jᵀ H J


def _weight_diagonal(layer: Layer, params: Any, x: Any, out_shape, h) -> dict[str, Any]:
    """diag H of a Dense or Conv2D layer's weight and bias from the Hessian h (N, M, M) of its
    output (module docstring)."""
    a = conv_patches(layer, x) if layer.kind == "conv2d" else x
    a = jnp.reshape(a, (a.shape[0], -1, a.shape[-1]))  # (N, P, I)
    n, p, o = a.shape[0], a.shape[1], out_shape[-1]
    h = jnp.reshape(h, (n, p, o, p, o))
    h_oo = jnp.einsum("npoqo->npqo", h)  # the blocks of one output feature o
    w = jnp.einsum("npi,nqi,npqo->io", a, a, h_oo)
    out = {"w": jnp.reshape(w, params["w"].shape)}
    if "b" in params:
        out["b"] = jnp.einsum("npqo->o", h_oo)
    return out


def hessian_diag(net: Layer, loss: Rule | str) -> Callable[..., Any]:
    """``f(params, x, y) -> diag H``, shaped like ``params``: the exact diagonal of the
    Hessian of the batch loss ``loss`` of ``net`` with respect to its parameters, by
    backpropagating per-example Hessians through the handwritten backward passes and each
    activation's second derivative (module docstring, with its cost). ``net`` is a layer or
    ``serial`` network of the kinds in :data:`HESSIAN_KINDS` with a (N, K) output; ``loss``
    one of :data:`~manual_bp.curvature.FACTOR_LOSSES`. Works under ``jax.jit``."""
    op = "hessian_diag"
    if not isinstance(net, Layer):
        raise TypeError(f"{op}: expected a manual_bp.nn.Layer as the network, got {net!r}")
    loss = get_rule(loss)
    if loss.name not in FACTOR_LOSSES:
        raise ValueError(
            f"{op}: no Hessian factor for the loss {loss.name!r}; supported: {list(FACTOR_LOSSES)}"
        )
    if has_state(net):
        raise ValueError(
            f"{op}: the network {net.name or net.kind!r} keeps batch statistics; the Hessian "
            f"diagonal covers networks of the kinds {HESSIAN_KINDS}"
        )
    _check_kinds(op, net)

    def f(params, x, y):
        run = run_forward(op, net, loss, params, x, y)
        if run.out.ndim != 2:
            raise ValueError(
                f"{op}: the network's output must be (N, K), got shape {tuple(run.out.shape)}"
            )
        c, loss_res = loss.fwd(run.out, y)
        dout = loss.bwd(loss_res, jnp.ones_like(c))[0]
        _, deltas, _ = net.backward(params, run.tape, dout)
        layers = list(leaves(net, run.tape, params))
        shapes = [tuple(x.shape)]
        for _, layer, _, _ in layers:
            shapes.append(tuple(layer.output_shape(shapes[-1])))
        h = jnp.einsum("nkc,njc->nkj", run.factor, run.factor)  # Hₙ = Sₙ Sₙᵀ
        diag = {}
        for i in range(len(layers) - 1, -1, -1):
            path, layer, tape, p = layers[i]
            out_shape = shapes[i + 1]
            if layer.kind in _WEIGHTED:
                diag[path] = _weight_diagonal(layer, p, tape, out_shape, h)
            elif p:
                raise ValueError(f"{op}: layer {path!r} has parameters but is not Dense/Conv2D")
            if i == 0:
                break
            h = _input_transpose(layer, p, tape, out_shape, h)
            if layer.kind in SECOND_DERIVATIVES:
                second = SECOND_DERIVATIVES[layer.kind](tape, **layer.config)
                residual = jnp.reshape(second * delta_of(deltas, path, dout), (h.shape[0], -1))
                h = h + jax.vmap(jnp.diag)(residual.astype(h.dtype))
        return _like(net, params, diag)

    return f


def _check_kinds(op: str, net: Layer, path: str = "") -> None:
    if net.kind == "serial":
        for child in net.children:
            _check_kinds(op, child, f"{path}/{child.name}" if path else child.name)
    elif net.kind not in HESSIAN_KINDS:
        raise ValueError(
            f"{op}: layer {path or net.name!r} of kind {net.kind!r} is not supported; the "
            f"Hessian diagonal covers serial networks of the kinds {HESSIAN_KINDS}"
        )


def _like(net: Layer, params: Any, diag: dict[str, Any]) -> Any:
    """The per-path diagonals laid out like ``params`` (a layer without parameters: ``{}``)."""
    if net.kind != "serial":
        return diag[""]
    out = {}
    for child in net.children:
        sub = {
            k[len(child.name) + 1 :]: v for k, v in diag.items() if k.startswith(f"{child.name}/")
        }
        if child.name in diag:
            out[child.name] = diag[child.name]
        elif child.kind == "serial":
            out[child.name] = _like(child, params[child.name], sub)
        else:
            out[child.name] = {}
    return out

"""The diagonal of the generalized Gauss–Newton matrix, exact and Monte-Carlo, per layer.

G = Σₙ Jₙᵀ Hₙ Jₙ, Jₙ = ∂(network output of example n)/∂θ and Hₙ the Hessian of the batch
loss C with respect to that output (C carries the loss's 1/N). With Hₙ = Sₙ Sₙᵀ
(:mod:`manual_bp.curvature.factors`) the diagonal is diag G = Σₙ Σ_c (Jₙᵀ s_nc)², the square of
the handwritten backward pass applied to each column of S.

Two routes:

* :func:`diag_ggn` — the generic route, valid for every layer kind (Dense, Conv2D, the norms'
  scale and offset, Embedding, RNN/LSTM/GRU, attention, a layer of the user's own): the
  backward pass of each example (a batch of one) on each of its L·C columns, squared and summed.
  Cost: N·L·C backward passes (vectorized) and O(N·L·C·P) memory for P parameters; L is the
  number of output positions per example (1 for a classifier), C = K for the exact factor or
  the number of samples for Monte-Carlo. A network with batch statistics (batch norm) couples
  its examples: each column is then pushed through the whole batch's backward pass, zero at
  the other examples (N·L·C passes of the batch).
* :func:`dense_diag_ggn` — Dense's cheap route: diag G_w = Σₙ (aₙ²)ᵀ Σ_c δ_nc², from the input
  activations aₙ on the tape and the deltas δ of L·C batch backward passes, without per-example
  gradients of any other layer. Cost: L·C backward passes of the batch, O(N·I·O) per column for
  a Dense layer on vectors; a Dense layer shared over positions (input (N, T, I)) forms its
  per-example gradients Σ_t a_nt δ_ntᵀ, O(N·T·I·O) per column.

The Monte-Carlo estimate (``mc_samples``) replaces the exact factor by one drawn from the
model's predictive distribution: unbiased, with a variance that falls as 1/mc_samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._checks import require_positive_int
from ..nn import Context, Layer, has_state
from ..rules import Rule, get_rule
from .columns import delta_of, example_columns, leaves, position_columns, run_forward

__all__ = ["dense_diag_ggn", "diag_ggn", "ggn_vector_product"]


def _settings(op: str, net: Layer, loss: Rule | str, mc_samples: Any, train: Any) -> Rule:
    if not isinstance(net, Layer):
        raise TypeError(f"{op}: expected a manual_bp.nn.Layer as the network, got {net!r}")
    if mc_samples is not None:
        require_positive_int(op, "mc_samples", mc_samples)
    if not isinstance(train, bool):
        raise TypeError(f"{op}: train must be a Python bool, got {train!r}")
    return get_rule(loss)


def _squares(grads: Any) -> Any:
    """Σ over the leading (column) axis of the squared gradients."""
    return jax.tree.map(lambda g: jnp.sum(g * g, axis=0), grads)


def diag_ggn(
    net: Layer, loss: Rule | str, *, mc_samples: int | None = None, train: bool = True
) -> Callable[..., Any]:
    """``f(params, x, y, key=None, state=None) -> diag G``, shaped like ``params``: the exact
    diagonal of the GGN of the batch loss, or with ``mc_samples`` its Monte-Carlo estimate from
    that many labels per output position sampled with ``key``. ``state`` is needed by networks
    with batch norm; ``train`` picks the forward pass's mode (batch statistics or running
    ones). Works under ``jax.jit``. Cost and route: module docstring."""
    op = "diag_ggn"
    loss = _settings(op, net, loss, mc_samples, train)
    coupled = has_state(net) and train

    def f(params, x, y, key=None, state=None):
        run = run_forward(
            op, net, loss, params, x, y, key=key, state=state, mc_samples=mc_samples, train=train
        )
        if coupled:
            cols = example_columns(run.factor)
            grads = jax.vmap(lambda dy: net.backward(params, run.tape, dy)[0])(cols)
            return _squares(grads)
        ctx = Context(train, None, state)

        def one(xn, sn):
            _, tape = net.forward(params, xn[None], ctx)
            cols = position_columns(sn[None])
            return _squares(jax.vmap(lambda dy: net.backward(params, tape, dy)[0])(cols))

        per_example = jax.vmap(one)(x, run.factor)
        return jax.tree.map(lambda d: jnp.sum(d, axis=0), per_example)

    return f


def dense_diag_ggn(
    net: Layer, loss: Rule | str, *, mc_samples: int | None = None, train: bool = True
) -> Callable[..., dict[str, dict[str, Any]]]:
    """``f(params, x, y, key=None) -> {path: {"w": diag G_w, "b": diag G_b}}`` for every Dense
    layer of ``net`` (inside ``serial`` and ``residual`` combinators), by the path its delta is
    named by: Σₙ (aₙ²)ᵀ Σ_c δ_nc² from the tape's activations and the pushed deltas (module
    docstring), equal to :func:`diag_ggn`'s entries for those layers. Networks with batch
    statistics are refused (their examples are coupled); use :func:`diag_ggn`."""
    op = "dense_diag_ggn"
    loss = _settings(op, net, loss, mc_samples, train)
    if has_state(net):
        raise ValueError(
            f"{op}: the network {net.name or net.kind!r} keeps batch statistics, which couple "
            "the examples; use diag_ggn"
        )

    def f(params, x, y, key=None):
        run = run_forward(op, net, loss, params, x, y, key=key, mc_samples=mc_samples, train=train)
        cols = position_columns(run.factor)
        deltas = jax.vmap(lambda dy: net.backward(params, run.tape, dy)[1])(cols)
        out = {}
        for path, layer, a, _ in leaves(net, run.tape, params):
            if layer.kind != "dense":
                continue
            d = delta_of(deltas, path, cols)  # (L·C, N, ..., O)
            if a.ndim == 2:
                w = jnp.einsum("ni,cno->io", a * a, d * d)
            else:
                a2 = jnp.reshape(a, (a.shape[0], -1, a.shape[-1]))
                d2 = jnp.reshape(d, (d.shape[0], a.shape[0], -1, d.shape[-1]))
                g = jnp.einsum("nti,cnto->cnio", a2, d2)
                w = jnp.sum(g * g, axis=(0, 1))
            b = jnp.sum(
                jnp.reshape(jnp.sum(d, axis=tuple(range(2, d.ndim - 1))), (-1, d.shape[-1])) ** 2,
                axis=0,
            )
            out[path] = {"w": w, "b": b}
        if not out:
            raise ValueError(f"{op}: the network {net.name or net.kind!r} has no Dense layer")
        return out

    return f


def ggn_vector_product(net: Layer, loss: Rule | str, *, train: bool = True) -> Callable[..., Any]:
    """``f(params, x, y, v, state=None) -> G v``, v and G v shaped like ``params``: the exact
    GGN of the batch loss applied to a direction, G v = Jᵀ (S Sᵀ) (J v), with J v the transpose
    of the handwritten (linear) backward pass (``jax.linear_transpose``), S the loss's Hessian
    factor and Jᵀ the backward pass again. Cost: about two backward passes plus O(N L K²)."""
    op = "ggn_vector_product"
    loss = _settings(op, net, loss, None, train)

    def f(params, x, y, v, state=None):
        run = run_forward(op, net, loss, params, x, y, state=state, train=train)

        def backward(dy):
            return net.backward(params, run.tape, dy)[0]

        (jv,) = jax.linear_transpose(backward, run.out)(v)
        hjv = jnp.einsum("...kc,...jc,...j->...k", run.factor, run.factor, jv)
        return backward(hjv)

    return f

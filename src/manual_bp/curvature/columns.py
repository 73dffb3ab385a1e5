"""Pushing the columns of the loss's Hessian factor S through the handwritten backward pass.

The backward pass is linear in the cotangent it is given, so a stack of C cotangents goes
through it under ``jax.vmap``: column c of S at an output position gives, at every layer,
Jᵀ s_c — the layer's delta and its parameters' share of the GGN's square root. The GGN of the
batch loss is G = Σ_columns (Jᵀ s)(Jᵀ s)ᵀ.

Two ways to lay the columns out:

* :func:`position_columns` — one cotangent per (output position l, column c), placed at l in
  every example at once: examples of a network without batch statistics do not interact, so
  example n's part of each pushed column is its own Jₙᵀ s. L·C backward passes of the batch.
* :func:`example_columns` — one cotangent per (example n, position l, column c), zero at every
  other example: valid for every network, batch norm included (its batch statistics couple the
  examples). N·L·C backward passes of the batch.

:func:`leaves` walks a network's description and tape together to each layer inside
``serial`` and ``residual`` combinators, by the path its delta is named by.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import jax.numpy as jnp

from ..nn import Context, Layer, check_params, check_state, has_state
from ..nn.core import check_input
from ..rules import Rule, get_rule
from ..rules.stochastic import require_key
from .factors import hessian_factor, mc_hessian_factor

__all__ = ["Pass", "delta_of", "example_columns", "leaves", "position_columns", "run_forward"]


class Pass(NamedTuple):
    """One forward pass and the loss's Hessian factor at its output: the output ``out``
    (N, ..., K), the network's ``tape`` and ``factor`` (N, ..., K, C)."""

    out: Any
    tape: Any
    factor: Any


def run_forward(
    op: str,
    net: Layer,
    loss: Rule | str,
    params: Any,
    x: Any,
    y: Any,
    *,
    key: Any = None,
    state: Any = None,
    mc_samples: int | None = None,
    train: bool = True,
) -> Pass:
    """The forward pass of ``net`` (after checking its inputs) and the exact factor, or with
    ``mc_samples`` a Monte-Carlo factor of that many sampled labels drawn from ``key``."""
    if not isinstance(net, Layer):
        raise TypeError(f"{op}: expected a manual_bp.nn.Layer as the network, got {net!r}")
    check_input(net, x)
    check_params(net, params, x.shape)
    if has_state(net):
        if state is None:
            raise ValueError(
                f"{op}: the network {net.name or net.kind!r} keeps state (batch norm): pass "
                "state=net.init_state(key, input_shape)"
            )
        check_state(net, state, x.shape)
    out, tape = net.forward(params, x, Context(train, None, state))
    if mc_samples is None:
        return Pass(out, tape, hessian_factor(loss, out, y))
    if key is None:
        raise ValueError(f"{op}: the Monte-Carlo estimate (mc_samples={mc_samples}) needs a key")
    require_key(op, key)
    return Pass(out, tape, mc_hessian_factor(get_rule(loss), out, y, key, mc_samples))


def _flat(factor: Any) -> tuple[Any, int, int, int]:
    n, k, c = factor.shape[0], factor.shape[-2], factor.shape[-1]
    positions = factor[0, ..., 0, 0].size
    return jnp.reshape(factor, (n, positions, k, c)), n, positions, c


def position_columns(factor: Any) -> Any:
    """Cotangents (L·C, N, ..., K): entry (l, c) holds S[n, l, :, c] at position l of every
    example n and zeros at the other positions."""
    s, _n, positions, c = _flat(factor)
    eye = jnp.eye(positions, dtype=s.dtype)
    cols = jnp.einsum("lm,nlkc->lcnmk", eye, s)
    return jnp.reshape(cols, (positions * c, *tuple(factor.shape[:-1])))


def example_columns(factor: Any) -> Any:
    """Cotangents (N·L·C, N, ..., K): entry (n, l, c) holds S[n, l, :, c] at position l of
    example n alone."""
    s, n, positions, c = _flat(factor)
    eye_n = jnp.eye(n, dtype=s.dtype)
    eye_l = jnp.eye(positions, dtype=s.dtype)
    cols = jnp.einsum("nm,lq,nlkc->nlcmqk", eye_n, eye_l, s)
    return jnp.reshape(cols, (n * positions * c, *tuple(factor.shape[:-1])))


def leaves(
    net: Layer, tape: Any, params: Any, path: str = ""
) -> Iterator[tuple[str, Layer, Any, Any]]:
    """``(path, layer, tape, params)`` of every layer that is not a ``serial`` or ``residual``
    combinator, in forward order; ``path`` is the name its delta is recorded under ("" for a
    network that is a single layer)."""
    if net.kind in ("serial", "residual"):
        tapes = tape if net.kind == "serial" else (tape,)
        for child, t in zip(net.children, tapes, strict=True):
            child_path = f"{path}/{child.name}" if path else child.name
            yield from leaves(child, t, params[child.name], child_path)
    else:
        yield path, net, tape, params


def delta_of(deltas: dict[str, Any], path: str, dout: Any) -> Any:
    """The delta recorded under ``path`` (``dout`` itself for the network's own output)."""
    return dout if path == "" else deltas[path]

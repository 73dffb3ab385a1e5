"""What a split forward keeps for its backward: the manual tape against ``jax.vjp``'s
residuals, in bytes, when forward and backward are two jitted calls."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

import reference

from .. import nn
from ..rules import get_rule
from .models import LOSS, Case

__all__ = ["tape_report"]


def _leaf_bytes(leaves: Sequence[Any], distinct: int, params: int) -> dict[str, int]:
    """Bytes of a tape's leaves: all of them; the first ``distinct`` (the distinct arrays);
    and of those, the first ``params`` (the parameters themselves, held by reference)."""
    return {
        "bytes": sum(int(a.nbytes) for a in leaves),
        "distinct_bytes": sum(int(a.nbytes) for a in leaves[:distinct]),
        "param_bytes": sum(int(a.nbytes) for a in leaves[:params]),
        "arrays": len(leaves),
        "distinct_arrays": distinct,
    }


def _split_forward(fn: Callable[..., Any]) -> Callable[..., tuple[list[Any], int, int]]:
    """``jit(fn)`` returning the leaves of its output tree, reordered: the distinct ones first
    (an array that appears at several places of the tree — a layer's output is also the next
    layer's input — is one value, kept once), starting with those that are leaves of the
    first argument (the parameters); then the repeats. Returns ``(leaves, number of distinct
    leaves, number of them that are parameters)``."""
    counts: list[tuple[int, int]] = []

    def traced(params, *args):
        leaves = jax.tree.leaves(fn(params, *args))
        param_ids = {id(p) for p in jax.tree.leaves(params)}
        first: dict[int, Any] = {}
        repeats = []
        for a in leaves:
            if id(a) in first:
                repeats.append(a)
            else:
                first[id(a)] = a
        own = [a for a in first.values() if id(a) in param_ids]
        rest = [a for a in first.values() if id(a) not in param_ids]
        counts.append((len(first), len(own)))
        return own + rest + repeats

    jitted = jax.jit(traced)

    def run(*args):
        leaves = jitted(*args)
        return leaves, *counts[-1]

    return run


def tape_report(case: Case, params: Any, state: Any, batch: Any) -> dict[str, Any]:
    """What a split forward keeps for its backward when forward and backward are two jitted
    calls: the manual tape (the network's tape and the loss's residuals) against the residuals
    of ``jax.vjp`` of the reference loss (the leaves of the function it returns).

    ``bytes`` sums every leaf; ``distinct_bytes`` counts an array held at several places of
    the tree once (for both sides alike): that is what a split forward needs to keep.
    ``param_bytes`` are the parameters among them (``jax.vjp``'s pullback closes over the
    weights; the manual backward takes them as an argument), and ``activation_ratio``
    compares the rest.
    """
    x, y = batch
    loss_rule = get_rule(LOSS)
    loss_ref = reference.FORWARD[LOSS]
    stateful = case.stateful

    def manual_forward(params, state, x, y):
        ctx = nn.Context(train=True, state=state if stateful else None)
        out, tape = case.net.forward(params, x, ctx)
        _, loss_res = loss_rule.fwd(out, y)
        return tape, loss_res

    def vjp_forward(params, state, x, y):
        def c(p):
            out, _ = reference.forward_with_state(
                case.net, p, x, state=state if stateful else None, train=True
            )
            return loss_ref(out, y)

        _, pullback = jax.vjp(c, params)
        return pullback

    manual = _leaf_bytes(*_split_forward(manual_forward)(params, state, x, y))
    vjp = _leaf_bytes(*_split_forward(vjp_forward)(params, state, x, y))

    def activations(side: dict[str, int]) -> int:
        return side["distinct_bytes"] - side["param_bytes"]

    return {
        "manual": manual,
        "vjp": vjp,
        "ratio": manual["distinct_bytes"] / vjp["distinct_bytes"],
        "all_leaves_ratio": manual["bytes"] / vjp["bytes"],
        "activation_ratio": activations(manual) / activations(vjp) if activations(vjp) else None,
    }

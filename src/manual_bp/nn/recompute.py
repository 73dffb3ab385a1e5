"""Tape policies: keep a layer's input only and recompute its forward inside the backward.

``remat(layer)`` is the same layer — name, kind, config, children, parameters and deltas — whose
tape is ``(x, ctx, state)`` instead of everything its forward kept: its input, the context it
ran in (the same dropout key, so the recomputed masks are the ones of the forward) and the new
state it produced. Its backward runs ``layer.forward`` again and then ``layer.backward`` on that
tape, so the gradients and deltas are those of the full tape. ``remat_serial(*layers,
every=k)`` is ``serial`` of groups of k layers, each group rematerialized: with k ≈ √n, a
stack of n layers keeps about √n inputs plus one group's tape at a time (√n checkpointing).
The recomputation runs inside a ``lax.cond`` whose predicate XLA cannot know at compile time
(a stateful ``rng_uniform`` draw compared with 2, always true; both branches are the same
recomputation, so the result never depends on it). An ``optimization_barrier`` alone, as
``jax.checkpoint`` uses, does not survive XLA:CPU's pipeline: the barrier is expanded before
common-subexpression elimination, which merges the recomputation back into the forward, and
the full tape is kept after all (measured, ``benchmarks/tape_policies.py``: a 32-layer tanh
MLP, batch 4096 × 256, groups of 8: ``jax.checkpoint`` on the reference 164 MiB of XLA temp
memory, no checkpoint 136 MiB; the full handwritten tape 132 MiB, ``remat_serial`` 52 MiB).
CSE works within one computation and does not merge a conditional's branches with the
computation around it.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from .._checks import require_positive_int
from .core import Context, Layer, serial

__all__ = ["remat", "remat_serial"]


def _opaque_true():
    """``True``, computed at run time from a stateful draw in [0, 1): a predicate no compiler
    pass can fold, so the branches of a ``lax.cond`` on it stay apart from the rest."""
    return lax.rng_uniform(jnp.float32(0), jnp.float32(1), ()) < 2


def remat(layer: Layer) -> Layer:
    """``layer`` with the tape policy "keep the input, recompute the rest in the backward"."""
    if not isinstance(layer, Layer):
        raise TypeError(f"remat: expected a manual_bp.nn.Layer, got {type(layer).__name__}")

    def recompute(then, params, tape, after):
        """``then(params, full_tape, after)`` on the tape that ``layer.forward`` rebuilds from
        the kept input, inside a conditional that XLA cannot see through."""
        x, ctx, _ = tape

        def branch(params, x, after):
            return then(params, layer.forward(params, x, ctx)[1], after)

        return lax.cond(_opaque_true(), branch, branch, params, x, after)

    def forward(params, x, ctx=None):
        ctx = Context() if ctx is None else ctx
        y, tape = layer.forward(params, x, ctx)
        return y, (x, ctx._replace(taps=None), layer.state_of(tape))

    def backward(params, tape, dy):
        return recompute(layer.backward, params, tape, dy)

    def state_of(tape):
        return tape[2]

    def jvp(params, tape, dparams, dx):
        return recompute(lambda p, inner, dx: layer.jvp(p, inner, dparams, dx), params, tape, dx)

    return layer._replace(
        forward=forward,
        backward=backward,
        state_of=state_of,
        jvp=None if layer.jvp is None else jvp,
    )


def remat_serial(*layers: Layer, every: int, name: str | None = None) -> Layer:
    """``serial`` of the layers in groups of ``every``, each group a :func:`remat` of its
    ``serial`` (named ``group_0``, ``group_1``, ...): √n checkpointing with ``every`` ≈ √n."""
    every = require_positive_int("remat_serial", "every", every)
    groups = [
        remat(serial(*layers[i : i + every], name=f"group_{i // every}"))
        for i in range(0, len(layers), every)
    ]
    return serial(*groups, name=name)

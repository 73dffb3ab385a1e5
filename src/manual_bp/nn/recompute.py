"""Tape policies: keep a layer's input only and recompute its forward inside the backward.

``remat(layer)`` is the same layer — name, kind, config, children, parameters and deltas — whose
tape is ``(x, ctx, state)`` instead of everything its forward kept: its input, the context it
ran in (the same dropout key, so the recomputed masks are the ones of the forward) and the new
state it produced. Its backward runs ``layer.forward`` again and then ``layer.backward`` on that
tape, so the gradients and deltas are those of the full tape. ``remat_serial(*layers,
every=k)`` is ``serial`` of groups of k layers, each group rematerialized: with k ≈ √n, a
stack of n layers keeps about √n inputs plus one group's tape at a time (√n checkpointing).
The recomputation is kept apart from the forward by ``lax.optimization_barrier`` (otherwise
XLA would merge the two identical computations back into one). Measured once on a 32-layer
tanh MLP (256 × 64, every=6), XLA's compiled temp memory was not lower than the full tape's
(1.5 against 1.1 MB): XLA already frees what the full tape does not need, and the saving
this policy buys has yet to be shown (benchmarks/NOTES.md).
"""

from __future__ import annotations

from jax import lax

from .._checks import require_positive_int
from .core import Context, Layer, serial

__all__ = ["remat", "remat_serial"]


def remat(layer: Layer) -> Layer:
    """``layer`` with the tape policy "keep the input, recompute the rest in the backward"."""
    if not isinstance(layer, Layer):
        raise TypeError(f"remat: expected a manual_bp.nn.Layer, got {type(layer).__name__}")

    def rerun(params, tape, after):
        x, ctx, _ = tape
        params, x, after = lax.optimization_barrier((params, x, after))
        return layer.forward(params, x, ctx)[1], after

    def forward(params, x, ctx=None):
        ctx = Context() if ctx is None else ctx
        y, tape = layer.forward(params, x, ctx)
        return y, (x, ctx._replace(taps=None), layer.state_of(tape))

    def backward(params, tape, dy):
        inner, dy = rerun(params, tape, dy)
        return layer.backward(params, inner, dy)

    def state_of(tape):
        return tape[2]

    def jvp(params, tape, dparams, dx):
        inner, dx = rerun(params, tape, dx)
        return layer.jvp(params, inner, dparams, dx)

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

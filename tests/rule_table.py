"""The audit table the tests are driven by (it lives in the package, for ``manual-bp verify``),
and the one jitted evaluation of a row that the rule tests share: backward and forward mode.

:func:`row_results` evaluates every case of a row (each dtype, shape and input domain) in one
compiled program, cached per row: the table's tests in backward and forward mode and the eager
comparison read it, and the finite differences evaluate their moved points with the same
program (:func:`row_evaluator`). :func:`vjp_evaluator` (backward mode only, cached per row and
compiled per shape) serves the property tests and the adapter's table;
:func:`evaluator` evaluates one case in both modes.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import numpy as np

import reference
from _compare import random_cotangent, rng_for
from manual_bp import RULES
from manual_bp.verify.oracles import tangents_for
from manual_bp.verify.table import ALL_DTYPES, BF16, F32, F64, ROWS, Row

__all__ = [
    "ALL_DTYPES",
    "BF16",
    "F32",
    "F64",
    "ROWS",
    "TANGENTS",
    "Results",
    "Row",
    "case_inputs",
    "cases",
    "evaluator",
    "out_struct",
    "primals_for",
    "row_evaluator",
    "row_results",
    "vjp_evaluator",
    "with_diff",
]


class Results(NamedTuple):
    """One row evaluated at one set of primals and one cotangent.

    ``out``: the rule's forward; ``cts``: its ``bwd``, one entry per primal (None for a
    non-differentiable one); ``own_out``/``own_cts``: ``jax.vjp`` of the rule's own forward,
    one entry per differentiable primal; ``ref_out``/``ref_cts``: the same of the reference.

    Forward mode, along :data:`TANGENTS` seeded random tangents (``None`` for a rule without
    a ``jvp``): ``tangents``, one stacked (K, *shape) array per differentiable primal;
    ``jvp``: the rule's ``jvp`` along each, (K, *out); ``own_jvp``/``ref_jvp``: ``jax.jvp`` of
    the rule's own forward and of the reference.
    """

    out: Any
    cts: Any
    own_out: Any
    own_cts: tuple
    ref_out: Any
    ref_cts: tuple
    tangents: tuple | None = None
    jvp: Any = None
    own_jvp: Any = None
    ref_jvp: Any = None


TANGENTS = 2
"""How many random tangents each evaluation runs the forward mode along (vmapped)."""


def primals_for(row: Row, dtype, shape, domain: str, *key) -> tuple:
    """The row's primals for a case, drawn from a generator seeded by the case (and ``key``)."""
    return row.make(
        rng_for(*key, row.id, shape, np.dtype(dtype).name, domain), shape, dtype, domain
    )


def out_struct(row: Row, primals) -> jax.ShapeDtypeStruct:
    """The shape and dtype of the rule's output at ``primals`` (traced once per shapes)."""
    return _out_struct(row, tuple(jax.ShapeDtypeStruct(p.shape, p.dtype) for p in primals))


@functools.cache
def _out_struct(row: Row, structs: tuple) -> jax.ShapeDtypeStruct:
    return jax.eval_shape(lambda *p: RULES[row.rule].fwd(*p, **row.static)[0], *structs)


def with_diff(row: Row, primals, diff) -> tuple:
    """``primals`` with the differentiable ones replaced by ``diff`` (a tuple, as ``make``
    returns them, so that a jitted call sees the same structure)."""
    full = list(primals)
    for i, d in zip(row.diff, diff, strict=True):
        full[i] = d
    return tuple(full)


def _evaluate(row: Row, with_jvp: bool = True):
    """``(primals, ct) -> Results`` (not jitted): the rule's fwd, bwd and jvp, and ``jax.vjp``
    and ``jax.jvp`` of its own fwd and of the reference forward (backward mode only when not
    ``with_jvp``)."""
    rule, ref = RULES[row.rule], reference.FORWARD[row.rule]

    def autodiff_of(fn, primals, ct, tangents=None):
        """``fn``'s output, ``jax.vjp`` of it at ``ct`` and (given ``tangents``) ``jax.jvp`` of
        it along each: one ``jax.linearize``, whose linear map is vmapped over the tangents and
        transposed for the cotangent (what ``jax.vjp`` computes), so the program holds ``fn``'s
        forward once, not once per mode."""
        at = tuple(primals[i] for i in row.diff)

        def f(*diff):
            return fn(*with_diff(row, primals, diff), **row.static)

        if tangents is None:
            out, vjp = jax.vjp(f, *at)
            return out, vjp(ct), None
        out, linear = jax.linearize(f, *at)
        return out, jax.linear_transpose(linear, *at)(ct), jax.vmap(linear)(*tangents)

    def handwritten_jvps(res, n, tangents):
        def one(*ts):
            padded = [None] * n
            for i, t in zip(row.diff, ts, strict=True):
                padded[i] = t
            return rule.jvp(res, *padded, **row.static)

        return jax.vmap(one)(*tangents)

    def run(primals, ct):
        out, res = rule.fwd(*primals, **row.static)
        cts = rule.bwd(res, ct, **row.static)

        def own_fwd(*a, **k):
            return rule.fwd(*a, **k)[0]

        forward = rule.jvp is not None and with_jvp
        tangents = tangents_for(primals, row.diff, TANGENTS, 0) if forward else None
        *own, own_jvp = autodiff_of(own_fwd, primals, ct, tangents)
        *theirs, ref_jvp = autodiff_of(ref, primals, ct, tangents)
        results = Results(out, cts, *own, *theirs)
        if not forward:
            return results
        return results._replace(
            tangents=tangents,
            jvp=handwritten_jvps(res, len(primals), tangents),
            own_jvp=own_jvp,
            ref_jvp=ref_jvp,
        )

    return run


@functools.cache
def evaluator(row: Row):
    """Jitted ``(primals, ct) -> Results`` at one set of primals: the rule's fwd, bwd and jvp,
    and ``jax.vjp`` and ``jax.jvp`` of its own fwd and of the reference forward."""
    return jax.jit(_evaluate(row))


@functools.cache
def vjp_evaluator(row: Row):
    """Jitted ``(primals, ct) -> Results`` in backward mode only (the forward-mode fields
    ``None``): what the finite differences, the property tests and the adapter's table read,
    a smaller program to compile at each new shape."""
    return jax.jit(_evaluate(row, with_jvp=False))


def cases(row: Row) -> list[tuple[Any, Any, str]]:
    """The row's cases: every (dtype, shape, domain), without bfloat16 at |x| ~ 1e3."""
    return [
        (dtype, shape, domain)
        for dtype in row.dtypes
        for shape in row.shapes
        for domain in row.domains()
        if not (domain == "extreme" and dtype == BF16)
    ]


def case_inputs(row: Row, dtype, shape, domain: str) -> tuple[tuple, Any]:
    """A case's primals and its seeded random cotangent (never ones)."""
    primals = primals_for(row, dtype, shape, domain)
    ct = random_cotangent(rng_for("ct", row.id, shape, domain), out_struct(row, primals))
    return primals, ct


def _pairs(row: Row) -> list[tuple[Any, Any]]:
    return [(dtype, shape) for dtype in row.dtypes for shape in row.shapes]


@functools.cache
def _row_program(row: Row):
    """The row's one jitted program: :func:`evaluator`'s computation at every (dtype, shape)
    of the row at once, ``[(primals, ct), ...] -> [Results, ...]``."""
    run = _evaluate(row)
    return jax.jit(lambda args: [run(primals, ct) for primals, ct in args])


@functools.cache
def row_results(row: Row) -> dict[tuple[Any, Any, str], Results]:
    """Every case of the row, ``{(dtype, shape, domain): Results}``, from one compiled program
    (one XLA compile per table row, not one per dtype and shape): :func:`evaluator`'s
    computation at every (dtype, shape) of the row at once, called once per input domain.
    (bfloat16 at |x| ~ 1e3 is evaluated for the program's shape and not returned.)"""
    pairs = _pairs(row)
    program = _row_program(row)
    wanted = set(cases(row))
    results = {}
    for domain in row.domains():
        outs = program([case_inputs(row, dtype, shape, domain) for dtype, shape in pairs])
        for (dtype, shape), r in zip(pairs, outs, strict=True):
            if (dtype, shape, domain) in wanted:
                results[dtype, shape, domain] = r
    return results


def row_evaluator(row: Row, dtype, shape):
    """``(primals, ct) -> Results`` at one (dtype, shape) of the row, evaluated by the row's one
    compiled program (its other pairs at their ordinary inputs): what the finite differences
    call at their moved points, without a compile of their own."""
    pairs = _pairs(row)
    k = pairs.index((dtype, shape))
    base = [case_inputs(row, d, s, "normal") for d, s in pairs]
    program = _row_program(row)

    def run(primals, ct):
        args = list(base)
        args[k] = (primals, ct)
        return program(args)[k]

    return run

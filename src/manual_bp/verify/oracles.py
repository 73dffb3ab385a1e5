"""The oracles a rule is checked against: jitted evaluations of its ``bwd``, ``jax.vjp`` of its own
``fwd`` and of the reference forward (vmapped over stacked cotangents), and float64 central and
one-sided finite differences of ⟨g, fwd(x)⟩; in forward mode, in the same jitted program, its
``jvp``, ``jax.jvp`` of its own ``fwd`` and of the reference forward (vmapped over seeded random
tangents) and the central and one-sided difference quotients of ``fwd`` along each tangent. Each
jitted evaluator is cached per (rule, static keywords), so a table row compiles once per shape
and dtype across its cases.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import reference

from ..rules import RULES, Rule
from .tolerances import MAX_FD_ELEMENTS, compare, f64, float64_array, float64_copies

__all__ = [
    "Evaluation",
    "TangentResults",
    "bind",
    "difference_quotients",
    "evaluator",
    "fd_evaluator",
    "finite_difference_comparison",
    "reference_forward",
    "tangents_for",
]


def bind(fn, primals, diff):
    def f(*d):
        full = list(primals)
        for i, v in zip(diff, d, strict=True):
            full[i] = v
        return fn(*full)

    return f


def try_cache(fn):
    cached = functools.lru_cache(maxsize=256)(fn)

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            hash(args)
        except TypeError:
            return fn(*args)
        return cached(*args)

    return wrapper


class TangentResults(NamedTuple):
    """A rule's forward mode along K tangents, each entry stacked over them.

    ``tangents``: one (K, *shape) array per differentiable primal; ``ours``: the rule's ``jvp``;
    ``own``/``ref``: ``jax.jvp`` of its own forward and of the reference (``None`` without
    one); ``central``/``left``/``right``: (fwd(x + h t) − fwd(x − h t)) / 2h and the two
    one-sided quotients, h = 1e-6 · max(1, max|x|), meaningful in float64 only.
    """

    tangents: tuple
    ours: Any
    own: Any
    ref: Any
    central: Any
    left: Any
    right: Any


class Evaluation(NamedTuple):
    """What :func:`evaluator` returns: the forward ``out`` and, stacked over the cotangents,
    ``bwd`` (``ours``, one entry per primal), ``jax.vjp`` of the forward (``theirs``, one per
    differentiable primal) and of the reference (``ref_out``, ``ref_cts``; ``None`` without
    one); ``tangent`` is the forward mode (:class:`TangentResults`), ``None`` for a rule
    without a ``jvp``."""

    out: Any
    ours: Any
    theirs: Any
    ref_out: Any
    ref_cts: Any
    tangent: TangentResults | None


def tangents_for(primals: tuple, diff: tuple, count: int, seed: Any) -> tuple:
    """``count`` seeded random tangents N(0, 1) + 0.1 per differentiable primal, stacked, each
    value representable in bfloat16 so that the same tangents are drawn in every dtype."""
    key = jax.random.fold_in(jax.random.key(0x7A9), seed)
    out = []
    for i in diff:
        p = primals[i]
        t = jax.random.normal(jax.random.fold_in(key, i), (count, *p.shape), jnp.float32) + 0.1
        out.append(t.astype(jnp.bfloat16).astype(p.dtype))
    return tuple(out)


def _forward_mode(rule, kw, primals, diff, ref_fn, out, res, count, seed) -> TangentResults:
    tangents = tangents_for(primals, diff, count, seed)

    def full(ts):
        padded: list[Any] = [None] * len(primals)
        for i, t in zip(diff, ts, strict=True):
            padded[i] = t
        return padded

    ours = jax.vmap(lambda *ts: rule.jvp(res, *full(ts), **kw))(*tangents)
    at = tuple(primals[i] for i in diff)

    def jvp_of(fn):
        f = bind(fn, primals, diff)
        return jax.vmap(lambda *ts: jax.jvp(f, at, ts)[1])(*tangents)

    own = jvp_of(lambda *p: rule.fwd(*p, **kw)[0])
    ref = None if ref_fn is None else jvp_of(lambda *p: ref_fn(*p, **kw))
    top = jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(jnp.float32) for x in at]))
    h = 1e-6 * jnp.maximum(1.0, top)

    def quotients(*ts):
        f = bind(lambda *p: rule.fwd(*p, **kw)[0], primals, diff)
        plus = f(*(x + h.astype(x.dtype) * t for x, t in zip(at, ts, strict=True)))
        minus = f(*(x - h.astype(x.dtype) * t for x, t in zip(at, ts, strict=True)))
        step = h.astype(out.dtype)
        return (plus - minus) / (2 * step), (out - minus) / step, (plus - out) / step

    central, left, right = jax.vmap(quotients)(*tangents)
    return TangentResults(tangents, ours, own, ref, central, left, right)


@try_cache
def evaluator(rule: Rule, static: tuple, diff: tuple, ref_fn: Any, forward: bool = True):
    """A function of ``(primals, cotangents, seed=0) -> Evaluation``, jitted once: bwd, jax.vjp
    and reference cotangents vmapped over the stacked cotangents and, when the rule has a
    ``jvp`` (and ``forward`` is true), its forward mode along as many seeded random tangents
    (:func:`tangents_for`)."""
    kw = dict(static)

    def run(primals, cts, seed):
        out, res = rule.fwd(*primals, **kw)
        ours = jax.vmap(lambda g: rule.bwd(res, g, **kw))(cts)
        _, vjp = jax.vjp(
            bind(lambda *p: rule.fwd(*p, **kw)[0], primals, diff), *(primals[i] for i in diff)
        )
        theirs = jax.vmap(vjp)(cts)
        tangent = None
        if forward and rule.jvp is not None:
            tangent = _forward_mode(rule, kw, primals, diff, ref_fn, out, res, cts.shape[0], seed)
        if ref_fn is None:
            return Evaluation(out, ours, theirs, None, None, tangent)
        ref_out, ref_vjp = jax.vjp(
            bind(lambda *p: ref_fn(*p, **kw), primals, diff), *(primals[i] for i in diff)
        )
        return Evaluation(out, ours, theirs, ref_out, jax.vmap(ref_vjp)(cts), tangent)

    jitted = jax.jit(run)

    def call(primals, cts, seed=0):
        return jitted(primals, cts, jnp.uint32(seed))

    return call


@try_cache
def fd_evaluator(rule: Rule, static: tuple, indices: tuple[int, ...]):
    """Jitted float64 central and one-sided differences of φ(x) = ⟨g, fwd(x)⟩ along given
    directions of each primal in ``indices`` (the others held fixed), all in one program:
    ``(primals, g, directions, steps) -> ((central, left, right), ...)``, one triple per index,
    with ``directions`` and ``steps`` given per index too."""
    kw = dict(static)

    def phi(primals, index, x, g):
        full = list(primals)
        full[index] = x
        out = rule.fwd(*full, **kw)[0]
        return jnp.sum(out * g)

    def run(primals, g, directions, steps):
        results = []
        for index, dirs, h in zip(indices, directions, steps, strict=True):
            x = primals[index]
            at = phi(primals, index, x, g)

            def one(v, index=index, x=x, h=h, at=at):
                plus = phi(primals, index, x + h * v, g)
                minus = phi(primals, index, x - h * v, g)
                return (plus - minus) / (2 * h), (at - minus) / h, (plus - at) / h

            results.append(jax.vmap(one)(dirs))
        return tuple(results)

    return jax.jit(run)


def reference_forward(rule: Rule):
    """The reference forward of a registered rule, or None for a rule of the user's own."""
    if RULES.get(rule.name) is not rule:
        return None
    return reference.FORWARD.get(rule.name)


def difference_quotients(rule, static, primals, g, cotangents: dict) -> dict:
    """Float64 differences of ⟨g, fwd⟩ along each primal i of ``cotangents`` (``{i: the rule's
    float64 cotangent of primal i at g}``), evaluated by one jitted program for all of them:
    ``{i: (a, central, left, right)}`` per element, or ``(⟨a, v⟩, central, None, None)`` along
    16 random directions v for a large primal. A primal that is not finite, or whose cotangent
    has another shape, is left out."""
    with jax.enable_x64(True):
        p64 = float64_copies(primals)
        g64 = float64_array(g)
        todo = {}
        for i, a in cotangents.items():
            x = f64(primals[i])
            if a is not None and a.shape == x.shape and np.all(np.isfinite(x)):
                todo[i] = (f64(a), x)
        if not todo:
            return {}
        directions, steps = [], []
        for _, x in todo.values():
            steps.append(1e-6 * max(1.0, float(np.max(np.abs(x), initial=0))))
            if x.size <= MAX_FD_ELEMENTS:
                dirs = np.eye(x.size).reshape((x.size, *x.shape))
            else:
                dirs = np.random.default_rng(0).standard_normal((16, *x.shape))
            directions.append(float64_array(dirs))
        fd = fd_evaluator(rule, tuple(sorted(static.items())), tuple(todo))
        quotients = fd(p64, g64, tuple(directions), tuple(steps))
        raw = {}
        for (i, (a, x)), dirs, (central, left, right) in zip(
            todo.items(), directions, quotients, strict=True
        ):
            if x.size <= MAX_FD_ELEMENTS:
                raw[i] = (a, *(np.asarray(v).reshape(x.shape) for v in (central, left, right)))
            else:
                along = np.tensordot(np.asarray(dirs), a, axes=a.ndim)
                raw[i] = (along, np.asarray(central), None, None)
        return raw


def finite_difference_comparison(raw, name, dtype, global_scale):
    """Compare against the differences; kink-aware where left and right ones disagree.

    Differences are judged on the scale of the largest gradient of any primal, so a primal
    whose true cotangent is zero (differences of pure rounding noise) is not held to its noise.
    """
    a, central, left, right = raw
    scale = max(float(np.max(np.abs(central), initial=0)), 1e-3 * global_scale, 1e-300)
    if left is None:
        return compare(
            a, central, dtype, 1e-6, scale, name, "finite differences (f64, 16 dirs)"
        ), None
    kink = np.abs(right - left) > 1e-3 * scale
    lo, hi = np.minimum(left, right), np.maximum(left, right)
    within = (a >= lo - 1e-6 * scale) & (a <= hi + 1e-6 * scale)
    comp = compare(a, central, dtype, 1e-6, scale, name, "finite differences (f64)", kink)
    if kink.any():
        comp.ok = comp.ok and bool(within[kink].all())
        comp.note = f"{int(kink.sum())} kink point(s): one-sided range " + (
            "ok" if within[kink].all() else "VIOLATED"
        )
    return comp, kink

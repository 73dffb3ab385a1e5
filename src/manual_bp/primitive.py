"""A handwritten rule as JAX primitives: every transformation, forward and reverse, runs it.

:func:`as_primitive` turns a :class:`~manual_bp.Rule` with a ``jvp`` into three primitives, the
way JAX's own operations are built:

* ``<name>`` — the nonlinear forward: ``(out, residuals) = fwd(*primals)``, the residuals
  flattened to their array leaves;
* ``<name>_jvp`` — ``jvp(residuals, *tangents)``, linear in the tangents; its transpose rule is
  ``<name>_bwd``;
* ``<name>_bwd`` — ``bwd(residuals, dout)``, linear in ``dout``; its transpose rule is
  ``<name>_jvp``.

The forward's JVP rule binds ``<name>_jvp``, so ``jax.jvp``, ``jax.linearize`` and
``jax.jacfwd`` run the handwritten jvp, and ``jax.grad``, ``jax.vjp`` and ``jax.jacrev``, which
transpose the linearized program, run the handwritten bwd. Both linear primitives also take
the primals, so the second derivative through the residuals is JAX's derivative of the rule's
own Python code, ``fwd`` then ``jvp`` (or ``bwd``): ``jax.hessian`` and every order of forward
and reverse compose. Each primitive has a batching rule (the batch axis moved to the front,
the rule's function ``jax.vmap``-ed over it) and a lowering (``mlir.lower_fun`` of that
function), so ``vmap``, ``lax.scan`` and ``jit`` of any program with them work.

:func:`~manual_bp.adapter.as_custom_vjp` stays for reverse-only rules (``jvp=None``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from ._checks import prefix_errors
from .rules import Rule, get_rule

__all__ = ["as_primitive"]

_ARRAY = "<array>"  # a residual leaf that is an array (the others are static Python values)


class _Layout(NamedTuple):
    """What a call's primals make of the rule: hashable, so it is a primitive's parameter."""

    static: tuple  # the rule's static keywords, sorted (name, value) pairs
    primals: tuple  # avals of the primals
    diff: tuple  # the differentiable (floating) primals, by position
    out_tree: Any
    outs: tuple  # avals of the output leaves
    res_tree: Any
    res_static: tuple  # per residual leaf: _ARRAY, or its static Python value
    res: tuple  # avals of the array residual leaves


def _is_static_leaf(v: Any) -> bool:
    return isinstance(v, bool | int | float | complex | str) or v is None


def _residuals(layout: _Layout, arrays: Any) -> Any:
    it = iter(arrays)
    leaves = [next(it) if s == _ARRAY else s for s in layout.res_static]
    return jax.tree.unflatten(layout.res_tree, leaves)


def _check_leaves(name: str, what: str, got: list, avals: tuple) -> list:
    if len(got) != len(avals):
        raise TypeError(
            f"as_primitive({name!r}): {what} has {len(got)} leaves, expected {len(avals)}"
        )
    for i, (g, a) in enumerate(zip(got, avals, strict=True)):
        if g is None or tuple(g.shape) != tuple(a.shape) or g.dtype != a.dtype:
            got_type = "None" if g is None else f"{g.dtype}{list(g.shape)}"
            raise TypeError(
                f"as_primitive({name!r}): {what} leaf {i} is {got_type}, expected "
                f"{a.dtype}{list(a.shape)}"
            )
    return got


# ---- the rule's functions on flat leaves, for one example (unbatched) -------------------------


def _fwd_flat(rule: Rule, layout: _Layout, *primals: Any) -> list:
    out, res = rule.fwd(*primals, **dict(layout.static))
    leaves = jax.tree.leaves(res)
    arrays = [jnp.asarray(v) for v, s in zip(leaves, layout.res_static, strict=True) if s == _ARRAY]
    return [*jax.tree.leaves(out), *arrays]


def _jvp_flat(rule: Rule, layout: _Layout, res: Any, tangents: Any) -> list:
    full = [None] * len(layout.primals)
    for i, t in zip(layout.diff, tangents, strict=True):
        full[i] = t
    out = rule.jvp(_residuals(layout, res), *full, **dict(layout.static))
    leaves = jax.tree.leaves(out)
    return _check_leaves(rule.name, "jvp's output", leaves, layout.outs)


def _bwd_flat(rule: Rule, layout: _Layout, res: Any, cts: Any) -> list:
    dout = jax.tree.unflatten(layout.out_tree, list(cts))
    got = rule.bwd(_residuals(layout, res), dout, **dict(layout.static))
    if not isinstance(got, tuple) or len(got) != len(layout.primals):
        raise TypeError(
            f"as_primitive({rule.name!r}): bwd must return a tuple of {len(layout.primals)} "
            f"cotangent(s), one per primal"
        )
    cts_out = [
        jnp.zeros(layout.primals[i].shape, layout.primals[i].dtype) if got[i] is None else got[i]
        for i in layout.diff
    ]
    return _check_leaves(
        rule.name, "bwd's output", cts_out, tuple(layout.primals[i] for i in layout.diff)
    )


def _vmapped(f: Callable, batch: tuple) -> Callable:
    """f vmapped over each leading batch axis, every argument batched at 0."""
    for _ in batch:
        f = jax.vmap(f)
    return f


def _batched(aval: Any, batch: tuple) -> Any:
    return aval.update(shape=(*batch, *aval.shape))


class _Primitives(NamedTuple):
    fwd: Primitive
    jvp: Primitive
    bwd: Primitive


def _split(args: Any, *sizes: int) -> list:
    out, start = [], 0
    for n in sizes:
        out.append(list(args[start : start + n]))
        start += n
    out.append(list(args[start:]))
    return out


@functools.cache
def _primitives(rule: Rule) -> _Primitives:
    """The three primitives of ``rule`` and their rules (one set per rule)."""
    fwd_p, jvp_p, bwd_p = (Primitive(rule.name + s) for s in ("", "_jvp", "_bwd"))
    for p in (fwd_p, jvp_p, bwd_p):
        p.multiple_results = True

    # The functions of flat arguments (res, primals, linear inputs) for a batch of examples.
    def fwd_fn(*args, layout, batch):
        return _vmapped(functools.partial(_fwd_flat, rule, layout), batch)(*args)

    def with_primals(kernel, layout, batch):
        def one(*args):
            res, _, lin = _split(args, len(layout.res), len(layout.primals))
            return kernel(rule, layout, res, lin)

        return _vmapped(one, batch)

    def jvp_fn(*args, layout, batch):
        return with_primals(_jvp_flat, layout, batch)(*args)

    def bwd_fn(*args, layout, batch):
        return with_primals(_bwd_flat, layout, batch)(*args)

    def from_primals(kernel, layout, batch, primals, lin):
        """kernel(fwd(primals)'s residuals, lin) as a function of the differentiable primals."""

        def one(diff_primals, primals, lin):
            full = list(primals)
            for i, v in zip(layout.diff, diff_primals, strict=True):
                full[i] = v
            res = _fwd_flat(rule, layout, *full)[len(layout.outs) :]
            return kernel(rule, layout, res, lin)

        f = _vmapped(one, batch)
        return lambda diff_primals: f(diff_primals, primals, lin)

    # Abstract evaluation.
    fwd_p.def_abstract_eval(
        lambda *a, layout, batch: [_batched(v, batch) for v in (*layout.outs, *layout.res)]
    )
    jvp_p.def_abstract_eval(
        lambda *a, layout, batch: [_batched(v.to_tangent_aval(), batch) for v in layout.outs]
    )
    bwd_p.def_abstract_eval(
        lambda *a, layout, batch: [_batched(layout.primals[i], batch) for i in layout.diff]
    )

    for p, fn in ((fwd_p, fwd_fn), (jvp_p, jvp_fn), (bwd_p, bwd_fn)):
        p.def_impl(fn)
        mlir.register_lowering(p, mlir.lower_fun(fn, multiple_results=True))

        def batcher(args, dims, *, layout, batch, p=p):
            size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
            args = [batching.bdim_at_front(a, d, size) for a, d in zip(args, dims, strict=True)]
            outs = p.bind(*args, layout=layout, batch=(size, *batch))
            return outs, [0] * len(outs)

        batching.primitive_batchers[p] = batcher

    # Forward mode: the forward's tangent is the handwritten jvp. The residuals' tangents are
    # symbolic zeros: the linear primitives read the primals' tangents instead (below).
    def fwd_jvp(primals, tangents, *, layout, batch):
        outs = fwd_p.bind(*primals, layout=layout, batch=batch)
        n_out = len(layout.outs)
        res_zero = [ad.Zero(v.aval.to_tangent_aval()) for v in outs[n_out:]]
        if all(type(tangents[i]) is ad.Zero for i in layout.diff):
            return outs, [ad.Zero(v.aval.to_tangent_aval()) for v in outs[:n_out]] + res_zero
        ts = [ad.instantiate_zeros(tangents[i]) for i in layout.diff]
        t_out = jvp_p.bind(*outs[n_out:], *primals, *ts, layout=layout, batch=batch)
        return outs, [*t_out, *res_zero]

    def linear_jvp(p, kernel):
        """Forward mode of a linear primitive: itself on the linear inputs' tangents, plus
        JAX's derivative of ``kernel(fwd(primals)'s residuals, lin)`` along the primals'."""

        def rule_(args, dots, *, layout, batch):
            n_res, n_p = len(layout.res), len(layout.primals)
            res, primals, lin = _split(args, n_res, n_p)
            _, p_dots, lin_dots = _split(dots, n_res, n_p)
            outs = p.bind(*args, layout=layout, batch=batch)
            tan = [ad.Zero(v.aval.to_tangent_aval()) for v in outs]
            if any(type(d) is not ad.Zero for d in lin_dots):
                lin_dots = [ad.instantiate_zeros(d) for d in lin_dots]
                tan = p.bind(*res, *primals, *lin_dots, layout=layout, batch=batch)
            if any(type(p_dots[i]) is not ad.Zero for i in layout.diff):
                f = from_primals(kernel, layout, batch, primals, lin)
                diff_primals = [primals[i] for i in layout.diff]
                diff_dots = [ad.instantiate_zeros(p_dots[i]) for i in layout.diff]
                _, extra = jax.jvp(f, (diff_primals,), (diff_dots,))
                tan = [ad.add_tangents(a, b) for a, b in zip(tan, extra, strict=True)]
            return outs, tan

        return rule_

    ad.primitive_jvps[fwd_p] = fwd_jvp
    ad.primitive_jvps[jvp_p] = linear_jvp(jvp_p, _jvp_flat)
    ad.primitive_jvps[bwd_p] = linear_jvp(bwd_p, _bwd_flat)

    # Reverse mode: the jvp's transpose is the handwritten bwd, and the bwd's is the jvp.
    def transpose(other, lin_avals):
        def rule_(cts, *args, layout, batch):
            n_fixed = len(layout.res) + len(layout.primals)
            fixed, lin = args[:n_fixed], args[n_fixed:]
            if any(ad.is_undefined_primal(a) for a in fixed):
                raise NotImplementedError(
                    f"as_primitive({rule.name!r}): the residuals and primals of a linear "
                    "primitive are not linear inputs"
                )
            avals = [_batched(v, batch) for v in lin_avals(layout)]
            if all(type(c) is ad.Zero for c in cts):
                got = [ad.Zero(v.to_tangent_aval()) for v in avals]
            else:
                cts = [ad.instantiate_zeros(c) for c in cts]
                got = other().bind(*fixed, *cts, layout=layout, batch=batch)
            return [None] * n_fixed + [
                g if ad.is_undefined_primal(a) else None for a, g in zip(lin, got, strict=True)
            ]

        return rule_

    ad.primitive_transposes[jvp_p] = transpose(lambda: bwd_p, lambda lay: lay.outs)
    ad.primitive_transposes[bwd_p] = transpose(
        lambda: jvp_p, lambda lay: tuple(lay.primals[i] for i in lay.diff)
    )
    return _Primitives(fwd_p, jvp_p, bwd_p)


@functools.lru_cache(maxsize=1024)
def _layout(rule: Rule, static: tuple, avals: tuple) -> _Layout:
    """Trace ``rule.fwd`` on abstract primals: output and residual structure, static leaves."""
    found: dict[str, Any] = {}

    def trace(*primals):
        out, res = rule.fwd(*primals, **dict(static))
        leaves, found["res_tree"] = jax.tree.flatten(res)
        found["res_static"] = tuple(v if _is_static_leaf(v) else _ARRAY for v in leaves)
        outs, found["out_tree"] = jax.tree.flatten(out)
        return outs, [jnp.asarray(v) for v in leaves if not _is_static_leaf(v)]

    outs, res = jax.eval_shape(trace, *(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals))
    diff = tuple(i for i, a in enumerate(avals) if jnp.issubdtype(a.dtype, jnp.inexact))
    for i, o in enumerate(outs):
        if not jnp.issubdtype(o.dtype, jnp.inexact):
            raise TypeError(
                f"as_primitive({rule.name!r}): output leaf {i} has the dtype {o.dtype}; "
                "every output must be floating"
            )
    shaped = lambda s: jax.core.ShapedArray(s.shape, s.dtype)  # noqa: E731
    return _Layout(
        static,
        avals,
        diff,
        found["out_tree"],
        tuple(map(shaped, outs)),
        found["res_tree"],
        found["res_static"],
        tuple(map(shaped, res)),
    )


def as_primitive(rule: Rule | str, **static: Any) -> Callable[..., Any]:
    """``f(*primals) = rule.fwd(*primals, **static)[0]`` as JAX primitives whose forward mode
    is ``rule.jvp`` and whose reverse mode is ``rule.bwd``.

    ``jax.jvp``, ``jax.linearize``, ``jax.jacfwd``, ``jax.jacrev``, ``jax.grad``,
    ``jax.hessian``, ``jax.vmap``, ``lax.scan`` and ``jax.jit`` of any program calling ``f``
    then run the handwritten rules: the tangent of ``f``'s output along t is
    ``rule.jvp(residuals, *t)``, and the cotangent of its primals for ``dout`` is
    ``rule.bwd(residuals, dout)`` — the transpose of the jvp. Second derivatives (forward over
    reverse, reverse over reverse, ``jax.hessian``) differentiate the handwritten jvp and bwd
    in the residuals with JAX.

    Contract:

    * ``rule`` is a :class:`~manual_bp.Rule` with a ``jvp`` (or the name of a registered one).
    * ``static`` keywords are bound now and handed to ``fwd``, ``jvp`` and ``bwd``; they are
      parameters of the primitives, so they must be hashable (tuples, not lists).
    * Primals of a floating dtype are differentiable; the others (integer labels, keys) get
      ``None`` in the jvp's tangents, and no cotangent (JAX's ``float0`` zero).
    * Symbolic zero tangents or cotangents are instantiated as zeros before the handwritten
      code sees them; where all of them are zero it does not run.
    * Residual leaves that are Python scalars (a shape) stay static; array leaves are outputs
      of the forward primitive.

    Example::

        tanh = as_primitive("tanh")
        y, ty = jax.jvp(tanh, (x,), (t,))        # the handwritten jvp
        g = jax.grad(lambda x: tanh(x).sum())(x)  # the handwritten bwd
        h = jax.hessian(lambda x: tanh(x).sum())(x)

    Raises:
      TypeError: if the rule has no ``jvp`` (use :func:`~manual_bp.as_custom_vjp`, reverse
        mode only), a static keyword is not hashable, or a primal is not an array or a number.
      ValueError: if ``rule`` is a name that is not registered.
    """
    rule = prefix_errors("as_primitive", lambda: get_rule(rule))
    if rule.jvp is None:
        raise TypeError(
            f"as_primitive({rule.name!r}): the rule has no jvp, so it has no forward mode; "
            "register one (register(name, fwd, bwd, jvp)), or use manual_bp.as_custom_vjp "
            "for reverse mode only"
        )
    bound = tuple(sorted(static.items()))
    try:
        hash(bound)
    except TypeError:
        raise TypeError(
            f"as_primitive({rule.name!r}): static keywords must be hashable (tuples, not "
            f"lists or dicts), got {dict(bound)!r}"
        ) from None
    prims = _primitives(rule)

    def primitive(*primals: Any) -> Any:
        arrays = []
        for i, p in enumerate(primals):
            if not hasattr(p, "dtype") and not isinstance(p, bool | int | float | complex):
                raise TypeError(
                    f"as_primitive({rule.name!r}): primal {i} must be an array or a number, "
                    f"got {type(p).__name__}"
                )
            arrays.append(jnp.asarray(p))
        avals = tuple(jax.core.ShapedArray(a.shape, a.dtype) for a in arrays)
        layout = _layout(rule, bound, avals)
        outs = prims.fwd.bind(*arrays, layout=layout, batch=())
        return jax.tree.unflatten(layout.out_tree, outs[: len(layout.outs)])

    settings = ", ".join(f"{k}={v!r}" for k, v in bound)
    primitive.__name__ = rule.name
    primitive.__qualname__ = f"as_primitive({rule.name!r}{', ' + settings if settings else ''})"
    primitive.__doc__ = (
        f"``{rule.name}`` ({settings or 'no static keywords'}) as JAX primitives: forward mode "
        f"by its handwritten jvp, reverse mode by its handwritten bwd.\n\n{rule.fwd.__doc__ or ''}"
    )
    primitive.rule = rule  # type: ignore[attr-defined]
    primitive.static = dict(bound)  # type: ignore[attr-defined]
    return primitive

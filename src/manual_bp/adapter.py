"""Use a handwritten rule inside any JAX program: ``jax.grad`` then runs its backward.

:func:`as_custom_vjp` wraps a :class:`~manual_bp.Rule` in :func:`jax.custom_vjp`, so a model
written in plain JAX can call ``dense``, ``tanh`` or ``softmax_cross_entropy`` and still be
differentiated with ``jax.grad`` / ``jax.vjp`` — the gradient then comes from the rule's
``bwd``, not from JAX's own derivative of ``fwd``.

It is reverse mode only: ``jax.custom_vjp`` forbids ``jax.jvp``, ``jax.jacfwd`` and
``jax.linearize`` of the function itself. For forward mode, and for rules run as JAX
primitives under every transformation, use :func:`manual_bp.as_primitive`
(:mod:`manual_bp.primitive`), which takes a rule with a ``jvp``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp

from ._checks import prefix_errors
from .rules import Rule, get_rule

__all__ = ["as_custom_vjp"]

# One custom_vjp per distinct list of primal types (shapes and dtypes) per adapted rule.
_CACHE_SIZE = 256


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "ndim")


def _as_arrays(xs: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(x if _is_array(x) else jnp.asarray(x) for x in xs)


def _is_float(dtype: Any) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.inexact))


def _check_cotangents(name: str, cts: Any, avals: tuple[Any, ...]) -> tuple[Any, ...]:
    """The rule's ``bwd`` output, checked against the primals' types (runs at trace time).

    Returns it unchanged: a ``None`` entry means a zero cotangent, which JAX accepts for any
    primal (a float zero of the primal's dtype, or ``float0`` for an integer or bool primal).
    """
    n = len(avals)
    if not isinstance(cts, tuple):
        raise TypeError(
            f"as_custom_vjp({name!r}): bwd must return a tuple of {n} cotangent(s), one per "
            f"primal, got a {type(cts).__name__}"
        )
    if len(cts) != n:
        raise TypeError(
            f"as_custom_vjp({name!r}): bwd returned {len(cts)} cotangent(s) for {n} primal(s); "
            f"it must return exactly one per primal (None for a non-differentiable one)"
        )
    for i, (ct, aval) in enumerate(zip(cts, avals, strict=True)):
        if ct is None:
            continue
        if not _is_array(ct):
            raise TypeError(
                f"as_custom_vjp({name!r}): cotangent {i} must be an array or None, "
                f"got {type(ct).__name__}"
            )
        if ct.dtype == jax.dtypes.float0 and not _is_float(aval.dtype):
            continue
        if not _is_float(aval.dtype):
            raise TypeError(
                f"as_custom_vjp({name!r}): primal {i} has the non-differentiable dtype "
                f"{aval.dtype}; its cotangent must be None, got dtype {ct.dtype}"
            )
        if ct.dtype != aval.dtype:
            raise TypeError(
                f"as_custom_vjp({name!r}): cotangent {i} has dtype {ct.dtype}, but primal {i} "
                f"has dtype {aval.dtype}"
            )
        if tuple(ct.shape) != tuple(aval.shape):
            raise ValueError(
                f"as_custom_vjp({name!r}): cotangent {i} has shape {tuple(ct.shape)}, but "
                f"primal {i} has shape {tuple(aval.shape)}"
            )
    return cts


def _build(rule: Rule, static: Mapping[str, Any], avals: tuple[Any, ...]) -> Callable[..., Any]:
    """The ``jax.custom_vjp`` function of ``rule`` for primals of types ``avals``."""

    def primal(*primals: Any) -> Any:
        return rule.fwd(*_as_arrays(primals), **static)[0]

    primal.__name__ = primal.__qualname__ = rule.name
    primal.__doc__ = rule.fwd.__doc__

    def fwd(*primals: Any) -> tuple[Any, Any]:
        # Outside jit, JAX may hand fwd a scalar primal as a plain Python number.
        return rule.fwd(*_as_arrays(primals), **static)

    def bwd(residuals: Any, dout: Any) -> tuple[Any, ...]:
        return _check_cotangents(rule.name, rule.bwd(residuals, dout, **static), avals)

    fn = jax.custom_vjp(primal)
    fn.defvjp(fwd, bwd)
    return fn


def as_custom_vjp(rule: Rule | str, **static: Any) -> Callable[..., Any]:
    """``f(*primals) = rule.fwd(*primals, **static)[0]``, differentiated by ``rule.bwd``.

    The result is an ordinary function built on :func:`jax.custom_vjp`: call it anywhere in a
    JAX program, and ``jax.grad`` / ``jax.vjp`` of that program run the handwritten backward
    for this op. It works under ``jax.jit``, ``jax.vmap`` (per-example gradients) and
    ``lax.scan``.

    Contract:

    * ``rule`` is a :class:`~manual_bp.Rule` or the name of a registered one.
    * ``static`` keywords (``axis``, ``negative_slope``, ...) are bound now, in a closure, and
      handed to both ``fwd`` and ``bwd``; they are never traced.
    * ``rule.bwd`` must return a tuple of one cotangent per primal. ``None`` is a zero
      cotangent: for an integer or bool primal (labels, masks) JAX turns it into a ``float0``
      zero, for a float primal into zeros of its dtype. A cotangent that is not ``None`` must
      have its primal's shape and dtype. These checks run when the backward is traced, and
      fail with a ``TypeError`` (wrong count, wrong kind or dtype) or ``ValueError`` (wrong
      shape) naming the rule.
    * Second order: the backward is itself JAX code, so reverse-over-reverse works —
      ``jax.grad(lambda x: jnp.vdot(jax.grad(loss)(x), v))`` is a Hessian-vector product — and
      so does forward-over-reverse (``jax.jvp`` of ``jax.grad(loss)``, ``jax.hessian``),
      because the inner reverse pass has already replaced ``f`` by ``fwd`` and ``bwd``.
    * Forward mode applied to ``f`` itself (``jax.jvp(f, ...)``, ``jax.jacfwd(f)``) is not
      supported by ``jax.custom_vjp`` and raises ``TypeError``: this adapter is reverse-only.
      For forward mode use :func:`manual_bp.as_primitive` (a rule with a ``jvp``); here, take
      derivatives in reverse mode, or the reverse-over-reverse form above for second order.

    Example::

        dense = as_custom_vjp("dense")
        tanh = as_custom_vjp("tanh")
        xent = as_custom_vjp("softmax_cross_entropy")

        def loss(params, x, labels):
            h = tanh(dense(x, params["w1"], params["b1"]))
            return xent(dense(h, params["w2"], params["b2"]), labels)

        grads = jax.jit(jax.grad(loss))(params, x, labels)  # runs the handwritten backward

    Raises:
      ValueError: if ``rule`` is a name that is not registered.
      TypeError: if ``rule`` is neither a Rule nor a str.
    """
    rule = prefix_errors("as_custom_vjp", lambda: get_rule(rule))
    bound = MappingProxyType(dict(static))

    @functools.lru_cache(maxsize=_CACHE_SIZE)
    def for_types(avals: tuple[Any, ...]) -> Callable[..., Any]:
        return _build(rule, bound, avals)

    def adapted(*primals: Any) -> Any:
        for i, p in enumerate(primals):
            if not _is_array(p) and not isinstance(p, bool | int | float | complex):
                raise TypeError(
                    f"as_custom_vjp({rule.name!r}): primal {i} must be an array or a number, "
                    f"got {type(p).__name__}"
                )
        primals = _as_arrays(primals)
        return for_types(tuple(jax.typeof(p) for p in primals))(*primals)

    settings = ", ".join(f"{k}={v!r}" for k, v in bound.items())
    adapted.__name__ = rule.name
    adapted.__qualname__ = f"as_custom_vjp({rule.name!r}{', ' + settings if settings else ''})"
    adapted.__doc__ = (
        f"``{rule.name}`` ({settings or 'no static keywords'}), differentiated by its "
        f"handwritten backward through jax.custom_vjp.\n\n{rule.fwd.__doc__ or ''}"
    )
    adapted.rule = rule  # type: ignore[attr-defined]
    adapted.static = bound  # type: ignore[attr-defined]
    return adapted

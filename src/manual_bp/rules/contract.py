"""The rule contract and the one registry every rule is entered into beside its definition.

A rule follows JAX's custom-VJP contract, with the same static keywords handed to both halves:

* ``fwd(*primals, **static) -> (out, residuals)``
* ``jvp(residuals, *tangents, **static) -> tangent_out``, linear in the tangents (forward
  mode): the directional derivative of ``out`` along the tangents. A non-differentiable primal
  (labels, keys, masks) takes no tangent, as it takes no cotangent: ``None`` is passed in its
  place.
* ``bwd(residuals, dout, **static) -> tuple`` with one cotangent per primal, ``None`` for a
  primal that is not differentiable (integer labels). ``bwd`` is the transpose of ``jvp``:
  ⟨jvp(t), c⟩ = ⟨t, bwd(c)⟩ for every t and c.

``residuals`` hold only what the backward needs (sigmoid keeps its output, not its input).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["RULES", "Rule", "get_rule", "register"]


class Rule(NamedTuple):
    """A forward function and its handwritten backward, referred to by name.

    Attributes:
      name: the key of the rule in :data:`RULES`.
      fwd: ``fwd(*primals, **static) -> (out, residuals)``.
      bwd: ``bwd(residuals, dout, **static) -> tuple`` of one cotangent per primal
        (``None`` for non-differentiable primals).
      jvp: ``jvp(residuals, *tangents, **static) -> tangent_out``, linear in the tangents
        (``None`` passed for non-differentiable primals); ``bwd`` is its transpose. ``None``
        for a reverse-only rule (a user's rule may be one; every registered rule has one).
    """

    name: str
    fwd: Callable[..., tuple[Any, Any]]
    bwd: Callable[..., tuple[Any, ...]]
    jvp: Callable[..., Any] | None = None

    def __call__(self, *primals: Any, **static: Any) -> Any:
        """The forward value alone: ``rule(*primals, **static) == rule.fwd(...)[0]``."""
        return self.fwd(*primals, **static)[0]


RULES: dict[str, Rule] = {}
"""Every registered rule, by name. Filled by :func:`register` beside each definition."""


def register(
    name: str,
    fwd: Callable[..., Any],
    bwd: Callable[..., Any],
    jvp: Callable[..., Any] | None = None,
) -> Rule:
    """Enter ``Rule(name, fwd, bwd, jvp)`` into :data:`RULES` and return it.

    Raises:
      ValueError: if ``name`` is already registered to a different rule.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"register: rule name must be a non-empty str, got {name!r}")
    if not callable(fwd) or not callable(bwd):
        raise TypeError(f"register({name!r}): fwd and bwd must be callable")
    if jvp is not None and not callable(jvp):
        raise TypeError(f"register({name!r}): jvp must be callable or None")
    existing = RULES.get(name)
    if existing is not None and (
        existing.fwd is not fwd or existing.bwd is not bwd or existing.jvp is not jvp
    ):
        raise ValueError(f"register: a rule named {name!r} is already registered")
    rule = Rule(name, fwd, bwd, jvp)
    RULES[name] = rule
    return rule


def get_rule(rule: Rule | str) -> Rule:
    """Return ``rule`` itself, or the registered rule of that name."""
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, str):
        try:
            return RULES[rule]
        except KeyError:
            known = ", ".join(sorted(RULES))
            raise ValueError(f"unknown rule {rule!r}; registered rules: {known}") from None
    raise TypeError(f"expected a manual_bp.Rule or a rule name, got {type(rule).__name__}")

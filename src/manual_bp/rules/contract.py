"""The rule contract and the one registry every rule is entered into beside its definition.

A rule follows JAX's custom-VJP contract, with the same static keywords handed to both halves:

* ``fwd(*primals, **static) -> (out, residuals)``
* ``bwd(residuals, dout, **static) -> tuple`` with one cotangent per primal, ``None`` for a
  primal that is not differentiable (integer labels).

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
    """

    name: str
    fwd: Callable[..., tuple[Any, Any]]
    bwd: Callable[..., tuple[Any, ...]]

    def __call__(self, *primals: Any, **static: Any) -> Any:
        """The forward value alone: ``rule(*primals, **static) == rule.fwd(...)[0]``."""
        return self.fwd(*primals, **static)[0]


RULES: dict[str, Rule] = {}
"""Every registered rule, by name. Filled by :func:`register` beside each definition."""


def register(name: str, fwd: Callable[..., Any], bwd: Callable[..., Any]) -> Rule:
    """Enter ``Rule(name, fwd, bwd)`` into :data:`RULES` and return it.

    Raises:
      ValueError: if ``name`` is already registered to a different rule.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"register: rule name must be a non-empty str, got {name!r}")
    if not callable(fwd) or not callable(bwd):
        raise TypeError(f"register({name!r}): fwd and bwd must be callable")
    existing = RULES.get(name)
    if existing is not None and (existing.fwd is not fwd or existing.bwd is not bwd):
        raise ValueError(f"register: a rule named {name!r} is already registered")
    rule = Rule(name, fwd, bwd)
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

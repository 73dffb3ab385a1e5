"""pytest helpers: every check of ``manual-bp verify`` on a table of rules of your own.

A module of yours exposes ``ROWS`` (a tuple of :class:`~manual_bp.verify.table.Row`) and
``RULES`` (a dict of :class:`~manual_bp.Rule` by name; without it, the registered rules its
rows name). Then, in your test suite::

    import pytest
    from manual_bp.testing import cases, check

    @pytest.mark.parametrize("case", cases("mypkg.rules"), ids=str)
    def test_my_rules(case):
        check(case)

runs one test per row × dtype × shape × input domain, each the check ``manual-bp verify``
makes (:func:`~manual_bp.verify.audit.check_case`: ``jax.vjp`` of the rule's forward with
random cotangents, float64 finite differences, |x| ≈ 1e3 inputs), and fails with the report
and its diagnosis. A rule of ``RULES`` without a row fails at collection.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from .rules import Rule
from .verify.audit import check_case, load_module, load_rules, row_cases, rules_of
from .verify.rule import RuleReport
from .verify.table import Row

__all__ = ["Case", "cases", "check"]


class Case(NamedTuple):
    """One case of a table: a row's rule at one dtype, shape and input domain; ``str(case)``
    is its test id (``swish_beta-float32-(4, 5)-extreme``)."""

    row: Row
    rule: Rule
    dtype: Any
    shape: Any
    domain: str

    def __str__(self) -> str:
        return f"{self.row.id}-{np.dtype(self.dtype).name}-{self.shape}-{self.domain}"


def cases(
    table: str | os.PathLike[str] | ModuleType | Sequence[Row],
    rules: Mapping[str, Rule] | None = None,
    *,
    shapes: int | None = None,
) -> list[Case]:
    """Every row × dtype × shape (the first ``shapes`` of each row; ``None``: all) × input
    domain of ``table``: a module (or its importable name, or a ``.py`` file) with ``ROWS``
    and ``RULES``, or a sequence of rows with ``rules`` (default: the registered ones).

    Raises:
      ValueError: if a row names a rule that is nowhere, or a rule of ``RULES`` has no row.
    """
    if isinstance(table, str | os.PathLike | ModuleType):
        if rules is not None:
            raise TypeError("cases: rules come from the module's RULES; pass rows to give them")
        module = load_module(table)
        rows, lookup = load_rules(module)
        given = set(getattr(module, "RULES", None) or ())
    else:
        lookup = rules_of(table, rules, "cases")
        rows, given = tuple(table), set(rules or ())
    if shapes is not None and (
        isinstance(shapes, bool) or not isinstance(shapes, int) or shapes < 1
    ):
        raise ValueError(f"cases: shapes must be a positive int or None (all), got {shapes!r}")
    unchecked = sorted(given - {r.rule for r in rows})
    if unchecked:
        raise ValueError(f"cases: rule(s) {unchecked} have no row, so they are never checked")
    return [
        Case(row, lookup[row.rule], dtype, shape, domain)
        for row in rows
        for dtype, shape, domain in row_cases(row, shapes)
    ]


def check(case: Case) -> RuleReport:
    """Check one case as ``manual-bp verify`` does; AssertionError with the report (and its
    diagnosis) when it fails, else the report."""
    if not isinstance(case, Case):
        raise TypeError(f"check: case must be a manual_bp.testing.Case, got {type(case).__name__}")
    report = check_case(case.row, case.rule, case.shape, case.dtype, case.domain)
    if not report.ok:
        raise AssertionError(f"{case}\n{report}")
    return report

"""No rule can be registered without a row in the verification table."""

from manual_bp import RULES, Rule
from rule_table import ALL_DTYPES, ROWS


def test_every_registered_rule_has_a_row():
    covered = {row.rule for row in ROWS}
    missing = sorted(set(RULES) - covered)
    assert not missing, f"rules registered without a row in tests/rule_table.py: {missing}"


def test_every_row_names_a_registered_rule():
    unknown = sorted({row.rule for row in ROWS} - set(RULES))
    assert not unknown, f"table rows for rules that are not registered: {unknown}"


def test_every_rule_is_checked_in_every_dtype():
    for name in RULES:
        dtypes = {d for row in ROWS if row.rule == name for d in row.dtypes}
        assert dtypes == set(ALL_DTYPES), f"{name}: checked only in {dtypes}"


def test_row_ids_are_unique():
    ids = [row.id for row in ROWS]
    assert len(ids) == len(set(ids))


def test_registry_holds_rules_with_docstrings_giving_the_derivative():
    for name, rule in RULES.items():
        assert isinstance(rule, Rule) and rule.name == name
        assert rule.bwd.__doc__ and rule.bwd.__doc__.strip(), f"{name}: bwd has no docstring"
        assert rule.fwd.__doc__ and rule.fwd.__doc__.strip(), f"{name}: fwd has no docstring"


def test_every_registered_rule_has_a_jvp_giving_the_directional_derivative():
    """Forward mode is part of the contract: a registered rule without a jvp fails here (a
    user's reverse-only rule may have none; check_rule then skips its forward checks)."""
    missing = sorted(name for name, rule in RULES.items() if rule.jvp is None)
    assert not missing, f"registered rules without a jvp: {missing}"
    for name, rule in RULES.items():
        assert rule.jvp.__doc__ and rule.jvp.__doc__.strip(), f"{name}: jvp has no docstring"

"""A user's own rule table in their own test suite, with manual_bp.testing: every row × dtype ×
shape × input domain of ``tests/user_rules`` as one test each."""

import pytest

from manual_bp.testing import cases, check


@pytest.mark.parametrize("case", cases("user_rules"), ids=str)
def test_user_rules(case):
    check(case)

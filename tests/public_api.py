"""The public modules, in one place: the bad-input table walks their callables
(``tests/test_bad_input_api.py``), the API pages must document every name of their ``__all__``
(``tests/test_docs.py``) and the installed wheel must import each one (``tests/test_wheel.py``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Every public callable of these modules has a bad-input row.
BAD_INPUT_MODULES = (
    "manual_bp",
    "manual_bp.nn",
    "manual_bp.data",
    "manual_bp.train",
    "manual_bp.train.checkpoint",
    "manual_bp.credit",
    "manual_bp.per_example",
    "manual_bp.parallel",
    "manual_bp.verify.audit",
    "manual_bp.train.report",
    "manual_bp.train.guard",
    "manual_bp.verify",
    "manual_bp.adapter",
    "manual_bp.verify.survey",
    "manual_bp.testing",
    "manual_bp.curvature",
    "manual_bp.forward_grad",
)

# The rest of the documented surface: the rules (their bad inputs are tests/test_bad_input.py's),
# the two passes, the benchmark suite, the command line and the independent reference.
PUBLIC_MODULES = (
    *BAD_INPUT_MODULES,
    "manual_bp.rules",
    "manual_bp.grad",
    "manual_bp.bench",
    "manual_bp.cli",
    "reference",
)


def load(names: tuple[str, ...]) -> tuple[ModuleType, ...]:
    """The modules of ``names``, imported."""
    return tuple(importlib.import_module(name) for name in names)

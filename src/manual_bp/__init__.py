"""manual_bp: handwritten backpropagation in JAX, every rule verified against autodiff.

The lecture in five lines: C(θ) = Σₙ Cⁿ(θ); ∂C/∂w = ∂z/∂w · ∂C/∂z; the forward pass gives
∂z/∂w = a; the backward pass gives ∂C/∂z = σ'(z) Σₖ wₖ ∂C/∂z'ₖ from the output layer back; at
the output layer ∂C/∂z comes from the loss.

The packages follow the data's way (``docs/architecture.md``): :mod:`~manual_bp.rules` (the
primitive operations, forward and backward side by side), :mod:`~manual_bp.nn` (layers and
networks), :mod:`~manual_bp.grad` (the two passes), :mod:`~manual_bp.verify` (every rule and
network against autodiff), the research tools :mod:`~manual_bp.credit` and
:mod:`~manual_bp.per_example`, :mod:`~manual_bp.parallel`, :mod:`~manual_bp.data` and
:mod:`~manual_bp.train` (``fit`` and the ``manual-bp train`` run).
"""

from importlib import metadata as _metadata

from . import credit, nn, parallel, per_example, rules
from .adapter import as_custom_vjp
from .grad import hvp, value_and_grad, value_and_jvp, value_grad_and_deltas
from .primitive import as_primitive
from .rules import RULES, Rule, get_rule, register
from .verify import (
    NetworkReport,
    RuleReport,
    assert_rule_correct,
    check_network,
    check_rule,
)

__all__ = [
    "RULES",
    "NetworkReport",
    "Rule",
    "RuleReport",
    "as_custom_vjp",
    "as_primitive",
    "assert_rule_correct",
    "check_network",
    "check_rule",
    "credit",
    "get_rule",
    "hvp",
    "nn",
    "parallel",
    "per_example",
    "register",
    "rules",
    "value_and_grad",
    "value_and_jvp",
    "value_grad_and_deltas",
]

try:  # one source of truth: the version in pyproject.toml, as installed
    __version__ = _metadata.version("manual_bp")
    """The installed distribution's version (``manual-bp --version``)."""
except _metadata.PackageNotFoundError:  # a source tree imported without being installed
    __version__ = "0+unknown"

"""manual_bp: handwritten backpropagation in JAX, every rule verified against autodiff.

The lecture in five lines: C(θ) = Σₙ Cⁿ(θ); ∂C/∂w = ∂z/∂w · ∂C/∂z; the forward pass gives
∂z/∂w = a; the backward pass gives ∂C/∂z = σ'(z) Σₖ wₖ ∂C/∂z'ₖ from the output layer back; at
the output layer ∂C/∂z comes from the loss.
"""

from . import credit, nn, parallel, per_example, rules
from .adapter import as_custom_vjp
from .grad import value_and_grad, value_grad_and_deltas
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
    "assert_rule_correct",
    "check_network",
    "check_rule",
    "credit",
    "get_rule",
    "nn",
    "parallel",
    "per_example",
    "register",
    "rules",
    "value_and_grad",
    "value_grad_and_deltas",
]

__version__ = "0.1.0"

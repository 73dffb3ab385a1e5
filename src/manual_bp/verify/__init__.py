"""Check handwritten backward rules and whole networks against autodiff, and say what is wrong.

* :mod:`~manual_bp.verify.tolerances` — the one tolerance table and the one comparison;
* :mod:`~manual_bp.verify.rule` — :func:`check_rule`: a rule's ``bwd`` for each differentiable
  primal against ``jax.vjp`` of its own ``fwd``, of the independent reference forward, and float64
  finite differences (kink-aware), with the max absolute, relative and ulp error per comparison;
* :mod:`~manual_bp.verify.diagnosis` — what kind of error a failing cotangent has (a constant
  scale factor, a sign flip, a transposed result, a missing sum over a broadcast axis, an error
  confined to kink points, a precision-only problem);
* :mod:`~manual_bp.verify.network` — :func:`check_network`: every delta and gradient of a network
  against ``jax.grad`` of the reference, naming the first divergent layer and parameter;
* :mod:`~manual_bp.verify.independent` — what stands for each layer on the independent side (the
  reference, a registered or given reference forward, or ``jax.vjp`` of a user layer's own
  forward) and float64 finite differences of the whole network's loss;
* :mod:`~manual_bp.verify.table` and :mod:`~manual_bp.verify.audit` — the audit table
  (:class:`Row`) of every registered rule and the full audit behind ``manual-bp verify``, also
  of a module of the user's own (``--module``).
"""

from .network import LayerCheck, NetworkReport, check_network
from .rule import RuleReport, assert_rule_correct, check_rule
from .table import Row
from .tolerances import MAX_FD_ELEMENTS, TOLERANCE, Comparison, Tolerance, tolerance_for

__all__ = [
    "MAX_FD_ELEMENTS",
    "TOLERANCE",
    "Comparison",
    "LayerCheck",
    "NetworkReport",
    "Row",
    "RuleReport",
    "Tolerance",
    "assert_rule_correct",
    "check_network",
    "check_rule",
    "tolerance_for",
]

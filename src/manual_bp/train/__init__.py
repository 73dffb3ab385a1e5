"""Training: fit, the models by name, the ``manual-bp train`` run, checkpoints and metrics.

* :mod:`~manual_bp.train.loop` — :func:`fit`, the jit-compiled ``lax.scan`` epoch loop of
  forward, handwritten backward and optax update; :mod:`~manual_bp.train.inputs` its checks;
* :mod:`~manual_bp.train.models` — :func:`build_model`: the classifiers of :data:`MODELS`
  with the error sent backward as :data:`FEEDBACK` says;
* :mod:`~manual_bp.train.gradcheck` — :func:`verify_gradients`: one batch's handwritten
  gradients against ``jax.grad`` of the reference;
* :mod:`~manual_bp.train.guard` — the non-finite guard (:class:`~.guard.NonFiniteError`);
* :mod:`~manual_bp.train.checkpoint` and :mod:`~manual_bp.train.report` — checkpoints,
  ``metrics.jsonl``, per-layer norms and plots;
* :mod:`~manual_bp.train.run` and :mod:`~manual_bp.train.interrupt` — the ``manual-bp
  train`` run: resume checks, a checkpoint every epoch, gradient checks, Ctrl-C.
"""

from ..nn import ACTIVATIONS, mlp
from .gradcheck import verify_gradients
from .loop import FitResult, fit
from .models import FEEDBACK, MODELS, build_model

__all__ = [
    "ACTIVATIONS",
    "FEEDBACK",
    "MODELS",
    "FitResult",
    "build_model",
    "fit",
    "mlp",
    "verify_gradients",
]

"""The settings of a ``manual-bp train`` run: what the command line asked for, what a
checkpoint records of it and what ``--resume`` requires to be unchanged, and the optimizer it
names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import optax

from .. import curvature
from ..nn import Layer, by_layer, has_state

__all__ = [
    "CURVATURE_OPTIMIZERS",
    "FORWARD_GRADS",
    "GRADS",
    "OPTIMIZERS",
    "RESUME_KEYS",
    "Settings",
    "SettingsError",
    "curvature_summary",
    "make_optimizer",
    "recorded_config",
]

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "kfac", "diag-ggn")
"""``--optimizer``: plain SGD, SGD with momentum 0.9, Adam, AdamW, and two curvature
preconditioners followed by SGD with momentum 0.9 (:data:`CURVATURE_OPTIMIZERS`)."""

CURVATURE_OPTIMIZERS = ("kfac", "diag-ggn")
"""The ``--optimizer`` choices that precondition the gradient with the GGN of the batch before
SGD with momentum 0.9: K-FAC (:func:`manual_bp.curvature.kfac`, Monte-Carlo factors of the
Dense, Conv2D, recurrent and attention layers) and the diagonal GGN
(:func:`manual_bp.curvature.diag_ggn_preconditioner`, one Monte-Carlo sample, every layer)."""

GRADS = ("manual", "reference", "forward", "forward-activity")
"""``--grad``: the handwritten backward, ``jax.grad`` of the reference network, or a forward
gradient from the handwritten forward mode with no backward pass (weight-perturbed, or
activity-perturbed; :mod:`manual_bp.forward_grad`)."""

FORWARD_GRADS = {"forward": "weight", "forward-activity": "activity"}
"""The ``--grad`` choices that train on a forward gradient, and their estimator
(:data:`manual_bp.forward_grad.ESTIMATORS`)."""

RESUME_KEYS = (
    "model",
    "dataset",
    "hidden",
    "activation",
    "optimizer",
    "lr",
    "weight_decay",
    "clip_norm",
    "batch_size",
    "seed",
    "grad",
    "dropout",
    "batch_norm",
    "feedback",
    "damping",
    "curvature_decay",
    "inverse_every",
)
"""The settings ``--resume`` requires to be those the checkpoint was written with."""


class Settings(NamedTuple):
    """What ``manual-bp train`` was asked to do: one field per command-line option, with the
    defaults that depend on others (``--out``, ``--hidden``) already filled in."""

    model: str
    dataset: str
    hidden: tuple[int, ...]
    activation: str
    dropout: float
    batch_norm: bool
    feedback: str
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    weight_decay: float
    damping: float
    curvature_decay: float
    inverse_every: int
    clip_norm: float
    seed: int
    grad: str
    out: str
    resume: bool
    verify_every: int
    devices: int
    mesh_shape: str | None
    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    debug_nans: bool

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> Settings:
        """The settings among ``options`` (e.g. ``vars()`` of the parsed command line)."""
        missing = [name for name in cls._fields if name not in options]
        if missing:
            raise ValueError(f"Settings.of: options lack {missing}")
        return cls(**{name: options[name] for name in cls._fields})


class SettingsError(ValueError):
    """A setting or a file the run cannot use. The message names the option
    (``argument --resume: ...``); ``usage`` says whether the command's usage belongs with it
    (a setting that does not fit) or the line alone does (a bad file or folder)."""

    def __init__(self, message: str, *, usage: bool) -> None:
        super().__init__(message)
        self.usage = usage


def recorded_config(settings: Settings, dataset: str) -> dict[str, Any]:
    """The settings a checkpoint records (plain JSON), for the dataset named ``dataset``
    (the loaded dataset's name, not the ``--dataset`` spec)."""
    return {
        "model": settings.model,
        "dataset": dataset,
        "hidden": list(settings.hidden),
        "activation": settings.activation,
        "optimizer": settings.optimizer,
        "lr": settings.lr,
        "weight_decay": settings.weight_decay,
        "clip_norm": settings.clip_norm,
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "grad": settings.grad,
        "epochs": settings.epochs,
        "dropout": settings.dropout,
        "batch_norm": settings.batch_norm,
        "feedback": settings.feedback,
        **_curvature_config(settings),
    }


def _curvature_config(settings: Settings) -> dict[str, Any]:
    """The curvature settings of a curvature optimizer; ``None`` for the others (which ignore
    them), as a checkpoint written before they existed reads them."""
    kfac = settings.optimizer == "kfac"
    used = settings.optimizer in CURVATURE_OPTIMIZERS
    return {
        "damping": settings.damping if used else None,
        "curvature_decay": settings.curvature_decay if used else None,
        "inverse_every": settings.inverse_every if kfac else None,
    }


def curvature_summary(settings: Settings) -> str:
    """The curvature settings in the run's opening line ("" for the other optimizers)."""
    if settings.optimizer not in CURVATURE_OPTIMIZERS:
        return ""
    kfac = f" inverse_every={settings.inverse_every}" if settings.optimizer == "kfac" else ""
    return f" damping={settings.damping:g} decay={settings.curvature_decay:g}{kfac}"


def make_optimizer(
    settings: Settings, net: Layer, loss: str, input_shape: tuple[int, ...]
) -> optax.GradientTransformation:
    """The ``--optimizer`` with ``--lr``, after clipping to ``--clip-norm`` if it is set. The
    curvature optimizers precondition the (clipped) gradient with the GGN of ``net`` and
    ``loss`` on the step's batch (``--damping``, ``--curvature-decay``, ``--inverse-every``),
    then apply SGD with momentum 0.9; their update takes the batch, which
    :func:`~manual_bp.train.fit` hands it. ``input_shape`` is one batch's.

    Raises:
      SettingsError: the model cannot be preconditioned this way (it names the model and
        the reason).
    """
    name, lr = settings.optimizer, settings.lr
    if name in CURVATURE_OPTIMIZERS:
        precondition = _preconditioner(settings, net, loss, input_shape)
        opt = optax.chain(precondition, optax.sgd(lr, momentum=0.9))
    elif name == "sgd":
        opt = optax.sgd(lr)
    elif name == "momentum":
        opt = optax.sgd(lr, momentum=0.9)
    elif name == "adamw":
        opt = optax.adamw(lr, weight_decay=settings.weight_decay)
    else:
        opt = optax.adam(lr)
    if settings.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(settings.clip_norm), opt)
    return opt


def _preconditioner(
    settings: Settings, net: Layer, loss: str, input_shape: tuple[int, ...]
) -> optax.GradientTransformation:
    """K-FAC or the diagonal GGN of ``net``; a SettingsError for a model they do not fit."""
    name = settings.optimizer
    refused = None
    if settings.grad not in ("manual", "reference"):
        refused = f"--grad {settings.grad} trains without a backward pass; {name} needs one"
    elif settings.feedback != "backprop":
        refused = f"its curvature is that of backprop, not of --feedback {settings.feedback}"
    elif settings.dropout > 0:
        refused = "the curvature is measured without dropout masks; use --dropout 0"
    elif name == "kfac" and has_state(net):
        refused = (
            "its batch normalization couples the examples, and Kronecker factors need "
            "independent ones; use --no-batch-norm, or --optimizer diag-ggn"
        )
    if refused is None and name == "diag-ggn":
        return curvature.diag_ggn_preconditioner(
            net, loss, damping=settings.damping, decay=settings.curvature_decay
        )
    if refused is None:
        opt = curvature.kfac(
            net,
            loss,
            damping=settings.damping,
            decay=settings.curvature_decay,
            inverse_every=settings.inverse_every,
        )
        uncovered = _uncovered(net, opt, input_shape)
        if not uncovered:
            return opt
        refused = (
            f"K-FAC has no Kronecker factors for the layer(s) {', '.join(uncovered)}, which "
            "would train on the raw gradient; use --optimizer diag-ggn"
        )
    raise SettingsError(
        f"argument --optimizer: {name} does not fit {_model_name(settings)}: {refused}",
        usage=True,
    )


def _model_name(settings: Settings) -> str:
    if settings.model == "cnn":
        return f"the model cnn (LeNet{' with batch norm' if settings.batch_norm else ''})"
    return f"the model {settings.model}"


def _uncovered(
    net: Layer, opt: optax.GradientTransformation, input_shape: tuple[int, ...]
) -> list[str]:
    """The layers with parameters that K-FAC's state has no factors for (by path)."""
    params = jax.eval_shape(lambda: net.init(jax.random.key(0), input_shape))
    factors = jax.eval_shape(opt.init, params).factors
    return [
        path
        for path in by_layer(params)
        if not any(f == path or f.startswith(f"{path}/") for f in factors)
    ]

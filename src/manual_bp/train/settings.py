"""The settings of a ``manual-bp train`` run: what the command line asked for, what a
checkpoint records of it and what ``--resume`` requires to be unchanged, and the optimizer it
names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import optax

__all__ = [
    "FORWARD_GRADS",
    "GRADS",
    "OPTIMIZERS",
    "RESUME_KEYS",
    "Settings",
    "SettingsError",
    "make_optimizer",
    "recorded_config",
]

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
"""``--optimizer``: plain SGD, SGD with momentum 0.9, Adam, AdamW."""

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
    }


def make_optimizer(settings: Settings) -> optax.GradientTransformation:
    """The ``--optimizer`` with ``--lr``, after clipping to ``--clip-norm`` if it is set."""
    name, lr = settings.optimizer, settings.lr
    if name == "sgd":
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

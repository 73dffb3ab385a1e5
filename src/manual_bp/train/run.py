"""The ``manual-bp train`` run, from the command line's settings to its exit code.

:func:`train` checks the output folder and, with ``--resume``, the checkpoint and the settings
it was written with; joins the device mesh; loads the data and builds the model; checks the
first batch's handwritten gradients against ``jax.grad`` of the reference; then runs
:func:`~manual_bp.train.fit`. After every epoch (:class:`EpochLog`) it records the check
batch's per-layer norms (and, with a swapped backward or a forward gradient, the angles to
backprop's update), checks the gradients again every ``--verify-every`` epochs, and writes
``metrics.jsonl`` and ``checkpoint.npz``; a Ctrl-C waits until both are in place. At the end
it draws the plots.

A setting or a file the run cannot use raises :class:`~manual_bp.train.settings.SettingsError`
before anything is written; the command line turns it into exit code 2 and one line.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import reference

from .. import forward_grad
from .._files import remove_temporaries
from ..credit import alignment
from ..data import Dataset, load_dataset
from ..grad import value_and_grad, value_grad_and_deltas
from ..nn import Layer
from ..parallel import cli_mesh
from ..rules import get_rule
from .checkpoint import load_checkpoint, save_checkpoint
from .gradcheck import verify_gradients
from .guard import EXIT_NON_FINITE, NonFiniteError, name_primitive
from .interrupt import EXIT_INTERRUPTED, Interrupts
from .loop import fit
from .models import build_model
from .report import PLOTS, layer_norms, read_metrics, write_metrics, write_plots
from .settings import (
    FORWARD_GRADS,
    RESUME_KEYS,
    Settings,
    SettingsError,
    curvature_summary,
    make_optimizer,
    recorded_config,
)

__all__ = ["LOSS", "CheckBatch", "EpochLog", "Outputs", "Run", "Start", "train"]

LOSS = "softmax_cross_entropy"
"""The loss every model of the run trains with."""


class Outputs(NamedTuple):
    """The run's output folder and the files it keeps there."""

    folder: Path
    checkpoint: Path
    metrics: Path


class Run(NamedTuple):
    """A run ready to train: its settings, outputs, the configuration its checkpoints record,
    the model, the data laid out for it, the optimizer and the device mesh (``None``: one)."""

    settings: Settings
    files: Outputs
    config: dict[str, Any]
    net: Layer
    data: Dataset
    optimizer: optax.GradientTransformation
    mesh: Any


class Start(NamedTuple):
    """Where training starts: epoch 0 of a fresh initialization, or a checkpoint's epoch with
    its parameters, optimizer state (``None``: ``optimizer.init``), network state, shuffling
    key and the metrics records up to it."""

    params: Any
    opt_state: Any
    state: Any
    epoch: int
    key: jax.Array
    records: list[dict[str, Any]]


def _say(text: str, bar: Any = None) -> None:
    if bar is not None and not bar.disable:
        bar.write(text)
    else:
        print(text, flush=True)


def _progress(total: int, done: int) -> Any:
    """A tqdm bar over epochs on stderr (None without tqdm or when stderr is not a terminal)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(
        total=total, initial=done, unit="epoch", leave=False, dynamic_ncols=True, disable=None
    )


def _outputs(settings: Settings) -> Outputs:
    """The output files; ``--out`` must not be a file, and ``--resume`` needs a checkpoint."""
    folder = Path(settings.out)
    if folder.exists() and not folder.is_dir():
        raise SettingsError(f"argument --out: {folder} exists and is not a directory", usage=False)
    files = Outputs(folder, folder / "checkpoint.npz", folder / "metrics.jsonl")
    if settings.resume and not files.checkpoint.is_file():
        raise SettingsError(f"argument --resume: no checkpoint at {files.checkpoint}", usage=False)
    return files


def _mesh(settings: Settings) -> Any:
    """The device mesh; a multi-process run joins its peers here, so this comes before any
    other JAX computation."""
    try:
        return cli_mesh(
            settings.devices,
            settings.mesh_shape,
            settings.batch_size,
            coordinator=settings.coordinator,
            num_processes=settings.num_processes,
            process_id=settings.process_id,
        )
    except ValueError as e:
        raise SettingsError(str(e), usage=False) from None


def _data(settings: Settings) -> Dataset:
    """The dataset, with a training set of at least one batch."""
    try:
        data = load_dataset(settings.dataset, seed=settings.seed)
    except (ImportError, ValueError) as e:
        raise SettingsError(f"argument --dataset: {e}", usage=False) from None
    n_train = len(data.x_train)
    if settings.batch_size > n_train:
        raise SettingsError(
            f"argument --batch-size: {settings.batch_size} is larger than the training set "
            f"({n_train} examples)",
            usage=True,
        )
    return data


def _prepare(settings: Settings) -> Run:
    """Everything the run needs before training, each setting checked in turn."""
    files, mesh, data = _outputs(settings), _mesh(settings), _data(settings)
    config = recorded_config(settings, data.name)
    net, data = build_model(
        settings.model,
        data,
        hidden=settings.hidden,
        activation=settings.activation,
        dropout=settings.dropout,
        batch_norm=settings.batch_norm,
        feedback=settings.feedback,
    )
    optimizer = make_optimizer(settings, net, LOSS, (settings.batch_size, *data.x_train.shape[1:]))
    return Run(settings, files, config, net, data, optimizer, mesh)


def _fresh_start(run: Run) -> Start:
    """Parameters and network state (batch-norm statistics) drawn from ``--seed``."""
    init_key, shuffle_key = jax.random.split(jax.random.key(run.settings.seed))
    batch_shape = (run.settings.batch_size, *run.data.x_train.shape[1:])
    # One compiled program draws every initial weight (eagerly, each random op of each layer
    # would be compiled on its own); the values are the same random draws.
    params = jax.jit(run.net.init, static_argnums=(1, 2))(init_key, batch_shape, jnp.float32)
    state = run.net.init_state(init_key, batch_shape, jnp.float32)
    return Start(params, None, state, 0, shuffle_key, [])


def _resumed_start(run: Run, fresh: Start) -> Start:
    """The checkpoint's start, if it was written with the same settings and not past
    ``--epochs``; the metrics records up to its epoch."""
    try:
        ck = load_checkpoint(
            run.files.checkpoint,
            params_like=fresh.params,
            opt_state_like=run.optimizer.init(fresh.params),
            state_like=fresh.state,
        )
    except ValueError as e:
        raise SettingsError(f"argument --resume: {e}", usage=False) from None
    changed = [k for k in RESUME_KEYS if ck.config.get(k) != run.config[k]]
    if changed:
        raise SettingsError(
            "argument --resume: the checkpoint was written with different settings: "
            + ", ".join(f"{k}={ck.config.get(k)!r} (now {run.config[k]!r})" for k in changed),
            usage=True,
        )
    if ck.epoch > run.settings.epochs:
        raise SettingsError(
            f"argument --epochs: the checkpoint is already at epoch {ck.epoch}", usage=True
        )
    records = [r for r in read_metrics(run.files.metrics) if r["epoch"] <= ck.epoch]
    return Start(ck.params, ck.opt_state, ck.state, ck.epoch, ck.key, records)


def _clear_folder(files: Outputs) -> None:
    """Create the output folder; remove temporary files left by a run killed mid-write."""
    files.folder.mkdir(parents=True, exist_ok=True)
    remove_temporaries(files.folder, (files.checkpoint.name, files.metrics.name, *PLOTS))


def _describe(run: Run, start: Start) -> None:
    """The two lines that open a run: the data, then the model and how it trains."""
    s, data = run.settings, run.data
    n_features = math.prod(data.x_train.shape[1:])
    num_params = sum(leaf.size for leaf in jax.tree.leaves(start.params))
    if s.model == "mlp":
        widths = " -> ".join(str(w) for w in (n_features, *s.hidden, data.num_classes))
        described = f"mlp {widths} ({s.activation}"
    else:
        shape = "x".join(str(v) for v in data.x_train.shape[1:])
        described = f"{s.model} on {shape} inputs (hidden {s.hidden[0]}"
    print(
        f"{data.name}: {len(data.x_train)} train / {len(data.x_test)} test examples, "
        f"{n_features} features, {data.num_classes} classes"
    )
    print(
        f"{described}, {num_params:,} parameters); {s.optimizer} "
        f"lr={s.lr:g}{curvature_summary(s)}, batch {s.batch_size}, {s.epochs} epochs, "
        f"gradients: {s.grad}; output in {run.files.folder}"
        + (f"; resuming after epoch {start.epoch}" if s.resume else "")
    )


class CheckBatch(NamedTuple):
    """The first ``--batch-size`` training examples, with dropout masks from ``--seed``: the
    gradient checks and the per-epoch norms and angles are measured on it. ``backward`` is
    the jitted handwritten gradients and deltas, ``angles`` the jitted
    :func:`~manual_bp.credit.alignment` of a swapped backward, or
    :func:`~manual_bp.forward_grad.alignment` of a forward gradient (``None`` for backprop)."""

    net: Layer
    x: jax.Array
    y: jax.Array
    key: jax.Array
    backward: Any
    angles: Any

    def verify(self, params: Any, state: Any, when: str) -> dict[str, Any]:
        """Compare the handwritten gradients with ``jax.grad``; print the result line."""
        check = verify_gradients(self.net, LOSS, params, self.x, self.y, state=state, key=self.key)
        status = "ok" if check["ok"] else f"FAILED (worst: {check['worst']})"
        _say(
            f"gradient check, {when}, manual vs jax.grad ({check['num_compared']} arrays): "
            f"max abs error {check['max_abs_error']:.2e}, max rel error "
            f"{check['max_rel_error']:.2e} (tolerance {check['tolerance']:.0e}): {status}"
        )
        return check

    def norms(self, params: Any, state: Any) -> dict[str, dict[str, float]]:
        """Per-layer delta and gradient norms from one backward pass."""
        _, grads, deltas = self.backward(params, state, self.x, self.y, self.key)
        return layer_norms(grads, deltas)

    def alignment(self, params: Any, state: Any) -> dict[str, dict[str, float]]:
        """Per-layer angles between the update trained on (a swapped backward's, or a forward
        gradient's) and backprop's."""
        return jax.tree.map(float, self.angles(params, state, self.x, self.y, self.key))


def _check_batch(run: Run) -> CheckBatch:
    s, net = run.settings, run.net
    if s.grad in FORWARD_GRADS:  # the angle of one estimate to the true gradient
        angles = jax.jit(forward_grad.alignment(net, LOSS, FORWARD_GRADS[s.grad]))
    elif s.feedback != "backprop":  # the angle of the swapped backward's update to backprop's
        angles = jax.jit(alignment(net, LOSS))
    else:
        angles = None
    return CheckBatch(
        net,
        jnp.asarray(run.data.x_train[: s.batch_size]),
        jnp.asarray(run.data.y_train[: s.batch_size]),
        jax.random.key(s.seed),
        jax.jit(value_grad_and_deltas(net, LOSS, has_state=True)),
        angles,
    )


class EpochLog:
    """What the run does with each epoch :func:`~manual_bp.train.fit` finishes.

    :meth:`record` (fit's ``callback``) prints the epoch's line; :meth:`end_epoch` (fit's
    ``on_epoch_end``) completes its record with the check batch's norms and angles and any
    gradient check, then writes ``metrics.jsonl`` and the checkpoint while a Ctrl-C waits.
    ``saved`` is the epoch the checkpoint on disk holds; ``failed_checks`` the epochs whose
    gradient check failed.
    """

    def __init__(self, run: Run, batch: CheckBatch, start: Start) -> None:
        self.run = run
        self.batch = batch
        self.key = start.key
        self.records = list(start.records)
        self.saved = start.epoch
        self.failed_checks: list[int] = []
        self.interrupts = Interrupts()
        self.bar = _progress(run.settings.epochs, start.epoch)
        self._latest: dict[str, Any] = {}

    def record(self, r: dict[str, Any]) -> None:
        """Keep fit's record of the epoch and print its line."""
        self._latest = r
        epochs = self.run.settings.epochs
        _say(
            f"epoch {r['epoch']:>{len(str(epochs))}}/{epochs}  train loss {r['train_loss']:.4f}  "
            f"test loss {r['test_loss']:.4f}  test acc {100 * r['test_accuracy']:6.2f}%  "
            f"{r['seconds']:.2f}s",
            self.bar,
        )

    def end_epoch(self, epoch: int, params: Any, opt_state: Any, state: Any) -> None:
        """Measure, check, write, then advance the progress bar."""
        record = dict(self._latest)
        if "norms" not in record:  # --grad reference: no taps; one backward on the check batch
            record["norms"] = self.batch.norms(params, state)
        if self.batch.angles is not None:  # angle to backprop's update on the check batch
            record["alignment"] = self.batch.alignment(params, state)
        self._verify(epoch, record, params, state)
        with self.interrupts.critical():  # Ctrl-C waits for the checkpoint to be in place
            self._write(epoch, record, params, opt_state, state)
        self._advance(record)

    def _verify(self, epoch: int, record: dict[str, Any], params: Any, state: Any) -> None:
        every = self.run.settings.verify_every
        if every and epoch % every == 0:
            check = self.batch.verify(params, state, f"epoch {epoch}")
            record["gradient_check_max_rel_error"] = check["max_rel_error"]
            if not check["ok"]:
                self.failed_checks.append(epoch)

    def _write(
        self, epoch: int, record: dict[str, Any], params: Any, opt_state: Any, state: Any
    ) -> None:
        run = self.run
        steps = epoch * (len(run.data.x_train) // run.settings.batch_size)  # optimizer steps
        self.records.append(record)
        write_metrics(run.files.metrics, self.records)
        save_checkpoint(
            run.files.checkpoint,
            params=params,
            opt_state=opt_state,
            epoch=epoch,
            key=self.key,
            config={**run.config, "step": steps},
            state=state,
        )
        self.saved = epoch

    def _advance(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(
                loss=f"{record['train_loss']:.4f}", acc=f"{100 * record['test_accuracy']:.1f}%"
            )

    def close(self) -> None:
        """Remove the progress bar."""
        if self.bar is not None:
            self.bar.close()


def _non_finite(run: Run, log: EpochLog, error: NonFiniteError) -> int:
    """The diagnosis line (and checkify's, with ``--debug-nans``); exit code 3."""
    kept = (
        f"{run.files.checkpoint} keeps epoch {log.saved}, the last finite one"
        if log.saved
        else "no checkpoint written"
    )
    print(f"manual-bp train: {error}; {kept}", file=sys.stderr)
    if run.settings.debug_nans:
        print(f"manual-bp train: {name_primitive(run.net, get_rule(LOSS), error)}", file=sys.stderr)
    return EXIT_NON_FINITE


def _interrupted(run: Run, log: EpochLog) -> int:
    """The line saying what the checkpoint holds; exit code 130."""
    kept = (
        f"{run.files.checkpoint} holds epoch {log.saved} of {run.settings.epochs}; "
        "continue with --resume"
        if log.saved
        else "no epoch finished, no checkpoint written"
    )
    print(f"manual-bp train: interrupted; {kept}", file=sys.stderr)
    return EXIT_INTERRUPTED


def _fit(run: Run, start: Start, log: EpochLog) -> int | None:
    """Train from ``start`` to ``--epochs``; None when done, else the exit code of a run
    stopped by a non-finite step or a Ctrl-C."""
    manual = run.settings.grad == "manual"
    if run.settings.grad in FORWARD_GRADS:
        grad_fn = forward_grad.as_grad_fn(FORWARD_GRADS[run.settings.grad])
    else:
        grad_fn = value_and_grad if manual else reference.value_and_grad
    try:
        with log.interrupts.installed():
            fit(
                run.net,
                LOSS,
                start.params,
                run.data,
                optimizer=run.optimizer,
                epochs=run.settings.epochs,
                batch_size=run.settings.batch_size,
                key=start.key,
                grad_fn=grad_fn,
                callback=log.record,
                opt_state=start.opt_state,
                start_epoch=start.epoch,
                on_epoch_end=log.end_epoch,
                stop_on_non_finite=True,
                state=start.state,
                taps=manual,  # per-layer norms from the training steps themselves
                mesh=run.mesh,
            )
    except NonFiniteError as e:
        return _non_finite(run, log, e)
    except KeyboardInterrupt:
        return _interrupted(run, log)
    finally:
        log.close()
    return None


def _plots(run: Run, records: list[dict[str, Any]]) -> list[Path]:
    """Draw the plots of ``records`` (none without records or without matplotlib)."""
    if not records:
        return []
    try:
        return write_plots(run.files.folder, records)
    except ImportError:
        print("plots skipped: install matplotlib (pip install 'manual_bp[data]')")
        return []


def _summary(run: Run, log: EpochLog, first: dict[str, Any], began: float, seconds: float) -> None:
    """The closing lines: final accuracy and times, the gradient checks, the files written."""
    files = run.files
    plots = _plots(run, log.records)
    final = log.records[-1] if log.records else None
    if final is not None:
        print(
            f"final test accuracy {100 * final['test_accuracy']:.2f}% "
            f"(test loss {final['test_loss']:.4f}) after {final['epoch']} epochs; "
            f"training {seconds:.1f}s, total {time.perf_counter() - began:.1f}s"
        )
    failed = log.failed_checks
    verification = "ok" if not failed else f"FAILED at epochs {failed}"
    print(
        f"gradient verification: {verification} (first batch max rel error "
        f"{first['max_rel_error']:.1e}); wrote {files.metrics.name}, {files.checkpoint.name}"
        + "".join(f", {p.name}" for p in plots)
        + f" in {files.folder}"
    )


def train(settings: Settings) -> int:
    """Run ``manual-bp train`` with ``settings``; return its exit code: 0, 1 when a gradient
    check fails, 3 when a non-finite step stopped training (the checkpoint keeps the last
    finite epoch), 130 when interrupted by Ctrl-C.

    Raises:
      SettingsError: a setting or file the run cannot use (nothing has been written).
    """
    if not isinstance(settings, Settings):
        raise TypeError(f"train: settings must be a Settings, got {type(settings).__name__}")
    began = time.perf_counter()
    run = _prepare(settings)
    start = _fresh_start(run)
    if settings.resume:
        start = _resumed_start(run, start)
    _clear_folder(run.files)
    _describe(run, start)
    batch = _check_batch(run)
    first = batch.verify(start.params, start.state, "first batch")
    if not first["ok"]:
        print("manual-bp train: the handwritten gradients disagree with jax.grad", file=sys.stderr)
        return 1
    log = EpochLog(run, batch, start)
    training = time.perf_counter()
    stopped = _fit(run, start, log)
    if stopped is not None:
        return stopped
    _summary(run, log, first, began, time.perf_counter() - training)
    return 1 if log.failed_checks else 0

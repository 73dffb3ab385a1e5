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

_OPTIMIZERS = ("sgd", "momentum", "adam")
_GRADS = ("manual", "reference")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _hidden(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive layer widths such as 128 or 128,64, got {text!r}"
        )
    return tuple(int(p) for p in parts)


def _parser() -> argparse.ArgumentParser:
    from .train import ACTIVATIONS

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
        "--hidden",
        type=_hidden,
        default="256",
        metavar="W[,W...]",
        help="hidden layer widths, comma-separated (e.g. 128,64)",
    )
    train.add_argument(
        "--activation",
        choices=tuple(ACTIVATIONS),
        default="relu",
        help="activation after every hidden layer",
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
        help="optax optimizer: plain SGD, SGD with momentum 0.9, or Adam",
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
    verify.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return parser


def _verify(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ._registry import RULES
    from .audit import audit, write_json

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

    results = audit(args.rule, args.dtype, networks=not args.no_networks, progress=line)
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


def _optimizer(name: str, lr: float):
    import optax

    if name == "sgd":
        return optax.sgd(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=0.9)
    return optax.adam(lr)


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import jax
    import jax.numpy as jnp

    import reference

    from .data import load_digits
    from .grad import value_and_grad
    from .train import fit, mlp, verify_gradients

    start = time.perf_counter()
    try:
        data = load_digits(seed=args.seed)
    except ImportError as e:
        print(f"manual-bp train: {e}", file=sys.stderr)
        return 1
    n_train, n_features = data.x_train.shape
    if args.batch_size > n_train:
        parser.error(
            f"argument --batch-size: {args.batch_size} is larger than the training set "
            f"({n_train} examples)"
        )

    net = mlp(args.hidden, data.num_classes, args.activation)
    loss = "softmax_cross_entropy"
    init_key, shuffle_key = jax.random.split(jax.random.key(args.seed))
    params = net.init(init_key, (n_features,), jnp.float32)
    num_params = sum(leaf.size for leaf in jax.tree.leaves(params))
    widths = " -> ".join(str(w) for w in (n_features, *args.hidden, data.num_classes))
    print(
        f"digits: {n_train} train / {len(data.x_test)} test examples, "
        f"{n_features} features, {data.num_classes} classes"
    )
    print(
        f"mlp {widths} ({args.activation}, {num_params:,} parameters); {args.optimizer} "
        f"lr={args.lr:g}, batch {args.batch_size}, {args.epochs} epochs, "
        f"gradients: {args.grad}"
    )

    check = verify_gradients(
        net,
        loss,
        params,
        jnp.asarray(data.x_train[: args.batch_size]),
        jnp.asarray(data.y_train[: args.batch_size]),
    )
    status = "ok" if check["ok"] else f"FAILED (worst: {check['worst']})"
    print(
        f"gradient check, first batch, manual vs jax.grad ({check['num_compared']} arrays): "
        f"max abs error {check['max_abs_error']:.2e}, max rel error "
        f"{check['max_rel_error']:.2e} (tolerance {check['tolerance']:.0e}): {status}"
    )
    if not check["ok"]:
        print("manual-bp train: the handwritten gradients disagree with jax.grad", file=sys.stderr)
        return 1

    grad_fn = value_and_grad if args.grad == "manual" else reference.value_and_grad
    width = len(str(args.epochs))

    def report(r: dict[str, float]) -> None:
        print(
            f"epoch {r['epoch']:>{width}}/{args.epochs}  train loss {r['train_loss']:.4f}  "
            f"test loss {r['test_loss']:.4f}  test acc {100 * r['test_accuracy']:6.2f}%  "
            f"{r['seconds']:.2f}s",
            flush=True,
        )

    train_start = time.perf_counter()
    _, records = fit(
        net,
        loss,
        params,
        data,
        optimizer=_optimizer(args.optimizer, args.lr),
        epochs=args.epochs,
        batch_size=args.batch_size,
        key=shuffle_key,
        grad_fn=grad_fn,
        callback=report,
    )
    train_seconds = time.perf_counter() - train_start
    final = records[-1]
    print(
        f"final test accuracy {100 * final['test_accuracy']:.2f}% "
        f"(test loss {final['test_loss']:.4f}) after {args.epochs} epochs; "
        f"training {train_seconds:.1f}s, total {time.perf_counter() - start:.1f}s"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``manual-bp`` command line; returns the exit code.

    Bad arguments exit with code 2 (``SystemExit``) and a one-line message.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        return _train(args, args.command_parser)
    if args.command == "verify":
        return _verify(args, args.command_parser)
    parser.error(f"unknown command {args.command!r}")  # unreachable: argparse checks choices
    return 2

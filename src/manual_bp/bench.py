"""``manual-bp bench``: the options of the benchmark suite and the hand-off to it.

The suite itself lives in the repository's ``benchmarks/`` folder (``python -m benchmarks``),
beside ``src/``; it is not part of the installed package. ``manual-bp bench`` imports it from
the source checkout this package is installed from (an editable install, ``pip install -e``),
or from the current directory, and reports where to run it from when neither has it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["MODELS", "add_arguments", "load_runner", "run"]

MODELS = ("wide_mlp", "deep_mlp", "tiny_mlp", "cnn", "transformer", "lstm")
"""The benchmarked models, in the order they run."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's options, shared by ``python -m benchmarks`` and ``manual-bp bench``."""
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about a minute)")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny sizes, one repeat (the smoke test's setting)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default benchmarks/results)"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=list(MODELS),
        metavar="NAME",
        help=f"models to run (default all): {', '.join(MODELS)}",
    )
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"), help="parameter dtype"
    )
    parser.add_argument("--repeats", type=_positive_int, default=None, help="interleaved repeats")
    parser.add_argument("--no-torch", dest="torch", action="store_false", help="skip PyTorch")
    parser.add_argument(
        "--no-torch-compile",
        dest="torch_compile",
        action="store_false",
        help="skip torch.compile (on by default in the full run)",
    )
    parser.add_argument(
        "--torch-threads",
        type=_positive_int,
        default=None,
        help="torch.set_num_threads (default: torch's)",
    )
    parser.add_argument("--no-numpy", dest="numpy", action="store_false", help="skip plain numpy")


def _candidates() -> list[Path]:
    here = Path(__file__).resolve()
    return [here.parents[2], Path.cwd()]  # the source checkout (src/manual_bp/..), then cwd


def load_runner() -> ModuleType:
    """``benchmarks.runner`` from the source checkout (or the current directory)."""
    for root in _candidates():
        if (root / "benchmarks" / "runner.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return importlib.import_module("benchmarks.runner")
    raise SystemExit(
        "manual-bp bench: the benchmarks/ folder was not found; it ships with the source "
        "repository, not the wheel: install with `pip install -e .` from a checkout, or run "
        "`python -m benchmarks` from the repository root"
    )


def run(args: argparse.Namespace, invocation: str = "manual-bp bench") -> int:
    """Run the suite with the options of :func:`add_arguments`; returns the exit code."""
    runner = load_runner()
    runner.configure(args, invocation=invocation)
    runner.run(args)
    return 0

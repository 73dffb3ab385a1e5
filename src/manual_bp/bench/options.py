"""The benchmark suite's options: the models it runs and its command-line arguments.

Kept apart from the measuring code so that building ``manual-bp``'s parser imports neither
JAX nor the models.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["DEFAULT_OUT", "MODELS", "add_arguments"]

MODELS = ("wide_mlp", "deep_mlp", "tiny_mlp", "cnn", "transformer", "lstm")
"""The benchmarked models, in the order they run."""

DEFAULT_OUT = Path("runs/bench")
"""Where ``manual-bp bench`` writes its results, relative to the current directory."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser, out: Path = DEFAULT_OUT) -> None:
    """The suite's options, shared by ``manual-bp bench`` and ``python -m benchmarks``;
    ``out`` is the default output folder."""
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about a minute)")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny sizes, one repeat (the smoke test's setting)"
    )
    parser.add_argument("--out", type=Path, default=out, help=f"output folder (default {out})")
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

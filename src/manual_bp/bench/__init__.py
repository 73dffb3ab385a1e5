"""``manual-bp bench``: side-by-side speed and memory benchmarks.

The handwritten backward (manual_bp) against ``jax.grad`` of the reference, PyTorch (eager and
``torch.compile``, when installed: the ``bench`` extra) and plain numpy, measured in one
process. Every timed variant runs a training step — forward, backward and an SGD update — on
the same model, batch size and dtype; see :mod:`manual_bp.bench.runner`.

    manual-bp bench [--quick] [--tiny] [--out DIR] [--models NAME ...] [--dtype bfloat16]

Modules: ``options`` (the models and arguments), ``models`` (the benchmarked networks),
``timing`` (interleaved measurement, the matmul ceiling), ``steps`` (the jitted JAX training
steps, compile time and XLA memory), ``tape`` (what a split forward keeps),
``baselines`` (the PyTorch and numpy twins), ``runner`` (one model, the whole suite) and
``tables`` (the Markdown report).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .options import DEFAULT_OUT, MODELS, add_arguments

__all__ = ["DEFAULT_OUT", "DESCRIPTION", "MODELS", "add_arguments", "main", "run"]

DESCRIPTION = (
    "Side-by-side speed and memory benchmarks: training-step time of the handwritten backward "
    "against jax.grad of the reference, PyTorch and numpy, achieved GFLOP/s against the "
    "measured matmul rate, compile time and memory. Writes results.json and results.md."
)
"""The suite's one-paragraph description, for ``manual-bp bench --help`` and the report."""


def run(args: argparse.Namespace, invocation: str = "manual-bp bench") -> int:
    """Run the suite with the options of :func:`add_arguments`, write ``results.json`` and
    ``results.md`` under ``args.out`` and print the tables; returns the exit code.
    ``invocation`` starts the command recorded in the report."""
    from . import runner  # JAX and the models load only when the suite runs

    runner.configure(args, invocation=invocation)
    runner.run(args)
    return 0


def main(
    argv: Sequence[str] | None = None, prog: str = "manual-bp bench", out: Path = DEFAULT_OUT
) -> int:
    """Parse ``argv`` (``out`` the default output folder) and run the suite as ``prog``."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(parser, out=out)
    return run(parser.parse_args(argv), invocation=prog)

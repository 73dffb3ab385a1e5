"""``python -m benchmarks``: the benchmark suite of :mod:`manual_bp.bench` (``manual-bp bench``),
writing to ``benchmarks/results/`` of this checkout unless ``--out`` says otherwise."""

from pathlib import Path

from manual_bp.bench import main

raise SystemExit(main(prog="python -m benchmarks", out=Path(__file__).resolve().parent / "results"))

"""``python -m benchmarks.curvature``: the cost of each curvature quantity relative to one
gradient (:mod:`manual_bp.bench.curvature`), written to ``benchmarks/results/`` of this checkout
unless ``--out`` says otherwise."""

from pathlib import Path

from manual_bp.bench.curvature import main

if __name__ == "__main__":
    raise SystemExit(main(out=Path(__file__).resolve().parent / "results"))

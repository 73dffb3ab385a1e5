"""``python -m benchmarks.attention_scaling``: attention memory and step time against T
(:mod:`manual_bp.bench.attention`), written to ``benchmarks/results/`` of this checkout unless
``--out`` says otherwise; ``--plot docs/figures`` draws the figures of docs/scaling.md.

    python -m benchmarks.attention_scaling --lengths 64 128 256 512 1024 2048 4096 8192 \\
        --time-up-to 2048 --causal-lengths 512 1024 2048 --plot docs/figures
"""

from pathlib import Path

from manual_bp.bench.attention import main

if __name__ == "__main__":
    raise SystemExit(main(out=Path(__file__).resolve().parent / "results"))

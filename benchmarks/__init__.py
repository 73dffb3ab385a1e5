"""The checkout's benchmark folder: ``python -m benchmarks`` runs :mod:`manual_bp.bench`;
``data_parallel.py`` times a data-parallel step; ``gpu.sh`` runs the suite on a CUDA machine;
``NOTES.md`` records what was measured; ``results/`` holds the latest run."""

"""Side-by-side speed and memory benchmarks (``python -m benchmarks``; see ``runner``)."""

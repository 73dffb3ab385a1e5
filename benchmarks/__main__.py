"""``python -m benchmarks``: run the benchmark suite (see :mod:`benchmarks.runner`)."""

from .runner import main

raise SystemExit(main())

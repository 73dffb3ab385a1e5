#!/usr/bin/env bash
# The benchmark suite on a CUDA machine, in one call: float32, then bfloat16 (each model's
# achieved rate is compared with the matmul rate measured in the same dtype on the same GPU,
# interleaved with its steps). PyTorch and numpy, CPU baselines, are left out here.
#
#   bash benchmarks/gpu.sh [options for python -m benchmarks, e.g. --quick or --models cnn]
#
# Needs jax with CUDA (e.g. `pip install -e . 'jax[cuda12]'`). Writes
# $OUT/results.{json,md} and $OUT/results-bfloat16.{json,md}; OUT defaults to
# benchmarks/results/gpu, PYTHON to python.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${OUT:-benchmarks/results/gpu}"

"$PYTHON" - <<'PY'
import sys

import jax

if jax.default_backend() != "gpu":
    sys.exit(
        f"benchmarks/gpu.sh: JAX sees no GPU (backend {jax.default_backend()!r}, devices "
        f"{jax.devices()}); install jax with CUDA support"
    )
print("devices:", jax.devices())
PY
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
fi

export XLA_PYTHON_CLIENT_PREALLOCATE=false
for dtype in float32 bfloat16; do
  "$PYTHON" -m benchmarks --out "$OUT" --dtype "$dtype" --no-torch --no-numpy "$@"
done
echo "wrote $OUT/results.md and $OUT/results-bfloat16.md"

"""Data-parallel training on a device mesh, with JAX's own sharding machinery.

Training minimizes the mean loss over a batch of B examples,

.. math:: C(θ) = \\frac{1}{B} \\sum_{n=1}^{B} C^n(θ)
          = \\frac{1}{N} \\sum_{d=1}^{N} \\underbrace{\\frac{N}{B}
            \\sum_{n \\in \\text{shard}_d} C^n(θ)}_{C_d(θ)},

so with the batch split into N equal shards, one per device, the gradient is the mean of the
per-shard gradients: ∂C/∂θ = (1/N) Σ_d ∂C_d/∂θ. Parameters, optimizer state and network
state are replicated and only the batch is split, over the mesh's ``"data"`` axis, unless a
``"model"`` axis splits the dense weights too (tensor parallelism).

* :mod:`~manual_bp.parallel.mesh`: the mesh and its axes (:func:`data_parallel_mesh`,
  :func:`parse_mesh_shape`, :func:`cli_mesh`), joining a multi-process run
  (:func:`initialize_distributed`) and the rows each process feeds (:func:`process_rows`);
* :mod:`~manual_bp.parallel.sharding`: where each array lives (:func:`replicate`,
  :func:`shard_batch`, :func:`constrain_batch`, :func:`tensor_parallel_shardings`, ...,
  :func:`place_for_fit`);
* :mod:`~manual_bp.parallel.spmd`: the gradient over the split batch, by XLA's partitioner
  (:func:`data_parallel_value_and_grad`) or by ``jax.shard_map`` and ``lax.pmean``
  (:func:`shard_map_value_and_grad`).
"""

from .mesh import (
    DATA_AXIS,
    MODEL_AXIS,
    cli_mesh,
    data_axis_size,
    data_parallel_mesh,
    initialize_distributed,
    parse_mesh_shape,
    process_rows,
)
from .sharding import (
    batch_sharding,
    constrain_batch,
    matching_shardings,
    place_for_fit,
    replicate,
    replicated_sharding,
    shard_batch,
    shard_local_batch,
    state_shardings,
    tensor_parallel_shardings,
)
from .spmd import data_parallel_value_and_grad, shard_map_value_and_grad

__all__ = [
    "DATA_AXIS",
    "MODEL_AXIS",
    "batch_sharding",
    "cli_mesh",
    "constrain_batch",
    "data_axis_size",
    "data_parallel_mesh",
    "data_parallel_value_and_grad",
    "initialize_distributed",
    "matching_shardings",
    "parse_mesh_shape",
    "place_for_fit",
    "process_rows",
    "replicate",
    "replicated_sharding",
    "shard_batch",
    "shard_local_batch",
    "shard_map_value_and_grad",
    "state_shardings",
    "tensor_parallel_shardings",
]

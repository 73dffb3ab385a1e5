"""The data-parallel gradient: the handwritten backward over a batch split across devices.

With the batch split into N equal shards, one per device, the gradient is the mean of the
per-shard gradients, ∂C/∂θ = (1/N) Σ_d ∂C_d/∂θ (see :mod:`manual_bp.parallel`). Two ways to
get there:

* :func:`data_parallel_value_and_grad` (XLA SPMD): the handwritten backward runs unchanged
  under ``jax.jit`` on a batch sharded over the mesh's ``"data"`` axis. A weight gradient
  ∂C/∂W = aᵀ·δ contracts the (sharded) batch axis, so XLA's partitioner computes the local
  aᵀ·δ on every device and inserts the all-reduce itself. Batch-norm statistics are means over
  the batch axis too, so they are reduced over the whole global batch (synchronized batch norm):
  the result is that of one device on the whole batch.
* :func:`shard_map_value_and_grad` (explicit SPMD): ``jax.shard_map`` runs the handwritten
  forward and backward on each device's shard, and ``lax.pmean`` averages C_d and ∂C_d/∂θ.
  A handwritten gradient has no implicit collective, so the pmean gives the true gradient.
  ``jax.grad`` inside ``shard_map`` (with ``check_vma=True``, the default) is different: the
  parameters enter unvarying over ``"data"``, their use on varying data inserts a ``pvary``
  whose transpose is a ``psum``, so the gradient comes back already summed, N times the mean;
  a further ``pmean`` leaves it at N× (``tests/test_parallel.py`` measures the factor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .._checks import prefix_errors
from ..grad import value_and_grad
from ..nn import Layer
from ..rules import Rule
from .mesh import DATA_AXIS, require_divisible_batch, require_mesh
from .sharding import constrain_batch

__all__ = ["data_parallel_value_and_grad", "shard_map_value_and_grad"]


_DP = "data_parallel_value_and_grad"


def data_parallel_value_and_grad(
    net: Layer,
    loss: Rule | str,
    mesh: Mesh,
    *,
    has_state: bool = False,
    train: bool = True,
) -> Callable[..., tuple[Any, Any]]:
    """:func:`manual_bp.value_and_grad` jitted over ``mesh``: the batch split, the rest replicated.

    ``f(params, x, y, key=None) -> (C, ∂C/∂params)`` (with ``has_state``:
    ``f(params, state, x, y, key=None) -> ((C, new_state), ∂C/∂params)``), the same values
    as on one device. ``x`` and ``y`` are constrained to the ``"data"`` axis along their first
    axis; the outputs are replicated. Pass params replicated (:func:`replicate`) and the batch
    sharded (:func:`shard_batch`) to avoid copies at the call. XLA inserts one all-reduce for
    the gradients, ∂C/∂W = Σ_d (a_d)ᵀ δ_d, and one for each batch-norm statistic.

    On forced CPU devices (``--xla_force_host_platform_device_count``), wait for each call's
    result before the next (``jax.block_until_ready``): many calls dispatched back to back
    have deadlocked XLA's in-process CPU all-reduce (docs/scaling.md).

    Raises:
      ValueError: (when traced) a batch size not divisible by the data axis.
    """
    require_mesh(_DP, mesh)
    f = prefix_errors(_DP, lambda: value_and_grad(net, loss, has_state=has_state, train=train))
    replicated = NamedSharding(mesh, PartitionSpec())

    if has_state:

        def g_state(params, state, x, y, key=None):
            x, y = constrain_batch((x, y), mesh, where=_DP)
            return f(params, state, x, y, key)

        return jax.jit(g_state, out_shardings=replicated)

    def g(params, x, y, key=None):
        x, y = constrain_batch((x, y), mesh, where=_DP)
        return f(params, x, y, key)

    return jax.jit(g, out_shardings=replicated)


def shard_map_value_and_grad(
    net: Layer,
    loss: Rule | str,
    mesh: Mesh,
    *,
    has_state: bool = False,
    train: bool = True,
) -> Callable[..., tuple[Any, Any]]:
    """The explicit variant: ``jax.shard_map`` of the handwritten gradient, then ``lax.pmean``.

    On device d with shard (x_d, y_d) of B/N rows, C_d and g_d = ∂C_d/∂θ come from the
    handwritten backward; the result is

    .. math:: C = \\frac{1}{N} \\sum_d C_d, \\qquad \\frac{∂C}{∂θ} = \\frac{1}{N} \\sum_d g_d

    (``lax.pmean`` over ``"data"``), equal to the one-device value for a loss that is a mean over
    examples (every loss rule here is). Signatures as in :func:`data_parallel_value_and_grad`.
    Unlike that one, batch norm sees only its shard's statistics (the new running statistics
    are pmean-ed), and dropout folds the shard index into ``key``, so both differ from a
    one-device run; without them the values agree.

    Raises:
      ValueError: (when traced) a batch size not divisible by the data axis.
    """
    require_mesh("shard_map_value_and_grad", mesh)
    f = prefix_errors(
        "shard_map_value_and_grad",
        lambda: value_and_grad(net, loss, has_state=has_state, train=train),
    )
    rep, split = PartitionSpec(), PartitionSpec(DATA_AXIS)

    def shard_key(key):
        return None if key is None else jax.random.fold_in(key, lax.axis_index(DATA_AXIS))

    def mapped(local, n_args):
        return jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(rep,) * (n_args - 3) + (split, split, rep),
            out_specs=rep,
        )

    if has_state:

        def local_state(params, state, x, y, key):
            (c, new_state), grads = f(params, state, x, y, shard_key(key))
            return lax.pmean(((c, new_state), grads), DATA_AXIS)

        def g_state(params, state, x, y, key=None):
            require_divisible_batch("shard_map_value_and_grad", mesh, x.shape[0])
            return mapped(local_state, 5)(params, state, x, y, key)

        return jax.jit(g_state)

    def local(params, x, y, key):
        c, grads = f(params, x, y, shard_key(key))
        return lax.pmean((c, grads), DATA_AXIS)

    def g(params, x, y, key=None):
        require_divisible_batch("shard_map_value_and_grad", mesh, x.shape[0])
        return mapped(local, 4)(params, x, y, key)

    return jax.jit(g)

"""Data-parallel training on a device mesh, with JAX's own sharding machinery.

Training minimizes the mean loss over a batch of B examples,

.. math:: C(θ) = \\frac{1}{B} \\sum_{n=1}^{B} C^n(θ)
          = \\frac{1}{N} \\sum_{d=1}^{N} \\underbrace{\\frac{N}{B}
            \\sum_{n \\in \\text{shard}_d} C^n(θ)}_{C_d(θ)},

so with the batch split into N equal shards, one per device, the gradient is the mean of the
per-shard gradients: ∂C/∂θ = (1/N) Σ_d ∂C_d/∂θ. Parameters, optimizer state and network
state are replicated; only the batch is split. Two ways to get there:

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

The meshes built here use :attr:`jax.sharding.AxisType.Auto` axes. ``jax.make_mesh`` defaults
to ``Explicit`` axes, under which ``jnp.dot`` of two arrays sharded along the contracted axis
(the handwritten ``aᵀ @ δ`` over a sharded batch) raises a ``ShardingTypeError`` asking for an
``out_sharding``; with ``Auto`` axes the partitioner chooses it (an all-reduce), so the
handwritten rules need no sharding annotations at all.

Multi-process runs (one process per host) call :func:`initialize_distributed` first; every
process then sees the global device list, builds the same mesh, and feeds its own rows of each
batch with :func:`shard_local_batch` (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ._checks import is_int, prefix_errors, require_int, require_leaves
from .grad import value_and_grad
from .nn import Layer
from .rules import Rule

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

DATA_AXIS = "data"
"""The mesh axis the batch is split over."""

MODEL_AXIS = "model"
"""The second mesh axis (``mesh_shape=(d, m)``), over which :func:`tensor_parallel_shardings`
splits dense weights."""


def parse_mesh_shape(text: str) -> tuple[int, ...]:
    """``"8"`` → ``(8,)``, ``"4x2"`` → ``(4, 2)``: a mesh shape (data[, model]) from text.

    Raises:
      ValueError: unless ``text`` is one or two positive integers joined by ``x``.
    """
    if not isinstance(text, str):
        raise TypeError(
            f"parse_mesh_shape: expected a str such as '4x2', got {type(text).__name__}"
        )
    parts = text.lower().split("x")
    if not 1 <= len(parts) <= 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(
            "parse_mesh_shape: expected DATA or DATAxMODEL with positive integers "
            f"(e.g. 8 or 4x2), got {text!r}"
        )
    return tuple(int(p) for p in parts)


def data_parallel_mesh(
    devices: int | Sequence[jax.Device] | None = None,
    mesh_shape: Sequence[int] | None = None,
) -> Mesh:
    """A mesh with axes ``("data",)`` or ``("data", "model")``, both of type ``Auto``.

    Args:
      devices: ``None`` for every device (of every process), an int n for the first n of
        ``jax.devices()``, or a sequence of devices.
      mesh_shape: ``(d,)`` or ``(d, m)`` with d·m equal to the number of devices; default
        ``(number of devices,)``. The ``"data"`` axis splits the batch; parameters are
        replicated over ``"model"`` unless placed by :func:`tensor_parallel_shardings`.

    Raises:
      ValueError: more devices asked for than exist, or a mesh shape whose product is not the
        number of devices.
      TypeError: ``devices`` or ``mesh_shape`` of the wrong type.
    """
    available = jax.devices()
    if devices is None:
        chosen = list(available)
    elif is_int(devices):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"data_parallel_mesh: asked for {devices} devices, but "
                f"{len(available)} {'is' if len(available) == 1 else 'are'} available "
                f"({available[0].platform})"
            )
        chosen = list(available[: int(devices)])
    elif isinstance(devices, Sequence) and not isinstance(devices, str):
        chosen = list(devices)
        if not chosen or not all(isinstance(d, jax.Device) for d in chosen):
            raise TypeError(
                "data_parallel_mesh: devices must be None, an int or a non-empty sequence of "
                f"jax.Device, got {devices!r}"
            )
    else:
        raise TypeError(
            f"data_parallel_mesh: devices must be None, an int or a sequence of jax.Device, "
            f"got {type(devices).__name__}"
        )
    if mesh_shape is None:
        shape: tuple[int, ...] = (len(chosen),)
    else:
        if isinstance(mesh_shape, str) or not isinstance(mesh_shape, Sequence):
            raise TypeError(
                "data_parallel_mesh: mesh_shape must be a sequence of ints such as (4, 2), "
                f"got {type(mesh_shape).__name__}"
            )
        shape = tuple(mesh_shape)
        if not 1 <= len(shape) <= 2 or not all(is_int(s) and s > 0 for s in shape):
            raise ValueError(
                "data_parallel_mesh: mesh_shape must be (data,) or (data, model) of positive "
                f"ints, got {tuple(mesh_shape)!r}"
            )
        if math.prod(shape) != len(chosen):
            raise ValueError(
                f"data_parallel_mesh: mesh_shape {shape} needs {math.prod(shape)} devices, "
                f"got {len(chosen)}"
            )
    names = (DATA_AXIS, MODEL_AXIS)[: len(shape)]
    grid = np.array(chosen, dtype=object).reshape(shape)
    return Mesh(grid, names, axis_types=(AxisType.Auto,) * len(shape))


def _check_mesh(where: str, mesh: Any) -> Mesh:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{where}: mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(
            f"{where}: mesh must have a {DATA_AXIS!r} axis, got axes {mesh.axis_names}"
        )
    return mesh


def data_axis_size(mesh: Mesh) -> int:
    """N, the number of shards of the batch: the size of the mesh's ``"data"`` axis."""
    return int(_check_mesh("data_axis_size", mesh).shape[DATA_AXIS])


def _check_axis(where: str, axis: Any) -> None:
    require_int(where, "axis", axis, "an int >= 0 (the batch axis)", at_least=0)


def _check_batch_size(where: str, batch_size: Any) -> None:
    require_int(where, "batch_size", batch_size, "a positive int", at_least=1)


def _check_batch(where: str, mesh: Mesh, batch: int) -> None:
    n = int(mesh.shape[DATA_AXIS])
    if batch % n:
        raise ValueError(
            f"{where}: the batch size must be divisible by the {n} devices of the "
            f"{DATA_AXIS!r} axis, got a batch of {batch}"
        )


def _spec(axis: int) -> PartitionSpec:
    return PartitionSpec(*([None] * axis), DATA_AXIS)


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """``NamedSharding(mesh, P())``: a whole copy on every device (params, optimizer state)."""
    return NamedSharding(_check_mesh("replicated_sharding", mesh), PartitionSpec())


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """``NamedSharding(mesh, P(None, ..., "data"))``: split along ``axis`` over ``"data"``."""
    _check_axis("batch_sharding", axis)
    return NamedSharding(_check_mesh("batch_sharding", mesh), _spec(axis))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of ``tree`` (params, optimizer or network state) copied to every device."""
    _check_mesh("replicate", mesh)
    require_leaves("replicate", tree)
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(tree: Any, mesh: Mesh, axis: int = 0) -> Any:
    """Every leaf split along ``axis`` (the batch axis) over the ``"data"`` axis.

    Shard d holds rows [d·B/N, (d+1)·B/N) of a batch of B. In a multi-process run every process
    must pass the same global array; to feed only this process's rows use
    :func:`shard_local_batch`.

    Raises:
      ValueError: a leaf whose batch size is not divisible by N.
    """
    _check_mesh("shard_batch", mesh)
    _check_axis("shard_batch", axis)
    require_leaves("shard_batch", tree)
    for leaf in jax.tree.leaves(tree):
        if np.ndim(leaf) <= axis:
            raise ValueError(
                f"shard_batch: every leaf needs a batch axis {axis}, got shape {np.shape(leaf)}"
            )
        _check_batch("shard_batch", mesh, np.shape(leaf)[axis])
    return jax.device_put(tree, NamedSharding(mesh, _spec(axis)))


def constrain_batch(
    tree: Any, mesh: Mesh | None, axis: int = 0, *, where: str = "constrain_batch"
) -> Any:
    """Inside ``jax.jit``: ``with_sharding_constraint`` of every leaf to the ``"data"`` axis
    along ``axis`` (the batch axis), so that the computation on it is data-parallel.

    ``mesh=None`` returns ``tree`` unchanged (one device). ``where`` names the caller in errors.

    Raises:
      ValueError: a leaf whose size along ``axis`` is not divisible by the data axis.
    """
    if mesh is None:
        return tree
    _check_mesh(where, mesh)
    _check_axis(where, axis)
    require_leaves(where, tree)
    for leaf in jax.tree.leaves(tree):
        if np.ndim(leaf) <= axis:
            raise ValueError(
                f"{where}: every leaf needs a batch axis {axis}, got shape {np.shape(leaf)}"
            )
        _check_batch(where, mesh, np.shape(leaf)[axis])
    return lax.with_sharding_constraint(tree, NamedSharding(mesh, _spec(axis)))


def process_rows(batch_size: int, mesh: Mesh) -> slice:
    """The rows of a global batch this process feeds to :func:`shard_local_batch`.

    Shard d of the ``"data"`` axis holds rows [d·B/N, (d+1)·B/N); this process feeds the
    shards its devices hold, which must be consecutive: for the meshes of
    :func:`data_parallel_mesh`, process p of P feeds rows [p·B/P, (p+1)·B/P).

    Raises:
      ValueError: a batch not divisible by N, or a mesh on which this process's devices hold
        no shard or non-consecutive shards.
    """
    _check_mesh("process_rows", mesh)
    _check_batch_size("process_rows", batch_size)
    _check_batch("process_rows", mesh, batch_size)
    n = int(mesh.shape[DATA_AXIS])
    grid = np.moveaxis(mesh.devices, mesh.axis_names.index(DATA_AXIS), 0).reshape(n, -1)
    me = jax.process_index()
    mine = [i for i in range(n) if any(d.process_index == me for d in grid[i])]
    if not mine or mine != list(range(mine[0], mine[-1] + 1)):
        raise ValueError(
            f"process_rows: process {me}'s devices must hold consecutive shards of the "
            f"{DATA_AXIS!r} axis, got shards {mine} of {n}"
        )
    rows = batch_size // n
    return slice(mine[0] * rows, (mine[-1] + 1) * rows)


def shard_local_batch(tree: Any, mesh: Mesh, global_batch: int) -> Any:
    """A global batch sharded over ``"data"``, from this process's rows only.

    Each leaf holds this process's ``global_batch / P`` rows (those of :func:`process_rows`);
    ``jax.make_array_from_process_local_data`` assembles the global array without moving data
    between hosts.

    Raises:
      ValueError: a leaf with the wrong number of local rows.
    """
    rows = process_rows(global_batch, mesh)
    sharding = NamedSharding(mesh, _spec(0))

    def one(leaf):
        leaf = np.asarray(leaf)
        if leaf.ndim == 0 or leaf.shape[0] != rows.stop - rows.start:
            raise ValueError(
                f"shard_local_batch: each leaf must hold this process's {rows.stop - rows.start} "
                f"rows of the global batch of {global_batch}, got shape {leaf.shape}"
            )
        return jax.make_array_from_process_local_data(
            sharding, leaf, (global_batch, *leaf.shape[1:])
        )

    return jax.tree.map(one, tree)


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
    _check_mesh(_DP, mesh)
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
    _check_mesh("shard_map_value_and_grad", mesh)
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
            _check_batch("shard_map_value_and_grad", mesh, x.shape[0])
            return mapped(local_state, 5)(params, state, x, y, key)

        return jax.jit(g_state)

    def local(params, x, y, key):
        c, grads = f(params, x, y, shard_key(key))
        return lax.pmean((c, grads), DATA_AXIS)

    def g(params, x, y, key=None):
        _check_batch("shard_map_value_and_grad", mesh, x.shape[0])
        return mapped(local, 4)(params, x, y, key)

    return jax.jit(g)


def place_for_fit(
    mesh: Mesh, batch_size: int, params: Any, opt_state: Any, state: Any, x: Any, y: Any
) -> tuple[Any, Any, Any, Any, Any]:
    """What :func:`manual_bp.train.fit` does with ``mesh=``: check that ``batch_size`` divides
    over the data axis, place params (and the matching optimizer-state leaves) by
    :func:`tensor_parallel_shardings` — replicated unless the mesh has a ``"model"`` axis — the
    network state by :func:`state_shardings` (feedback matrices like their weights, the rest
    replicated), and replicate the training set. Each epoch's batches are then split with
    :func:`constrain_batch` (axis 1 of the ``(steps, B, ...)`` stack).

    Raises:
      ValueError: ``batch_size`` not divisible by the data axis's size.
    """
    _check_mesh("fit", mesh)
    _check_batch_size("fit", batch_size)
    _check_batch("fit", mesh, batch_size)
    shardings = tensor_parallel_shardings(params, mesh)
    params = jax.device_put(params, shardings)
    opt_state = jax.device_put(opt_state, matching_shardings(opt_state, params, shardings, mesh))
    state = jax.device_put(state, state_shardings(state, params, shardings, mesh))
    x, y = replicate((x, y), mesh)
    return params, opt_state, state, x, y


def tensor_parallel_shardings(params: Any, mesh: Mesh) -> Any:
    """Shardings that split dense weights over the ``"model"`` axis (tensor parallelism).

    Dense layers (a ``{"w": (i, o), "b": (o,)}`` entry), in the params' order, alternate:

    * column-parallel: W split along o, b along o — each device computes its o/M output
      features, z_{:, k} = x W_{:, k} + b_k, and its slice of ∂C/∂W = xᵀ δ;
    * row-parallel (the next dense layer): W split along i, b replicated — each device
      contracts its slice of the (already split) input features, z = Σ_k x_{:, k} W_{k, :},
      and XLA adds the partial sums with an all-reduce.

    A layer whose split axis is not divisible by M stays replicated (and the alternation starts
    over); every other leaf is replicated. With no ``"model"`` axis (or M = 1) every leaf is
    replicated. The handwritten rules are unchanged: under ``jax.jit`` XLA partitions them.
    """
    _check_mesh("tensor_parallel_shardings", mesh)
    require_leaves("tensor_parallel_shardings", params, "params")
    m = int(mesh.shape.get(MODEL_AXIS, 1))
    rep = NamedSharding(mesh, PartitionSpec())
    if m == 1:
        return jax.tree.map(lambda _: rep, params)
    column = [True]

    def dense(w, b):
        i, o = w.shape
        if column[0] and o % m == 0:
            column[0] = False
            return {
                "w": NamedSharding(mesh, PartitionSpec(None, MODEL_AXIS)),
                "b": NamedSharding(mesh, PartitionSpec(MODEL_AXIS)),
            }
        if not column[0] and i % m == 0:
            column[0] = True
            return {"w": NamedSharding(mesh, PartitionSpec(MODEL_AXIS, None)), "b": rep}
        column[0] = True
        return {"w": rep, "b": rep}

    def walk(node):
        if isinstance(node, dict):
            core = {k: v for k, v in node.items() if k != "feedback"}
            if (
                set(core) == {"w", "b"}
                and np.ndim(core["w"]) == 2
                and np.shape(core["b"]) == np.shape(core["w"])[1:]
            ):
                out = dense(core["w"], core["b"])
                if "feedback" in node:  # Kolen–Pollack's learned B: split like the W it mirrors
                    out["feedback"] = _like(node["feedback"], core, out, rep)
                return out
            return {k: walk(v) for k, v in node.items()}
        return jax.tree.map(lambda _: rep, node)

    return walk(params)


def _like(feedback: Any, weights: dict, shardings: dict, rep: NamedSharding) -> Any:
    """A layer's feedback matrices {name: B}: each B with the shape of weights[name] gets that
    weight's sharding; anything else is replicated."""
    if not isinstance(feedback, dict):
        return jax.tree.map(lambda _: rep, feedback)
    return {
        k: shardings[k]
        if k in weights and np.shape(v) == np.shape(weights[k])
        else jax.tree.map(lambda _: rep, v)
        for k, v in feedback.items()
    }


def _check_shardings(where: str, params: Any, shardings: Any) -> None:
    if jax.tree.structure(params) != jax.tree.structure(shardings):
        raise ValueError(
            f"{where}: shardings must have the tree structure of params (one sharding per "
            f"leaf, as from tensor_parallel_shardings), got {len(jax.tree.leaves(shardings))} "
            f"shardings for {len(jax.tree.leaves(params))} parameters"
        )


def state_shardings(state: Any, params: Any, shardings: Any, mesh: Mesh) -> Any:
    """Shardings for a network's ``state`` that follow the parameters' ``shardings``.

    Feedback alignment's fixed matrices (``state[...]["feedback"][name]``, see
    :func:`manual_bp.credit.feedback`) stand in for the weight ``params[...][name]`` in the
    backward pass, so each gets that weight's sharding: with :func:`tensor_parallel_shardings`
    B is split exactly like W and δ Bᵀ partitions like δ Wᵀ. Every other leaf (batch-norm
    statistics, direct feedback's matrices) is replicated.
    """
    _check_mesh("state_shardings", mesh)
    require_leaves("state_shardings", state, "state")
    _check_shardings("state_shardings", params, shardings)
    rep = NamedSharding(mesh, PartitionSpec())

    def walk(node, p, sh):
        if not isinstance(node, dict):
            return jax.tree.map(lambda _: rep, node)
        out = {}
        for k, v in node.items():
            if k == "feedback" and isinstance(p, dict) and isinstance(sh, dict):
                out[k] = _like(v, p, sh, rep)
            else:
                sub_p = p.get(k) if isinstance(p, dict) else None
                sub_sh = sh.get(k) if isinstance(sh, dict) else None
                out[k] = walk(v, sub_p, sub_sh)
        return out

    return walk(state, params, shardings)


def matching_shardings(tree: Any, params: Any, shardings: Any, mesh: Mesh) -> Any:
    """Shardings for ``tree`` (an optimizer state) that follow the parameters' ``shardings``.

    A leaf whose key path ends with a parameter's key path and has that parameter's shape
    (Adam's ``mu/dense_0/w``) gets that parameter's sharding; every other leaf (step counts)
    is replicated.
    """
    _check_mesh("matching_shardings", mesh)
    _check_shardings("matching_shardings", params, shardings)
    rep = NamedSharding(mesh, PartitionSpec())
    by_path = {
        tuple(map(str, path)): (np.shape(p), sh)
        for (path, p), sh in zip(
            jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(shardings), strict=True
        )
    }

    def one(path, leaf):
        keys = tuple(map(str, path))
        for n in range(len(keys)):
            hit = by_path.get(keys[n:])
            if hit is not None and hit[0] == np.shape(leaf):
                return hit[1]
        return rep

    return jax.tree_util.tree_map_with_path(one, tree)


_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Join a multi-process run with ``jax.distributed.initialize``; call before any JAX work.

    Each argument left ``None`` is read from the environment (``JAX_COORDINATOR_ADDRESS``
    ``host:port``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). Returns ``False`` and does
    nothing when none of the three is set (a single-process run), ``True`` once initialized.
    On CPU the cross-process collectives are JAX's default, gloo over TCP.

    Raises:
      ValueError: only some of the three given, a bad address, or ids out of range.
    """
    env = [os.environ.get(k) or None for k in _ENV]
    coordinator = coordinator if coordinator is not None else env[0]
    values: list[int | None] = []
    for name, given, text in (
        ("num_processes", num_processes, env[1]),
        ("process_id", process_id, env[2]),
    ):
        if given is None and text is not None:
            try:
                given = int(text)
            except ValueError:
                raise ValueError(
                    f"initialize_distributed: {name} from the environment must be an int, "
                    f"got {text!r}"
                ) from None
        if given is not None and not is_int(given):
            raise TypeError(
                f"initialize_distributed: {name} must be an int, got {type(given).__name__}"
            )
        values.append(given)
    num_processes, process_id = values
    given = {
        "coordinator": coordinator,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    if all(v is None for v in given.values()):
        return False
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(
            "initialize_distributed: a multi-process run needs coordinator, num_processes and "
            f"process_id (or {', '.join(_ENV)}); missing {', '.join(missing)}"
        )
    host, _, port = str(coordinator).rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"initialize_distributed: coordinator must be HOST:PORT, got {coordinator!r}"
        )
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(
            "initialize_distributed: expected num_processes >= 1 and 0 <= process_id < "
            f"num_processes, got num_processes={num_processes}, process_id={process_id}"
        )
    jax.distributed.initialize(str(coordinator), int(num_processes), int(process_id))
    return True


def cli_mesh(
    devices: int,
    mesh_shape: str | None,
    batch_size: int,
    *,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> Mesh | None:
    """The mesh of ``manual-bp train --devices N [--mesh-shape DxM]`` (``None``: one device).

    Joins a multi-process run first when ``coordinator``, ``num_processes``, ``process_id`` (or
    their environment variables, see :func:`initialize_distributed`) are given; such a run
    spans every device of every process. ``--mesh-shape`` alone sets the device count to
    D·M. Must run before any other JAX computation.

    Raises:
      ValueError: one line naming the flag: too many devices, a shape that does not match
        ``devices``, or a ``batch_size`` not divisible by the data axis.
    """
    require_int("cli_mesh", "devices", devices, "a positive int", at_least=1)
    if mesh_shape is not None and not isinstance(mesh_shape, str):
        raise TypeError(
            f"cli_mesh: mesh_shape must be None or a str such as '4x2', got "
            f"{type(mesh_shape).__name__}"
        )
    _check_batch_size("cli_mesh", batch_size)
    try:
        shape = None if mesh_shape is None else parse_mesh_shape(mesh_shape)
    except ValueError as e:
        raise ValueError(f"argument --mesh-shape: {str(e).split(': ', 1)[1]}") from None
    try:
        distributed = initialize_distributed(coordinator, num_processes, process_id)
    except ValueError as e:
        raise ValueError(f"argument --coordinator: {e}") from None
    if shape is not None and devices == 1:
        devices = math.prod(shape)
    if shape is not None and math.prod(shape) != devices:
        raise ValueError(
            f"argument --mesh-shape: {mesh_shape} has {math.prod(shape)} devices, "
            f"but --devices is {devices}"
        )
    available = jax.device_count()
    if distributed and devices != available:
        raise ValueError(
            f"argument --devices: a run over {jax.process_count()} processes spans all "
            f"{available} devices; pass --devices {available}, got {devices}"
        )
    if devices > available:
        hint = ""
        if jax.default_backend() == "cpu":
            hint = (
                "; for more CPU devices set XLA_FLAGS=--xla_force_host_platform_device_count="
                f"{devices} before starting"
            )
        raise ValueError(
            f"argument --devices: asked for {devices} devices, but {available} "
            f"{'is' if available == 1 else 'are'} available{hint}"
        )
    if devices == 1 and shape is None:
        return None
    mesh = data_parallel_mesh(devices, shape)
    n = int(mesh.shape[DATA_AXIS])
    if batch_size % n:
        raise ValueError(
            f"argument --batch-size: {batch_size} is not divisible by the {n} devices of the "
            f"{DATA_AXIS!r} mesh axis"
        )
    return mesh

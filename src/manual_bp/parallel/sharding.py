"""Where each array lives on a mesh: the batch split over ``"data"``, everything else
replicated, and dense weights (with the optimizer and network state that mirror them) split over
``"model"``.

Shard d of a batch of B rows holds rows [d·B/N, (d+1)·B/N) of it. :func:`shard_batch` places a
whole batch, :func:`shard_local_batch` assembles one from each process's own rows, and
:func:`constrain_batch` splits one inside ``jax.jit``. :func:`tensor_parallel_shardings` splits
dense layers over ``"model"``; :func:`state_shardings` and :func:`matching_shardings` give the
network and optimizer state the shardings of the weights they follow; :func:`place_for_fit`
puts it all together for :func:`manual_bp.train.fit`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .._checks import require_int, require_leaves, require_positive_int
from .mesh import DATA_AXIS, MODEL_AXIS, process_rows, require_divisible_batch, require_mesh

__all__ = [
    "batch_sharding",
    "constrain_batch",
    "matching_shardings",
    "place_for_fit",
    "replicate",
    "replicated_sharding",
    "shard_batch",
    "shard_local_batch",
    "state_shardings",
    "tensor_parallel_shardings",
]


def _check_axis(where: str, axis: Any) -> None:
    require_int(where, "axis", axis, "an int >= 0 (the batch axis)", at_least=0)


def _spec(axis: int) -> PartitionSpec:
    return PartitionSpec(*([None] * axis), DATA_AXIS)


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """``NamedSharding(mesh, P())``: a whole copy on every device (params, optimizer state)."""
    return NamedSharding(require_mesh("replicated_sharding", mesh), PartitionSpec())


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """``NamedSharding(mesh, P(None, ..., "data"))``: split along ``axis`` over ``"data"``."""
    _check_axis("batch_sharding", axis)
    return NamedSharding(require_mesh("batch_sharding", mesh), _spec(axis))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of ``tree`` (params, optimizer or network state) copied to every device."""
    require_mesh("replicate", mesh)
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
    require_mesh("shard_batch", mesh)
    _check_axis("shard_batch", axis)
    require_leaves("shard_batch", tree)
    for leaf in jax.tree.leaves(tree):
        if np.ndim(leaf) <= axis:
            raise ValueError(
                f"shard_batch: every leaf needs a batch axis {axis}, got shape {np.shape(leaf)}"
            )
        require_divisible_batch("shard_batch", mesh, np.shape(leaf)[axis])
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
    require_mesh(where, mesh)
    _check_axis(where, axis)
    require_leaves(where, tree)
    for leaf in jax.tree.leaves(tree):
        if np.ndim(leaf) <= axis:
            raise ValueError(
                f"{where}: every leaf needs a batch axis {axis}, got shape {np.shape(leaf)}"
            )
        require_divisible_batch(where, mesh, np.shape(leaf)[axis])
    return lax.with_sharding_constraint(tree, NamedSharding(mesh, _spec(axis)))


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
    require_mesh("tensor_parallel_shardings", mesh)
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
    require_mesh("state_shardings", mesh)
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
    require_mesh("matching_shardings", mesh)
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
    require_mesh("fit", mesh)
    require_positive_int("fit", "batch_size", batch_size)
    require_divisible_batch("fit", mesh, batch_size)
    shardings = tensor_parallel_shardings(params, mesh)
    params = jax.device_put(params, shardings)
    opt_state = jax.device_put(opt_state, matching_shardings(opt_state, params, shardings, mesh))
    state = jax.device_put(state, state_shardings(state, params, shardings, mesh))
    x, y = replicate((x, y), mesh)
    return params, opt_state, state, x, y

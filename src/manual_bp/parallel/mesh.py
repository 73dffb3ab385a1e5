"""Device meshes: the ``"data"`` and ``"model"`` axes, the checks on them, and joining a
multi-process run.

The meshes built here use :attr:`jax.sharding.AxisType.Auto` axes. ``jax.make_mesh`` defaults
to ``Explicit`` axes, under which ``jnp.dot`` of two arrays sharded along the contracted axis
(the handwritten ``aᵀ @ δ`` over a sharded batch) raises a ``ShardingTypeError`` asking for an
``out_sharding``; with ``Auto`` axes the partitioner chooses it (an all-reduce), so the
handwritten rules need no sharding annotations at all.

Multi-process runs (one process per host) call :func:`initialize_distributed` first; every
process then sees the global device list, builds the same mesh, and feeds its own rows of each
batch (:func:`process_rows`) with :func:`manual_bp.parallel.shard_local_batch`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from .._checks import is_int, require_positive_int

__all__ = [
    "DATA_AXIS",
    "MODEL_AXIS",
    "cli_mesh",
    "data_axis_size",
    "data_parallel_mesh",
    "initialize_distributed",
    "parse_mesh_shape",
    "process_rows",
    "require_divisible_batch",
    "require_mesh",
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


def require_mesh(where: str, mesh: Any) -> Mesh:
    """``mesh`` if it is a :class:`jax.sharding.Mesh` with a ``"data"`` axis; else a TypeError
    or ValueError naming ``where``."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{where}: mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(
            f"{where}: mesh must have a {DATA_AXIS!r} axis, got axes {mesh.axis_names}"
        )
    return mesh


def data_axis_size(mesh: Mesh) -> int:
    """N, the number of shards of the batch: the size of the mesh's ``"data"`` axis."""
    return int(require_mesh("data_axis_size", mesh).shape[DATA_AXIS])


def require_divisible_batch(where: str, mesh: Mesh, batch: int) -> None:
    """A batch of ``batch`` rows splits evenly over the mesh's ``"data"`` axis; else a
    ValueError naming ``where``."""
    n = int(mesh.shape[DATA_AXIS])
    if batch % n:
        raise ValueError(
            f"{where}: the batch size must be divisible by the {n} devices of the "
            f"{DATA_AXIS!r} axis, got a batch of {batch}"
        )


def process_rows(batch_size: int, mesh: Mesh) -> slice:
    """The rows of a global batch this process feeds to :func:`shard_local_batch`.

    Shard d of the ``"data"`` axis holds rows [d·B/N, (d+1)·B/N); this process feeds the
    shards its devices hold, which must be consecutive: for the meshes of
    :func:`data_parallel_mesh`, process p of P feeds rows [p·B/P, (p+1)·B/P).

    Raises:
      ValueError: a batch not divisible by N, or a mesh on which this process's devices hold
        no shard or non-consecutive shards.
    """
    require_mesh("process_rows", mesh)
    require_positive_int("process_rows", "batch_size", batch_size)
    require_divisible_batch("process_rows", mesh, batch_size)
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
    require_positive_int("cli_mesh", "devices", devices)
    if mesh_shape is not None and not isinstance(mesh_shape, str):
        raise TypeError(
            f"cli_mesh: mesh_shape must be None or a str such as '4x2', got "
            f"{type(mesh_shape).__name__}"
        )
    require_positive_int("cli_mesh", "batch_size", batch_size)
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

"""Subprocess side of ``tests/test_parallel.py``: checks that need several (forced CPU) devices.

The device count is fixed when JAX starts, so these run in a fresh interpreter:

* ``python _parallel_worker.py mesh`` — 8 CPU devices in one process: every data-parallel
  check, printed as one JSON object on the last line of stdout;
* ``python _parallel_worker.py process ID PORT`` — one of two processes with 2 CPU devices
  each, joined by ``jax.distributed`` on 127.0.0.1:PORT; one training step on a 4-device mesh,
  each process feeding only its own rows; prints the resulting parameters as JSON.

Inputs are random (seeded); nothing compares against stored numbers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

DUMP = None
if __name__ == "__main__":
    count = 8 if sys.argv[1] == "mesh" else 2
    # the suite's own flags (tests/conftest.py), plus the device count
    flags = [
        *os.environ.get("XLA_FLAGS", "").split(),
        f"--xla_force_host_platform_device_count={count}",
    ]
    if sys.argv[1] == "mesh":  # the compiled epochs of fit, to look for the all-reduce
        DUMP = tempfile.mkdtemp(prefix="manual_bp_hlo_")
        flags += [f"--xla_dump_to={DUMP}", "--xla_dump_hlo_module_re=run_epoch"]
    os.environ["XLA_FLAGS"] = " ".join(flags)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

import reference  # noqa: E402
from manual_bp import nn, parallel, value_and_grad  # noqa: E402

LOSS = "softmax_cross_entropy"
BATCH = 16


def mlp(batch_norm: bool = False, dropout: float = 0.0) -> nn.Layer:
    """An MLP 8-16-4 (optionally with batch norm and dropout)."""
    middle = [nn.BatchNorm()] if batch_norm else []
    drop = [nn.Dropout(dropout)] if dropout else []
    return nn.serial(nn.Dense(16), *middle, nn.Tanh(), *drop, nn.Dense(4))


def problem(dtype, seed: int = 0, batch: int = BATCH):
    """Random params, inputs and labels of ``dtype``."""
    net = mlp()
    k = jax.random.split(jax.random.key(seed), 3)
    params = net.init(k[0], (batch, 8), dtype)
    x = jax.random.normal(k[1], (batch, 8), dtype)
    y = jax.random.randint(k[2], (batch,), 0, 4)
    return net, params, x, y


def max_rel(a, b) -> float:
    """max |a − b| over all leaves, relative to max |b| over all leaves (float64).

    One scale for the whole tree: a leaf that is ~0 in exact arithmetic (a dense bias feeding
    batch norm) is compared at the tree's scale, not at its own rounding noise.
    """
    pairs = [
        (np.asarray(u, np.float64), np.asarray(v, np.float64))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    scale = max(float(np.max(np.abs(v), initial=0.0)) for _, v in pairs)
    return max(float(np.max(np.abs(u - v), initial=0.0)) for u, v in pairs) / scale


def factors(a, b) -> dict:
    """Least-squares scale s with a ≈ s·b per leaf, and the residual max |a − s b| / max |b|."""
    out = {}
    for (path, u), v in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
    ):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        s = float(np.sum(u * v) / np.sum(v * v))
        name = "/".join(str(getattr(p, "key", p)) for p in path)
        out[name] = [s, float(np.max(np.abs(u - s * v)) / np.max(np.abs(v)))]
    return out


def all_replicated(tree) -> bool:
    return all(
        leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8
        for leaf in jax.tree.leaves(tree)
    )


def check_mesh() -> dict:
    r: dict = {"device_count": jax.device_count()}
    mesh = parallel.data_parallel_mesh()
    r["mesh_axis_types"] = [str(t) for t in mesh.axis_types]

    # gradients, float64 and float32
    for dtype in (jnp.float64, jnp.float32):
        net, params, x, y = problem(dtype)
        c0, g0 = jax.jit(value_and_grad(net, LOSS))(params, x, y)
        dp = parallel.data_parallel_value_and_grad(net, LOSS, mesh)
        ps, xs, ys = parallel.replicate(params, mesh), *parallel.shard_batch((x, y), mesh)
        c, g = dp(ps, xs, ys)
        name = jnp.dtype(dtype).name
        r[f"dp_grad_rel_{name}"] = max_rel(g, g0)
        r[f"dp_loss_rel_{name}"] = max_rel(c, c0)
        r[f"dp_grad_dtype_{name}"] = sorted({str(v.dtype) for v in jax.tree.leaves(g)})
        if dtype == jnp.float64:
            r["dp_outputs_replicated"] = all_replicated((c, g))
            r["dp_out_specs"] = sorted({str(v.sharding.spec) for v in jax.tree.leaves(g)})
            r["x_sharded"] = [str(xs.sharding.spec), xs.addressable_shards[0].data.shape[0]]
            hlo = dp.lower(ps, xs, ys).compile().as_text()
            r["dp_hlo_all_reduce"] = hlo.count("all-reduce(")
            # the first layer's x @ w on 16/8 = 2 local rows: the work is split, not repeated
            r["dp_hlo_local_dot"] = "f64[2,16]" in hlo
            r["dp_hlo_full_dot"] = "f64[16,16]" in hlo
            sm = parallel.shard_map_value_and_grad(net, LOSS, mesh)
            cs, gs = sm(ps, xs, ys)
            r["sm_factor"] = factors(gs, g0)
            r["sm_loss_rel"] = max_rel(cs, c0)
            r["sm_outputs_replicated"] = all_replicated((cs, gs))
            pitfall(r, net, params, x, y, g0, mesh)
            explicit(r, net, params, x, y)

    # a 4x2 mesh: batch over "data" (4), parameters replicated over "model" (2)
    net, params, x, y = problem(jnp.float64)
    _, g0 = jax.jit(value_and_grad(net, LOSS))(params, x, y)
    mesh42 = parallel.data_parallel_mesh(mesh_shape=(4, 2))
    r["mesh42_axes"] = list(mesh42.axis_names)
    _, g = parallel.data_parallel_value_and_grad(net, LOSS, mesh42)(
        parallel.replicate(params, mesh42), *parallel.shard_batch((x, y), mesh42)
    )
    r["mesh42_grad_rel"] = max_rel(g, g0)
    _, g = parallel.shard_map_value_and_grad(net, LOSS, mesh42)(params, x, y)
    r["mesh42_sm_grad_rel"] = max_rel(g, g0)

    tensor_parallel(r)
    r["doc_example"] = doc_example()
    steps(r, mesh)
    stateful(r, mesh)
    errors(r, mesh)
    fit_check(r, mesh)
    cli_check(r)
    return r


def tensor_parallel(r) -> None:
    """A (data=4, model=2) mesh with dense weights split over "model": gradients and 5 Adam
    steps equal the one-device ones, and the first layer really computes half its features."""
    net = nn.serial(nn.Dense(16), nn.Tanh(), nn.Dense(16), nn.Tanh(), nn.Dense(4))
    k = jax.random.split(jax.random.key(11), 3)
    params = net.init(k[0], (BATCH, 8), jnp.float64)
    x = jax.random.normal(k[1], (BATCH, 8), jnp.float64)
    y = jax.random.randint(k[2], (BATCH,), 0, 4)
    f = value_and_grad(net, LOSS)
    c0, g0 = jax.jit(f)(params, x, y)
    mesh = parallel.data_parallel_mesh(mesh_shape=(4, 2))
    sh = parallel.tensor_parallel_shardings(params, mesh)
    r["tp_specs"] = jax.tree.map(lambda s: str(s.spec), sh)

    def g(p, x, y):
        return f(p, *parallel.constrain_batch((x, y), mesh))

    tp = jax.jit(g, out_shardings=(parallel.replicated_sharding(mesh), sh))
    ps, xs, ys = jax.device_put(params, sh), *parallel.shard_batch((x, y), mesh)
    c, gr = tp(ps, xs, ys)
    r["tp_grad_rel"] = max_rel(gr, g0)
    r["tp_loss_rel"] = max_rel(c, c0)
    r["tp_grad_specs"] = jax.tree.map(lambda a: str(a.sharding.spec), gr)
    hlo = tp.lower(ps, xs, ys).compile().as_text()
    r["tp_local_dot"] = "f64[4,8]" in hlo  # 4 local rows x 8 of dense_0's 16 features

    opt = optax.adam(1e-2)
    ost = opt.init(params)
    osh = parallel.matching_shardings(ost, params, sh, mesh)
    r["tp_opt_specs"] = sorted({str(s.spec) for s in jax.tree.leaves(osh)})

    def make(grad, out):
        def step(p, s, x, y):
            _, gr = grad(p, x, y)
            with jax.numpy_dtype_promotion("standard"):
                u, s = opt.update(gr, s, p)
                return optax.apply_updates(p, u), s

        return jax.jit(step, out_shardings=out)

    one, many = make(f, None), make(g, (sh, osh))
    p1, s1 = params, ost
    p8, s8 = ps, jax.device_put(ost, osh)
    for _ in range(5):
        p1, s1 = one(p1, s1, x, y)
        p8, s8 = many(p8, s8, xs, ys)
        jax.block_until_ready((p1, p8))
    r["tp_steps_rel"] = max_rel(p8, p1)
    r["tp_steps_moved"] = max_rel(params, p1)
    tensor_parallel_feedback(r, mesh)


def tensor_parallel_feedback(r, mesh) -> None:
    """Feedback alignment (B in the state) and Kolen–Pollack (B in the params) on the
    (4, 2) mesh: each B is split like the W it stands for, and fit equals one device."""
    from manual_bp.credit import feedback
    from manual_bp.data import Dataset
    from manual_bp.train import fit

    net = nn.serial(
        feedback(nn.Dense(16), "fa"), nn.Tanh(), feedback(nn.Dense(16), "kp"), nn.Tanh(),
        nn.Dense(4),
    )  # fmt: skip
    params = net.init(jax.random.key(12), (BATCH, 8), jnp.float64)
    state = net.init_state(jax.random.key(13), (BATCH, 8), jnp.float64)
    sh = parallel.tensor_parallel_shardings(params, mesh)
    r["tp_fb_specs"] = {
        "state": jax.tree.map(
            lambda s: str(s.spec), parallel.state_shardings(state, params, sh, mesh)
        ),
        "kp": jax.tree.map(lambda s: str(s.spec), sh["dense_2"]),
    }
    rng = np.random.default_rng(3)
    data = Dataset(
        rng.normal(size=(32, 8)), rng.integers(0, 4, 32), rng.normal(size=(8, 8)),
        rng.integers(0, 4, 8), 4, "random",
    )  # fmt: skip
    kw = {"optimizer": optax.adam(1e-2), "epochs": 2, "batch_size": BATCH, "state": state}
    one = fit(net, LOSS, params, data, key=jax.random.key(6), **kw)
    many = fit(net, LOSS, params, data, key=jax.random.key(6), mesh=mesh, **kw)
    r["tp_fb"] = {
        "param_rel": max_rel(many.params, one.params),
        "moved": max_rel(params, one.params),
        "b_fixed": max_rel(many.state, state),
        "state_spec": str(many.state["dense_0"]["feedback"]["w"].sharding.spec),
        "kp_spec": str(many.params["dense_2"]["feedback"]["w"].sharding.spec),
    }


def doc_example() -> dict:
    """Run docs/scaling.md's first python block; return its loss and a gradient check."""
    doc = Path(__file__).parents[1] / "docs" / "scaling.md"
    block = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S)[0]
    scope: dict = {}
    exec(compile(block, "docs/scaling.md", "exec"), scope)
    _, g0 = value_and_grad(scope["net"], LOSS)(scope["params"], scope["x"], scope["y"])
    return {"grad_rel": max_rel(scope["grads"], g0), "replicated": all_replicated(scope["grads"])}


def pitfall(r, net, params, x, y, g0, mesh) -> None:
    """jax.grad of the reference inside shard_map, then pmean: the factor actually obtained."""
    ref = reference.value_and_grad(net, LOSS)
    spec = (PartitionSpec(), PartitionSpec("data"), PartitionSpec("data"))

    def run(local, check_vma):
        f = jax.shard_map(
            local, mesh=mesh, in_specs=spec, out_specs=PartitionSpec(), check_vma=check_vma
        )
        return jax.jit(f)(params, x, y)

    def grad_then_pmean(p, xb, yb):
        return lax.pmean(ref(p, xb, yb)[1], "data")

    def grad_of_pmean_loss(p, xb, yb):
        return jax.grad(lambda q: lax.pmean(ref(q, xb, yb)[0], "data"))(p)

    def manual_then_pmean(p, xb, yb):
        return lax.pmean(value_and_grad(net, LOSS)(p, xb, yb)[1], "data")

    r["pitfall_jaxgrad_pmean_vma"] = factors(run(grad_then_pmean, True), g0)
    r["pitfall_jaxgrad_pmean_novma"] = factors(run(grad_then_pmean, False), g0)
    r["pitfall_grad_of_pmean_loss_vma"] = factors(run(grad_of_pmean_loss, True), g0)
    r["pitfall_manual_pmean_novma"] = factors(run(manual_then_pmean, False), g0)


def explicit(r, net, params, x, y) -> None:
    """The same gradient on jax.make_mesh's default (Explicit) axes."""
    mesh = jax.make_mesh((8,), ("data",))
    r["explicit_axis_types"] = [str(t) for t in mesh.axis_types]
    f = jax.jit(value_and_grad(net, LOSS))
    put = jax.device_put
    try:
        with jax.set_mesh(mesh):
            f(
                put(params, NamedSharding(mesh, PartitionSpec())),
                put(x, NamedSharding(mesh, PartitionSpec("data"))),
                put(y, NamedSharding(mesh, PartitionSpec("data"))),
            )
        r["explicit_error"] = None
    except Exception as e:
        r["explicit_error"] = [type(e).__name__, str(e).splitlines()[0]]


def steps(r, mesh) -> None:
    """20 Adam steps on fresh random batches: one device vs the mesh, float64."""
    net, params, _, _ = problem(jnp.float64, seed=1)
    opt = optax.adam(1e-2)

    def make_step(grad_fn):
        def step(p, s, x, y):
            c, g = grad_fn(p, x, y)
            with jax.numpy_dtype_promotion("standard"):
                u, s = opt.update(g, s, p)
                return optax.apply_updates(p, u), s, c

        return step

    one = jax.jit(make_step(value_and_grad(net, LOSS)))
    rep = NamedSharding(mesh, PartitionSpec())
    grad = value_and_grad(net, LOSS)

    def dp_grad(p, x, y):
        x, y = parallel.constrain_batch((x, y), mesh)
        return grad(p, x, y)

    many = jax.jit(make_step(dp_grad), out_shardings=rep)
    p1, s1 = params, opt.init(params)
    p8, s8 = parallel.replicate((params, opt.init(params)), mesh)
    for i in range(20):
        kx, ky = jax.random.split(jax.random.key(100 + i))
        x = jax.random.normal(kx, (BATCH, 8), jnp.float64)
        y = jax.random.randint(ky, (BATCH,), 0, 4)
        p1, s1, _ = one(p1, s1, x, y)
        p8, s8, _ = many(p8, s8, *parallel.shard_batch((x, y), mesh))
        jax.block_until_ready((p1, p8))  # one step in flight at a time (docs/scaling.md)
    r["steps20_param_rel"] = max_rel(p8, p1)
    r["steps20_moved"] = max_rel(params, p1)
    r["steps20_replicated"] = all_replicated((p8, s8))


def stateful(r, mesh) -> None:
    """Batch norm + dropout: the data-parallel path gives the one-device gradients and state."""
    net = mlp(batch_norm=True, dropout=0.25)
    k = jax.random.split(jax.random.key(3), 4)
    params = net.init(k[0], (BATCH, 8), jnp.float64)
    state = net.init_state(k[0], (BATCH, 8), jnp.float64)
    x = jax.random.normal(k[1], (BATCH, 8), jnp.float64)
    y = jax.random.randint(k[2], (BATCH,), 0, 4)
    (c0, st0), g0 = jax.jit(value_and_grad(net, LOSS, has_state=True))(params, state, x, y, k[3])
    dp = parallel.data_parallel_value_and_grad(net, LOSS, mesh, has_state=True)
    (c, st), g = dp(
        *parallel.replicate((params, state), mesh), *parallel.shard_batch((x, y), mesh), k[3]
    )
    r["bn_dropout_grad_rel"] = max_rel(g, g0)
    r["bn_dropout_state_rel"] = max_rel(st, st0)
    r["bn_dropout_loss_rel"] = max_rel(c, c0)
    r["bn_state_replicated"] = all_replicated(st)
    # shard_map: per-shard statistics, so only runs (finite, replicated) are checked
    sm = parallel.shard_map_value_and_grad(net, LOSS, mesh, has_state=True)
    (c, st), g = sm(params, state, x, y, k[3])
    r["sm_bn_finite"] = bool(all(np.all(np.isfinite(v)) for v in jax.tree.leaves((c, st, g))))


def errors(r, mesh) -> None:
    net, params, x, y = problem(jnp.float64, batch=12)
    out = {}
    for name, call in (
        ("dp", lambda: parallel.data_parallel_value_and_grad(net, LOSS, mesh)(params, x, y)),
        ("sm", lambda: parallel.shard_map_value_and_grad(net, LOSS, mesh)(params, x, y)),
        ("shard_batch", lambda: parallel.shard_batch(x, mesh)),
        ("mesh", lambda: parallel.data_parallel_mesh(16)),
        ("mesh_shape", lambda: parallel.data_parallel_mesh(8, (3, 2))),
    ):
        try:
            call()
            out[name] = None
        except (ValueError, TypeError) as e:
            out[name] = [type(e).__name__, str(e)]
    r["errors"] = out


def fit_check(r, mesh) -> None:
    """``fit(..., mesh=)`` against ``fit`` on one device: batch norm and dropout, 2 epochs."""
    import inspect

    from manual_bp.data import Dataset
    from manual_bp.train import fit

    if "mesh" not in inspect.signature(fit).parameters:
        r["fit"] = None
        return
    net = mlp(batch_norm=True, dropout=0.25)
    rng = np.random.default_rng(0)
    data = Dataset(
        name="random",
        x_train=rng.normal(size=(40, 8)),
        y_train=rng.integers(0, 4, 40),
        x_test=rng.normal(size=(10, 8)),
        y_test=rng.integers(0, 4, 10),
        num_classes=4,
    )
    params = net.init(jax.random.key(5), (BATCH, 8), jnp.float64)
    kw = {"optimizer": optax.adam(1e-2), "epochs": 2, "batch_size": BATCH}
    if DUMP is not None:  # only this check's epochs, not those compiled before it
        for path in Path(DUMP).glob("*run_epoch*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    one = fit(net, LOSS, params, data, key=jax.random.key(6), **kw)
    many = fit(net, LOSS, params, data, key=jax.random.key(6), mesh=mesh, **kw)
    r["fit"] = {
        "param_rel": max_rel(many.params, one.params),
        "state_rel": max_rel(many.state, one.state),
        "moved": max_rel(params, one.params),
        "loss": [[h["train_loss"] for h in run.history] for run in (one, many)],
        "replicated": all_replicated((many.params, many.opt_state)),
    }
    if DUMP is not None:
        epochs = []
        for path in sorted(Path(DUMP).glob("*run_epoch*cpu_after_optimizations.txt")):
            hlo = path.read_text()
            partitions = re.search(r"num_partitions=(\d+)", hlo)
            epochs.append(
                {
                    "partitions": int(partitions.group(1)) if partitions else 1,
                    "all_reduce": hlo.count("all-reduce("),
                    "local_dot": "f64[2,16]" in hlo,
                }
            )
        r["fit"]["compiled_epochs"] = epochs
        shutil.rmtree(DUMP, ignore_errors=True)
    try:
        fit(net, LOSS, params, data, key=jax.random.key(6), mesh=mesh, **{**kw, "batch_size": 12})
        r["fit"]["indivisible"] = None
    except ValueError as e:
        r["fit"]["indivisible"] = str(e)

    # feedback alignment: the fixed matrices B are network state, replicated like the params
    from manual_bp.credit import feedback

    fa = nn.serial(feedback(nn.Dense(16), "fa"), nn.Tanh(), feedback(nn.Dense(4), "fa"))
    params = fa.init(jax.random.key(5), (BATCH, 8), jnp.float64)
    state = fa.init_state(jax.random.key(7), (BATCH, 8), jnp.float64)
    one = fit(fa, LOSS, params, data, key=jax.random.key(6), state=state, **kw)
    many = fit(fa, LOSS, params, data, key=jax.random.key(6), state=state, mesh=mesh, **kw)
    r["fit_feedback"] = {
        "param_rel": max_rel(many.params, one.params),
        "moved": max_rel(params, one.params),
        "b_fixed": max_rel(many.state, state),
        "replicated": all_replicated((many.params, many.opt_state, many.state)),
    }


def cli_check(r) -> None:
    """``manual-bp train --devices 8`` (and ``--mesh-shape 4x2``): one short epoch each, and the
    one-line argument errors (exit code 2)."""
    import contextlib
    import inspect
    import io

    from manual_bp import cli

    if '"--devices"' not in inspect.getsource(cli):
        r["cli"] = None
        return
    out = Path(tempfile.mkdtemp(prefix="manual_bp_cli_"))
    short = ["train", "--epochs", "1", "--hidden", "32", "--batch-size", "64"]
    runs = {
        "devices8": [*short, "--devices", "8", "--out", str(out / "a")],
        "mesh4x2": [*short, "--mesh-shape", "4x2", "--out", str(out / "b")],
        "too_many": [*short, "--devices", "16"],
        "indivisible": ["train", "--devices", "8", "--batch-size", "12"],
        "shape_mismatch": [*short, "--devices", "4", "--mesh-shape", "4x2"],
        "bad_shape": [*short, "--mesh-shape", "4y2"],
    }
    results = {}
    for name, argv in runs.items():
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = cli.main(argv)
            except SystemExit as e:
                code = e.code
        results[name] = {
            "code": code,
            "stderr": stderr.getvalue(),
            "stdout_tail": stdout.getvalue().strip().splitlines()[-2:],
        }
    shutil.rmtree(out, ignore_errors=True)
    r["cli"] = results


def check_process(process_id: int, port: int) -> dict:
    """One Adam step on a 4-device mesh over two processes; each feeds half of the batch."""
    parallel.initialize_distributed(f"127.0.0.1:{port}", 2, process_id)
    mesh = parallel.data_parallel_mesh()
    net, params, x, y = problem(jnp.float64, seed=7)
    opt = optax.adam(1e-2)
    grad = parallel.data_parallel_value_and_grad(net, LOSS, mesh)
    rows = parallel.process_rows(BATCH, mesh)
    xs, ys = parallel.shard_local_batch((np.asarray(x)[rows], np.asarray(y)[rows]), mesh, BATCH)
    p = parallel.replicate(params, mesh)
    s = parallel.replicate(opt.init(params), mesh)

    @jax.jit
    def update(p, s, g):
        with jax.numpy_dtype_promotion("standard"):
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u)

    c, g = grad(p, xs, ys)
    new = update(p, s, g)
    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "rows": [rows.start, rows.stop],
        "loss": float(c),
        "params": jax.tree.map(lambda a: np.asarray(a).tolist(), new),
    }


if __name__ == "__main__":
    if sys.argv[1] == "mesh":
        result = check_mesh()
    else:
        result = check_process(int(sys.argv[2]), int(sys.argv[3]))
    print(json.dumps(result))
    sys.stdout.flush()
    if sys.argv[1] == "process":
        jax.distributed.shutdown()

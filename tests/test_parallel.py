"""Data-parallel training on a device mesh (``manual_bp.parallel``).

The device count is fixed when JAX starts and this process has one CPU device, so the mesh
checks run in subprocesses (``tests/_parallel_worker.py``) with forced CPU devices: one with 8
devices for every single-process check, two with 2 devices each joined by
``jax.distributed`` for the multi-process step. Each prints JSON; the tests assert on it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from manual_bp import parallel, value_and_grad

WORKER = Path(__file__).with_name("_parallel_worker.py")
LOSS = "softmax_cross_entropy"
F64_RTOL = 1e-12
F32_RTOL = 2e-6


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    count = f"--xla_force_host_platform_device_count={devices}"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {count}".strip()  # and the suite's own
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def mesh8() -> dict:
    """Every 8-device check, from one worker subprocess."""
    run = subprocess.run(
        [sys.executable, str(WORKER), "mesh"],
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return _json(run.stdout)


def _assert_factor(factors: dict, expected: float, what: str) -> None:
    for leaf, (scale, residual) in factors.items():
        assert scale == pytest.approx(expected, rel=1e-12), f"{what}: {leaf} scaled by {scale}"
        assert residual < 1e-12, f"{what}: {leaf} is not a multiple of the true gradient"


def test_data_parallel_mesh_8_devices(mesh8):
    r = mesh8
    assert r["device_count"] == 8
    assert r["mesh_axis_types"] == ["AxisType.Auto"]
    # gradients and loss equal the one-device ones, in the input dtype
    assert r["dp_grad_rel_float64"] < F64_RTOL
    assert r["dp_loss_rel_float64"] < F64_RTOL
    assert r["dp_grad_rel_float32"] < F32_RTOL
    assert r["dp_loss_rel_float32"] < F32_RTOL
    assert r["dp_grad_dtype_float64"] == ["float64"]
    assert r["dp_grad_dtype_float32"] == ["float32"]
    # the batch is split (2 of 16 rows per device), the outputs replicated on all 8 devices
    assert r["x_sharded"] == ["P('data',)", 2]
    assert r["dp_outputs_replicated"] and r["dp_out_specs"] == ["P()"]
    # compiled: the first dense layer runs on 2 local rows, and XLA inserted the all-reduce
    assert r["dp_hlo_all_reduce"] >= 1
    assert r["dp_hlo_local_dot"] and not r["dp_hlo_full_dot"]
    # a (data=4, model=2) mesh: the same gradients on both paths
    assert r["mesh42_axes"] == ["data", "model"]
    assert r["mesh42_grad_rel"] < F64_RTOL
    assert r["mesh42_sm_grad_rel"] < F64_RTOL


def test_tensor_parallel_dense_weights(mesh8):
    """Stretch: dense weights split over "model" (column- then row-parallel)."""
    r = mesh8
    col = {"w": "P(None, 'model')", "b": "P('model',)"}
    assert r["tp_specs"] == {
        "dense_0": col,
        "tanh_1": {},
        "dense_2": {"w": "P('model', None)", "b": "P()"},
        "tanh_3": {},
        "dense_4": col,
    }
    assert r["tp_grad_specs"] == r["tp_specs"]  # gradients come out split like the weights
    assert r["tp_grad_rel"] < F64_RTOL and r["tp_loss_rel"] < F64_RTOL
    assert r["tp_local_dot"]
    assert "P(None, 'model')" in r["tp_opt_specs"] and "P()" in r["tp_opt_specs"]
    assert r["tp_steps_moved"] > 1e-3
    assert r["tp_steps_rel"] < 1e-11


def test_tensor_parallel_feedback_matrices_split_like_their_weights(mesh8):
    """FA's fixed B (network state) and KP's learned B (params) follow W's split over
    "model"; two epochs of fit on the (4, 2) mesh equal one device."""
    specs = mesh8["tp_fb_specs"]
    assert specs["state"] == {
        "dense_0": {"feedback": {"w": "P(None, 'model')"}},
        "tanh_1": {},
        "dense_2": {},
        "tanh_3": {},
        "dense_4": {},
    }
    assert specs["kp"] == {
        "w": "P('model', None)",
        "b": "P()",
        "feedback": {"w": "P('model', None)"},
    }
    f = mesh8["tp_fb"]
    assert f["moved"] > 1e-3 and f["param_rel"] < 1e-11 and f["b_fixed"] == 0.0
    assert f["state_spec"] == "P(None, 'model')"
    assert f["kp_spec"] in ("P('model', None)", "P('model',)")  # XLA drops trailing Nones


def test_explicit_axes_reject_the_handwritten_contraction(mesh8):
    """jax.make_mesh's default Explicit axes: aᵀ @ δ over a sharded batch is a sharding error,
    which is why data_parallel_mesh builds Auto axes."""
    assert mesh8["explicit_axis_types"] == ["AxisType.Explicit"]
    kind, message = mesh8["explicit_error"]
    assert kind == "ShardingTypeError"
    assert "Contracting dimensions are sharded" in message


def test_scaling_doc_example_on_8_devices(mesh8):
    assert mesh8["doc_example"]["grad_rel"] < F32_RTOL
    assert mesh8["doc_example"]["replicated"]


def test_scaling_doc_example_on_one_device():
    doc = Path(__file__).parents[1] / "docs" / "scaling.md"
    block = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S)[0]
    exec(compile(block, "docs/scaling.md", "exec"), {})


def test_twenty_steps_on_8_devices_match_one_device(mesh8):
    assert mesh8["steps20_moved"] > 1e-3  # the parameters did change
    assert mesh8["steps20_param_rel"] < 1e-11
    assert mesh8["steps20_replicated"]


def test_batch_norm_and_dropout_data_parallel(mesh8):
    """Batch statistics are reduced over the global batch and dropout masks do not depend on
    the sharding: gradients, loss and new running statistics equal the one-device ones."""
    assert mesh8["bn_dropout_grad_rel"] < F64_RTOL
    assert mesh8["bn_dropout_loss_rel"] < F64_RTOL
    assert mesh8["bn_dropout_state_rel"] < F64_RTOL
    assert mesh8["bn_state_replicated"]
    assert mesh8["sm_bn_finite"]


def test_shard_map_pmean_of_handwritten_gradients_is_1x(mesh8):
    _assert_factor(mesh8["sm_factor"], 1.0, "shard_map_value_and_grad")
    assert mesh8["sm_loss_rel"] < F64_RTOL
    assert mesh8["sm_outputs_replicated"]
    _assert_factor(mesh8["pitfall_manual_pmean_novma"], 1.0, "handwritten, check_vma=False")


def test_jax_grad_inside_shard_map_pitfall(mesh8):
    """jax.grad inside shard_map (check_vma=True, the default) already psums the gradient of a
    replicated parameter, so a pmean after it leaves N = 8 times the true gradient. With
    check_vma=False there is no implicit psum (pmean gives 1x); differentiating the pmean-ed
    loss gives 1x too."""
    _assert_factor(mesh8["pitfall_jaxgrad_pmean_vma"], 8.0, "jax.grad then pmean, check_vma")
    _assert_factor(mesh8["pitfall_jaxgrad_pmean_novma"], 1.0, "jax.grad then pmean, no vma")
    _assert_factor(mesh8["pitfall_grad_of_pmean_loss_vma"], 1.0, "jax.grad of pmean(loss)")


def test_errors_on_8_devices(mesh8):
    e = mesh8["errors"]
    for name in ("sm", "shard_batch"):
        assert e[name][0] == "ValueError"
    assert e["dp"][1].startswith("data_parallel_value_and_grad: the batch size must be divisible")
    assert e["sm"][1].startswith("shard_map_value_and_grad: the batch size must be divisible")
    assert "8 devices" in e["dp"][1] and "batch of 12" in e["dp"][1]
    assert e["shard_batch"][1].startswith("shard_batch:")
    assert e["mesh"] == [
        "ValueError",
        "data_parallel_mesh: asked for 16 devices, but 8 are available (cpu)",
    ]
    assert e["mesh_shape"][1] == "data_parallel_mesh: mesh_shape (3, 2) needs 6 devices, got 8"


def test_fit_with_mesh_matches_one_device(mesh8):
    f = mesh8["fit"]
    if f is None:
        pytest.fail("manual_bp.train.fit has no mesh= argument")
    assert f["moved"] > 1e-3
    # 1e-9, not 1e-12: the bias feeding batch norm has a zero gradient up to rounding, which
    # Adam scales up to lr·|g|/ε ≈ 1e-11 per step, with a sign set by the order of the sums
    assert f["param_rel"] < 1e-9
    assert f["state_rel"] < 1e-9
    np.testing.assert_allclose(f["loss"][1], f["loss"][0], rtol=1e-12)
    assert f["replicated"]
    # the compiled epoch: partitioned over 8 devices, 2 local rows per dense, an all-reduce
    sharded = [e for e in f["compiled_epochs"] if e["partitions"] == 8]
    assert sharded, f["compiled_epochs"]
    assert all(e["all_reduce"] >= 1 and e["local_dot"] for e in sharded)
    assert f["indivisible"].startswith("fit: the batch size must be divisible by the 8 devices")


def test_feedback_alignment_fit_with_mesh_matches_one_device(mesh8):
    """FA's fixed matrices travel in the network state: replicated on the mesh, unchanged by
    training, and the sharded run equals the one-device run."""
    f = mesh8["fit_feedback"]
    assert f["moved"] > 1e-3
    assert f["param_rel"] < 1e-12
    assert f["b_fixed"] == 0.0
    assert f["replicated"]


def test_cli_devices_8(mesh8):
    c = mesh8["cli"]
    if c is None:
        pytest.fail("manual-bp train has no --devices option")
    for name in ("devices8", "mesh4x2"):
        assert c[name]["code"] == 0, c[name]
        assert c[name]["stdout_tail"][-2].startswith("final test accuracy"), c[name]
    errors = {
        "too_many": "argument --devices: asked for 16 devices, but 8 are available",
        "indivisible": "argument --batch-size: 12 is not divisible by the 8 devices of the "
        "'data' mesh axis",
        "shape_mismatch": "argument --mesh-shape: 4x2 has 8 devices, but --devices is 4",
        "bad_shape": "argument --mesh-shape: expected DATA or DATAxMODEL",
    }
    for name, start in errors.items():
        got = c[name]
        assert got["code"] == 2, got
        assert got["stderr"].count("\n") == 1, got["stderr"]  # one line, no traceback
        assert got["stderr"].startswith(f"manual-bp train: error: {start}"), got["stderr"]


def test_cli_too_many_devices_one_line(capsys, tmp_path, monkeypatch):
    from manual_bp.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--devices", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("manual-bp train: error: argument --devices: asked for 2 devices, ")
    assert "xla_force_host_platform_device_count=2" in err
    assert not (tmp_path / "runs").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_one_step_matches_single_process():
    """Two processes x 2 CPU devices, jax.distributed over 127.0.0.1 (gloo collectives); each
    feeds its half of the batch (jax.make_array_from_process_local_data). One Adam step must
    give the parameters of a single-process step on the whole batch."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "process", str(i), str(port)],
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=180)
            assert p.returncode == 0, stderr[-4000:]
            outs.append(_json(stdout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [o["process_index"] for o in outs] == [0, 1]
    for o in outs:
        assert o["process_count"] == 2
        assert o["device_count"] == 4 and o["local_device_count"] == 2
    assert [o["rows"] for o in outs] == [[0, 8], [8, 16]]

    # the same step in this (single-device) process, on the whole batch
    sys.path.insert(0, str(WORKER.parent))
    try:
        import _parallel_worker as w
    finally:
        sys.path.remove(str(WORKER.parent))
    net, params, x, y = w.problem(jnp.float64, seed=7)
    opt = optax.adam(1e-2)
    c, g = jax.jit(value_and_grad(net, LOSS))(params, x, y)
    with jax.numpy_dtype_promotion("standard"):
        u, _ = opt.update(g, opt.init(params), params)
        expected = optax.apply_updates(params, u)
    for o in outs:
        assert o["loss"] == pytest.approx(float(c), rel=1e-12)
        got = {k: {n: np.asarray(v) for n, v in layer.items()} for k, layer in o["params"].items()}
        assert w.max_rel(got, expected) < 1e-12
        assert w.max_rel(params, expected) > 1e-4  # the step moved the parameters


@pytest.mark.slow
def test_cli_two_processes_train_like_one(tmp_path, monkeypatch):
    """``manual-bp train --devices 4 --coordinator ...`` in two processes (2 CPU devices
    each): the same per-epoch losses as a one-device run of the same command."""
    from manual_bp.cli import main

    monkeypatch.chdir(tmp_path)
    short = ["train", "--epochs", "2", "--hidden", "32", "--batch-size", "64"]
    port = _free_port()
    command = [sys.executable, "-c", "import sys; from manual_bp.cli import main; sys.exit(main())"]
    procs = [
        subprocess.Popen(
            [
                *command,
                *short,
                *("--devices", "4", "--coordinator", f"127.0.0.1:{port}"),
                *("--num-processes", "2", "--process-id", str(i), "--out", f"p{i}"),
            ],
            env=_env(2),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        for p in procs:
            _, stderr = p.communicate(timeout=240)
            assert p.returncode == 0, stderr[-4000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert main([*short, "--out", "one"]) == 0

    def losses(folder):
        lines = (tmp_path / folder / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["train_loss"] for line in lines]

    expected = losses("one")
    assert len(expected) == 2
    for folder in ("p0", "p1"):
        np.testing.assert_allclose(losses(folder), expected, rtol=1e-4)


def test_mesh_api_on_one_device():
    mesh = parallel.data_parallel_mesh()
    assert mesh.axis_names == ("data",) and parallel.data_axis_size(mesh) == 1
    assert parallel.parse_mesh_shape("4x2") == (4, 2)
    assert parallel.parse_mesh_shape("8") == (8,)
    for bad in ("4x", "0", "2x2x2", "a", ""):
        with pytest.raises(ValueError, match="parse_mesh_shape: expected DATA or DATAxMODEL"):
            parallel.parse_mesh_shape(bad)
    with pytest.raises(
        ValueError, match=r"data_parallel_mesh: asked for 2 devices, but 1 is available \(cpu\)"
    ):
        parallel.data_parallel_mesh(2)
    with pytest.raises(TypeError, match="data_parallel_mesh: devices must be"):
        parallel.data_parallel_mesh("cpu")
    with pytest.raises(ValueError, match=r"mesh_shape \(2,\) needs 2 devices, got 1"):
        parallel.data_parallel_mesh(mesh_shape=(2,))
    with pytest.raises(TypeError, match=r"replicate: mesh must be a jax\.sharding\.Mesh, got str"):
        parallel.replicate({}, "mesh")


def test_initialize_distributed_arguments(monkeypatch):
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    assert parallel.initialize_distributed() is False  # nothing set: single process
    with pytest.raises(ValueError, match="missing num_processes, process_id"):
        parallel.initialize_distributed("127.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="num_processes from the environment must be an int"):
        parallel.initialize_distributed("127.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "2")
    with pytest.raises(ValueError, match="0 <= process_id < num_processes"):
        parallel.initialize_distributed("127.0.0.1:1234")
    with pytest.raises(ValueError, match="coordinator must be HOST:PORT, got 'nowhere'"):
        parallel.initialize_distributed("nowhere", 2, 0)

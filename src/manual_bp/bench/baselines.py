"""The baselines: each benchmarked architecture in PyTorch (eager and ``torch.compile``),
and the MLPs in plain numpy, as runners beside the JAX steps.

PyTorch is optional (``pip install 'manual_bp[bench]'``): without it :func:`torch_runners`
returns no runners and the reason, which the report prints.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .models import Case
from .timing import Runner, time_steps

__all__ = [
    "best_torch",
    "blas_limit",
    "numpy_mlp_step",
    "numpy_runner",
    "torch_batch",
    "torch_model",
    "torch_runners",
    "torch_step",
]


# ---- PyTorch twins ---------------------------------------------------------------------------


def torch_model(case: Case) -> Any:
    """The same architecture as a ``torch.nn.Module`` (NCHW for the CNN), mapping the suite's
    inputs to logits (N, classes) or (N, T, vocab)."""
    import torch
    from torch import nn as tnn

    spec = case.torch_spec
    kind = spec["kind"]
    if kind == "mlp":
        widths, act = spec["widths"], {"relu": tnn.ReLU, "sigmoid": tnn.Sigmoid}[spec["activation"]]
        layers: list[Any] = []
        for a, b in itertools.pairwise(widths[:-1]):
            layers += [tnn.Linear(a, b), act()]
        layers.append(tnn.Linear(widths[-2], widths[-1]))
        return tnn.Sequential(*layers)
    if kind == "cnn":
        c1, c2 = spec["channels"]
        return tnn.Sequential(
            tnn.Conv2d(1, c1, 3, padding=1, bias=False),
            tnn.BatchNorm2d(c1),
            tnn.ReLU(),
            tnn.MaxPool2d(2),
            tnn.Conv2d(c1, c2, 3, padding=1, bias=False),
            tnn.BatchNorm2d(c2),
            tnn.ReLU(),
            tnn.MaxPool2d(2),
            tnn.Flatten(),
            tnn.Linear(c2 * 2 * 2, spec["hidden"]),
            tnn.ReLU(),
            tnn.Linear(spec["hidden"], 10),
        )
    if kind == "lstm":

        class LSTMClassifier(tnn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lstm = tnn.LSTM(8, spec["hidden"], batch_first=True)
                self.head = tnn.Linear(spec["hidden"], 10)

            def forward(self, x):
                hs, _ = self.lstm(x)
                return self.head(hs[:, -1])

        return LSTMClassifier()
    if kind == "transformer":
        f, heads, vocab, t = spec["features"], spec["heads"], spec["vocab"], case.x_shape[1]

        class Block(tnn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.norm1, self.norm2 = tnn.LayerNorm(f), tnn.LayerNorm(f)
                self.attn = tnn.MultiheadAttention(f, heads, batch_first=True)
                self.mlp = tnn.Sequential(tnn.Linear(f, 2 * f), tnn.GELU(), tnn.Linear(2 * f, f))

            def forward(self, x, mask):
                h = self.norm1(x)
                x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
                return x + self.mlp(self.norm2(x))

        class LM(tnn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = tnn.Embedding(vocab, f)
                self.pos = tnn.Parameter(torch.zeros(t, f))
                self.blocks = tnn.ModuleList(Block() for _ in range(spec["blocks"]))
                self.norm = tnn.LayerNorm(f)
                self.head = tnn.Linear(f, vocab)
                self.register_buffer("mask", torch.triu(torch.ones(t, t, dtype=torch.bool), 1))

            def forward(self, ids):
                x = self.embed(ids) + self.pos
                for block in self.blocks:
                    x = block(x, self.mask)
                return self.head(self.norm(x))

        return LM()
    raise ValueError(f"no PyTorch twin for {kind!r}")


def torch_batch(case: Case, x: Any, y: Any) -> tuple[Any, Any]:
    """The suite's batch as torch tensors (NHWC images become NCHW)."""
    import torch

    x, y = np.asarray(x), np.asarray(y)
    if case.torch_spec["kind"] == "cnn":
        x = np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))
    xt = torch.from_numpy(x.astype(np.int64) if case.x_kind == "ids" else x.astype(np.float32))
    return xt, torch.from_numpy(y.astype(np.int64))


def torch_step(case: Case, model: Any, lr: float) -> Callable[[Any, Any], Any]:
    """One training step (forward, backward, SGD update) of ``model`` on (x, y)."""
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ce = torch.nn.functional.cross_entropy

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = ce(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        return loss

    return step


_TORCH_DEFAULT_THREADS: dict[str, int] = {}


def torch_runners(
    case: Case, x: Any, y: Any, lr: float, compile_torch: bool, threads: int | None
) -> tuple[dict[str, Runner], dict[str, Any]]:
    """PyTorch eager (and compiled) step runners, or none with the reason.

    Each variant runs once per thread count (``name@threads``: 1 and PyTorch's default, or
    ``threads``); :func:`best_torch` keeps the faster. On a busy machine PyTorch's OpenMP
    barriers make 2 threads slower than 1 at times, so neither count is always right.
    """
    try:
        import torch
    except ImportError:
        return {}, {"skipped": "PyTorch is not installed (pip install 'manual_bp[bench]')"}
    torch.manual_seed(0)
    default = _TORCH_DEFAULT_THREADS.setdefault("n", torch.get_num_threads())
    counts = [threads] if threads else sorted({1, default})
    info: dict[str, Any] = {"version": torch.__version__, "threads_tried": counts}
    xt, yt = torch_batch(case, x, y)
    steps = {"torch_eager": torch_step(case, torch_model(case), lr)}
    if compile_torch:
        try:
            step = torch_step(case, torch.compile(torch_model(case)), lr)
            t0 = time.perf_counter()
            step(xt, yt)
            step(xt, yt)
            info["compile_s"] = time.perf_counter() - t0
            steps["torch_compile"] = step
        except Exception as e:  # a missing compiler toolchain, an unsupported op, ...
            info["compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    runners: dict[str, Runner] = {}
    for name, step in steps.items():
        for _ in range(3):  # first calls initialize the allocator and kernels
            step(xt, yt)
        for n in counts:

            def run(k: int, step: Callable[..., Any] = step, n: int = n) -> int:
                torch.set_num_threads(n)
                for _ in range(k):
                    step(xt, yt)
                return k

            runners[f"{name}@{n}"] = run
    return runners, info


def best_torch(times: dict[str, dict[str, Any]]) -> None:
    """Replace the ``name@threads`` entries of ``times`` by ``name``, the faster thread count
    (its ``threads`` recorded; the others kept under ``others``)."""
    for name in ("torch_eager", "torch_compile"):
        variants = {k: times.pop(k) for k in list(times) if k.startswith(name + "@")}
        if variants:
            best = min(variants, key=lambda k: variants[k]["median_s"])
            times[name] = dict(variants[best], threads=int(best.split("@")[1]))
            times[name]["others"] = {k: v["median_s"] for k, v in variants.items() if k != best}


# ---- plain numpy -----------------------------------------------------------------------------


def numpy_mlp_step(
    case: Case, lr: float, seed: int = 0
) -> Callable[[np.ndarray, np.ndarray], float]:
    """The lecture's algorithm in float32 numpy for an MLP case: forward keeping every
    activation, δ = σ'(z)·(W δ') from the output back, ∂C/∂W = aᵀδ, then SGD."""
    rng = np.random.default_rng(seed)
    widths = case.mlp_widths
    ws = [
        (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        for a, b in itertools.pairwise(widths)
    ]
    bs = [np.zeros(b, np.float32) for b in widths[1:]]
    sigmoid = case.mlp_activation == "sigmoid"

    def step(x: np.ndarray, y: np.ndarray) -> float:
        acts = [x]
        for w, b in zip(ws[:-1], bs[:-1], strict=True):
            z = acts[-1] @ w + b
            acts.append(1.0 / (1.0 + np.exp(-z)) if sigmoid else np.maximum(z, 0.0))
        logits = acts[-1] @ ws[-1] + bs[-1]
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        n = x.shape[0]
        loss = float(-np.log(p[np.arange(n), y] + 1e-30).mean())
        delta = p
        delta[np.arange(n), y] -= 1.0
        delta /= n
        for i in range(len(ws) - 1, -1, -1):
            a = acts[i]
            dw, db = a.T @ delta, delta.sum(axis=0)
            if i:
                da = delta @ ws[i].T
                delta = da * a * (1.0 - a) if sigmoid else da * (a > 0)
            ws[i] -= lr * dw
            bs[i] -= lr * db
        return loss

    return step


def blas_limit(threads: int | None) -> Any:
    """A context limiting numpy's BLAS threads (a no-op for ``None`` or without
    threadpoolctl)."""
    if threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(threads, user_api="blas")


def _numpy_threads(step: Callable[..., Any], *args: Any) -> int | None:
    """numpy's best BLAS thread count here, 1 or the default (``None``)."""
    tried = {}
    for n in (None, 1):
        with blas_limit(n):
            step(*args)
            tried[n] = min(time_steps(step, *args) for _ in range(3))
    return min(tried, key=lambda n: tried[n])


def numpy_runner(case: Case, x: Any, y: Any, lr: float) -> tuple[Runner, dict[str, Any]]:
    """The numpy step of an MLP case on the batch ``(x, y)`` as a runner, and its BLAS thread
    count (``blas_threads``: time it under :func:`blas_limit` of that count)."""
    step = numpy_mlp_step(case, lr)
    xn, yn = np.asarray(x, np.float32), np.asarray(y)
    info = {"blas_threads": _numpy_threads(step, xn, yn)}

    def run(k: int) -> int:
        for _ in range(k):
            step(xn, yn)
        return k

    return run, info

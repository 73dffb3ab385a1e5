"""The JAX training steps: forward, the backward of one side and an optax update, run as a
Python loop of jitted steps or as jitted ``lax.scan`` epochs; and their compile time and XLA
memory figures.

``kind`` is ``"manual"`` (:func:`manual_bp.value_and_grad`, the handwritten backward) or
``"reference"`` (``jax.grad`` of the independent reference network), or, for a network without
state, ``"forward_grad"`` (:func:`manual_bp.forward_grad.weight_perturbed`: one forward-mode
pass and no backward). :func:`jvp_runner` times the loss and its directional derivative,
:func:`manual_bp.value_and_jvp` against ``jax.jvp`` of the reference loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

import reference

from .. import forward_grad
from ..grad import value_and_grad, value_and_jvp
from .models import LOSS, Case
from .timing import Runner, call_runner, compiled_memory

__all__ = ["LR", "compile_report", "jvp_runner", "loop_runner", "make_step", "scan_runner"]

LR = 0.01
"""The SGD learning rate of every variant."""


def _grad_fn(case: Case, kind: str) -> Callable[..., Any]:
    if kind == "forward_grad":
        estimate = forward_grad.weight_perturbed(case.net, LOSS)
        key = jax.random.key(1)  # one fixed draw: the time does not depend on its values
        return lambda params, x, y: estimate(params, x, y, key)
    make = value_and_grad if kind == "manual" else reference.value_and_grad
    return make(case.net, LOSS, has_state=case.stateful)


def make_step(
    case: Case, kind: str, optimizer: optax.GradientTransformation
) -> Callable[[Any, Any], tuple[Any, Any]]:
    """``step(carry, batch) -> (carry, loss)`` with ``carry = (params, opt_state, state)``:
    forward, the backward of ``kind`` ("manual" or "reference"; "forward_grad": a forward-mode
    pass instead) and an optax update."""
    f = _grad_fn(case, kind)
    stateful = case.stateful

    def step(carry, batch):
        params, opt_state, state = carry
        x, y = batch
        if stateful:
            (c, state), grads = f(params, state, x, y)
        else:
            c, grads = f(params, x, y)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return (params, opt_state, state), c

    return step


def _own_copy(tree: Any) -> Any:
    """A copy of every array: each runner donates (consumes) its own carry."""
    return jax.tree.map(jnp.copy, tree)


def loop_runner(step: Callable[..., Any], carry: Any, batch: Any) -> Runner:
    """A Python loop of jitted steps; each step donates its carry (params, optimizer state,
    network state) to the next, as a training loop does."""
    jitted = jax.jit(step, donate_argnums=0)
    box = [_own_copy(carry)]

    def run(k: int) -> int:
        carry = box[0]
        for _ in range(k):
            carry, c = jitted(carry, batch)
        jax.block_until_ready(c)
        box[0] = carry
        return k

    return run


def scan_runner(step: Callable[..., Any], carry: Any, batches: Any, steps: int) -> Runner:
    """Epochs of ``steps`` steps, each one jitted ``lax.scan`` (donating its carry)."""
    epoch = jax.jit(lambda carry, xs: lax.scan(step, carry, xs), donate_argnums=0)
    box = [_own_copy(carry)]

    def run(k: int) -> int:
        carry = box[0]
        for _ in range(k):
            carry, losses = epoch(carry, batches)
        jax.block_until_ready(losses)
        box[0] = carry
        return k * steps

    return run


def jvp_runner(case: Case, kind: str, params: Any, batch: Any) -> Runner:
    """(C, ∇C·v) along a fixed tangent v of the parameters, jitted: ``"manual"`` runs every
    layer's handwritten jvp (:func:`manual_bp.value_and_jvp`), ``"reference"`` is ``jax.jvp``
    of the reference loss. A network without state."""
    x, y = batch
    v = jax.tree.map(jnp.ones_like, params)
    if kind == "manual":
        f = jax.jit(lambda p, x, y: value_and_jvp(case.net, LOSS)(p, x, y, v))
    else:

        def loss(p, x, y):
            return reference.FORWARD[LOSS](reference.forward(case.net, p, x, train=True), y)

        f = jax.jit(lambda p, x, y: jax.jvp(lambda q: loss(q, x, y), (p,), (v,)))
    return call_runner(f, params, x, y)


def compile_report(step: Callable[..., Any], carry: Any, batch: Any) -> dict[str, Any]:
    """Seconds to trace, lower and compile a fresh jit of ``step``, and XLA's memory figures."""
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(carry, batch).compile()
    return {"compile_s": time.perf_counter() - t0, "xla_memory_bytes": compiled_memory(compiled)}

"""Per-example gradients and their statistics, from the handwritten rules under ``jax.vmap``.

Every loss here is a mean over the batch, C = (1/N) Σₙ Cⁿ, so the batch gradient is the mean
of the per-example gradients gₙ = ∂Cⁿ/∂θ. With the gₙ in hand (one backward pass per example,
vectorized), the quantities BackPACK computes follow directly:

* ‖gₙ‖, the per-example gradient norm (what DP-SGD clips);
* the mean ḡ = (1/N) Σ gₙ (the usual gradient), the second moment (1/N) Σ gₙ², and the
  variance (1/N) Σ (gₙ − ḡ)², element-wise for every parameter.

Networks with batch statistics (batch norm) couple the examples, so they have no per-example
gradient; they are refused. Dropout draws example n's mask from ``fold_in(key, n)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .grad import value_and_grad
from .nn import Layer, check_params, has_state
from .nn.core import check_input
from .rules import Rule, get_rule

__all__ = ["clip_per_example", "gradient_statistics", "per_example_grads"]


def per_example_grads(
    net: Layer, loss: Rule | str, *, train: bool = True
) -> Callable[..., tuple[Any, Any]]:
    """``f(params, x, y, key=None) -> (losses (N,), grads)``: each leaf of ``grads`` has a
    leading axis of N, ``grads[...][n]`` = ∂Cⁿ/∂θ from the handwritten backward pass of
    example n alone (a batch of one, vectorized with ``jax.vmap``)."""
    if not isinstance(net, Layer):
        raise TypeError(f"per_example_grads: expected a manual_bp.nn.Layer, got {net!r}")
    if has_state(net):
        raise ValueError(
            "per_example_grads: the network keeps batch statistics (batch norm), which couple "
            "the examples of a batch: there is no per-example gradient; use LayerNorm instead"
        )
    loss = get_rule(loss)
    one = value_and_grad(net, loss, train=train)

    def f(params, x, y, key=None):
        check_input(net, x)
        check_params(net, params, x.shape)
        n = x.shape[0]
        if n == 0:
            raise ValueError("per_example_grads: the batch is empty")
        if y.shape[:1] != (n,):
            raise ValueError(
                f"per_example_grads: y must have one entry per example ({n}), got shape "
                f"{tuple(y.shape)}"
            )
        keys = (
            None if key is None else jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
        )

        def single(xn, yn, kn):
            return one(params, xn[None], yn[None], kn)

        return jax.vmap(single, in_axes=(0, 0, None if keys is None else 0))(x, y, keys)

    return f


def _flat_norms(grads: Any) -> Any:
    squares = [
        jnp.sum(jnp.reshape(g * g, (g.shape[0], -1)), axis=1) for g in jax.tree.leaves(grads)
    ]
    return jnp.sqrt(sum(squares))


def gradient_statistics(
    net: Layer, loss: Rule | str, *, train: bool = True
) -> Callable[..., dict[str, Any]]:
    """``f(params, x, y, key=None) -> {"loss", "mean", "second_moment", "variance", "norms"}``.

    ``mean`` is the batch gradient (1/N) Σ gₙ; ``second_moment`` (1/N) Σ gₙ² and ``variance``
    (1/N) Σ (gₙ − ḡ)² are element-wise, shaped like the params; ``norms`` (N,) holds ‖gₙ‖ over
    all parameters; ``loss`` is the batch loss (1/N) Σ Cⁿ.
    """
    grads_fn = per_example_grads(net, loss, train=train)

    def f(params, x, y, key=None):
        losses, grads = grads_fn(params, x, y, key)
        mean = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
        second = jax.tree.map(lambda g: jnp.mean(g * g, axis=0), grads)
        variance = jax.tree.map(lambda g, m: jnp.mean(jnp.square(g - m[None]), axis=0), grads, mean)
        return {
            "loss": jnp.mean(losses),
            "mean": mean,
            "second_moment": second,
            "variance": variance,
            "norms": _flat_norms(grads),
        }

    return f


def clip_per_example(grads: Any, max_norm: float) -> tuple[Any, Any]:
    """DP-SGD's clipping: gₙ · min(1, max_norm / ‖gₙ‖), then the mean over the batch.

    ``grads`` as returned by :func:`per_example_grads` (leading axis N). Returns the clipped
    mean gradient and the per-example norms before clipping.
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, int | float) or not max_norm > 0:
        raise ValueError(f"clip_per_example: max_norm must be a positive number, got {max_norm!r}")
    leaves = jax.tree.leaves(grads)
    if not leaves:
        raise ValueError("clip_per_example: grads holds no arrays")
    sizes = {tuple(jnp.shape(g)[:1]) for g in leaves}
    if len(sizes) != 1 or () in sizes:
        raise ValueError(
            "clip_per_example: every leaf of grads needs the same leading (per-example) axis, "
            f"as per_example_grads returns; got leading sizes {sorted(sizes)}"
        )
    norms = _flat_norms(grads)
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norms, jnp.finfo(norms.dtype).tiny))

    def clip(g):
        s = jnp.reshape(scale, (-1,) + (1,) * (g.ndim - 1)).astype(g.dtype)
        return jnp.mean(g * s, axis=0)

    return jax.tree.map(clip, grads), norms

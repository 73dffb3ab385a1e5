"""Layers and networks: stax-style pure functions with named layers; a network is a layer.

Every layer is a :class:`Layer`, a NamedTuple of pure functions:

* ``init(key, input_shape, dtype=float32) -> params``
* ``forward(params, x, ctx=None) -> (y, tape)``: the forward pass keeps what the backward needs
  — for a dense layer the input activation ``a``, which is ∂z/∂w;
* ``backward(params, tape, dy) -> (grads, deltas, dx)``: turns ∂C/∂(output) into the
  gradients of its own parameters and ∂C/∂(input), which is the previous layer's delta.
  ``deltas`` maps the names of the layers *inside* it to ∂C/∂(their output).
* ``output_shape(input_shape) -> shape``;
* ``jvp(params, tape, dparams, dx) -> dy``: forward mode, the tangent of the output along
  tangents of the parameters and the input (:mod:`manual_bp.nn.tangents`);
* ``init_state(key, input_shape, dtype=float32) -> state`` and ``state_of(tape) -> state``:
  the layer's non-trained state (batch-norm running statistics), ``{}`` for most layers.

``kind``, ``config`` and ``children`` describe the layer (what it is and its settings) so that
other code — the reference implementation, plots, checkpoints — can read a network without
calling it.

Modes, randomness and state
---------------------------
A forward pass runs in evaluation mode unless it is given a :class:`Context`
``ctx = Context(train=True, key=k, state=s)``. Nothing is mutated: a layer reads its state from
``ctx.state`` and the new state is read back from the tape, ``net.state_of(tape)``, a tree of
the same structure as ``net.init_state(...)`` (a dict by layer name, like ``params``).
Combinators hand child i the context ``ctx.child(i, name)``: the key folded with the child's
position, ``jax.random.fold_in(key, i)``, and the state under the child's name. So every
random layer draws from its own key, a network's masks are a pure function of (key, position),
and the reference reproduces them from the description alone.
:func:`manual_bp.value_and_grad` with ``has_state=True`` wraps all of this.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._checks import prefix_errors, require_array, require_ndim
from ..rules import Rule
from ..rules.stochastic import require_key
from .tangents import serial_jvp

__all__ = [
    "Context",
    "Layer",
    "Params",
    "Shape",
    "State",
    "Tape",
    "by_layer",
    "check_context",
    "check_input",
    "check_layer_name",
    "check_params",
    "check_state",
    "child_context",
    "forward_order",
    "has_state",
    "parameter_free",
    "residual",
    "same_shape",
    "serial",
    "serial_backward",
]

Shape = tuple[int, ...]
Params = Any
State = Any
Tape = Any


def same_shape(shape: Shape) -> Shape:
    """The output shape of a shape-preserving layer."""
    return tuple(shape)


class Context(NamedTuple):
    """How a forward pass runs: ``train`` (a Python bool: training or evaluation mode), ``key``
    (a PRNG key for random layers such as dropout, or ``None``) and ``state`` (this layer's
    state, e.g. batch norm's running statistics, or ``None``).

    ``forward(params, x)`` without a context is evaluation mode with no key and no state.
    ``taps``, if a dict, collects every layer's output under the name its delta has (the
    combinators record their children's outputs as they go; ``path`` is the name prefix).
    """

    train: bool = False
    key: Any = None
    state: State = None
    taps: dict[str, Any] | None = None
    path: str = ""

    def child(self, index: int, name: str) -> Context:
        """The context of a combinator's child ``index`` named ``name``: the key folded with
        the index, ``jax.random.fold_in(key, index)``, and the state under ``name``."""
        key = None if self.key is None else jax.random.fold_in(self.key, index)
        state = None if self.state is None else self.state.get(name)
        return Context(self.train, key, state, self.taps, f"{self.path}{name}/")

    def tap(self, name: str, value: Any) -> None:
        """Record a child's output under its delta name, if this forward pass collects taps."""
        if self.taps is not None:
            self.taps[f"{self.path}{name}"] = value


def _no_state(key, input_shape, dtype=jnp.float32) -> State:
    del key, input_shape, dtype
    return {}


def _no_new_state(tape) -> State:
    del tape
    return {}


def check_context(op: str, ctx: Any) -> Context | None:
    """``ctx`` if it is ``None`` or a well-formed :class:`Context`; otherwise a TypeError naming
    ``op`` (the layer), the field, what it must be and what it is. Runs at trace time only."""
    if ctx is None:
        return None
    if not isinstance(ctx, Context):
        raise TypeError(
            f"{op}: the forward pass's context must be a manual_bp.nn.Context or None, "
            f"got {type(ctx).__name__}"
        )
    if not isinstance(ctx.train, bool):
        raise TypeError(
            f"{op}: Context.train must be a Python bool (it picks the compiled program), "
            f"got {type(ctx.train).__name__} {ctx.train!r}"
        )
    if ctx.key is not None:
        require_key(f"{op}: Context", ctx.key)
    if ctx.state is not None and not isinstance(ctx.state, Mapping):
        raise TypeError(
            f"{op}: Context.state must be a dict (net.init_state(...)) or None, "
            f"got {type(ctx.state).__name__}"
        )
    if ctx.taps is not None and not isinstance(ctx.taps, dict):
        raise TypeError(f"{op}: Context.taps must be a dict or None, got {type(ctx.taps).__name__}")
    if not isinstance(ctx.path, str):
        raise TypeError(f"{op}: Context.path must be a str, got {type(ctx.path).__name__}")
    return ctx


def child_context(ctx: Context | None, index: int, name: str) -> Context | None:
    """``ctx.child(index, name)``, or ``None`` (evaluation mode) when ``ctx`` is ``None``."""
    return None if ctx is None else ctx.child(index, name)


def check_layer_name(op: str, name: Any) -> None:
    """A layer name is a non-empty str without ``/`` (which joins nested names, as in
    ``deltas["block/dense_0"]``) or ``None`` (named by its combinator)."""
    if name is None:
        return
    if not isinstance(name, str):
        raise TypeError(f"{op}: a layer name must be a str or None, got {type(name).__name__}")
    if "/" in name:
        raise ValueError(
            f"{op}: layer name {name!r} contains '/', which separates nested layer names "
            "(deltas['outer/inner']); choose another name"
        )


class Layer(NamedTuple):
    """A layer: its description (``name``, ``kind``, ``config``, ``children``) and its functions.

    ``name`` is ``None`` until a combinator such as :func:`serial` names it, unless given.
    ``init_state`` and ``state_of`` default to "no state" (``{}``); ``jvp`` (forward mode,
    ``jvp(params, tape, dparams, dx) -> dy``, the transpose of ``backward``) to ``None``, a
    layer without forward mode.

    A layer written from scratch fills the fields so: ``init(key, input_shape, dtype)``
    returns its parameters, a dict of float arrays (``{}`` for none); ``forward(params, x,
    ctx=None)`` returns ``(y, tape)``, the tape holding whatever its backward needs (arrays
    or tuples of them, never state kept on the side); ``backward(params, tape, dy)`` returns
    ``(grads, deltas, dx)``: ``grads`` with the structure of ``params``, ``deltas`` ``{}``
    for a layer without children (a combinator maps each child's name to ∂C/∂(its output)),
    and ``dx`` = ∂C/∂x with x's shape. ``output_shape(input_shape)`` gives y's shape;
    ``kind`` names what it computes and ``config`` holds its settings, which a reference
    forward for that kind reads. :func:`manual_bp.nn.from_rule` fills them from a rule.
    """

    name: str | None
    kind: str
    config: Mapping[str, Any]
    init: Callable[..., Params]
    forward: Callable[..., tuple[Any, Tape]]
    backward: Callable[[Params, Tape, Any], tuple[Params, dict[str, Any], Any]]
    output_shape: Callable[[Shape], Shape]
    children: tuple[Layer, ...] = ()
    init_state: Callable[..., State] = _no_state
    state_of: Callable[[Tape], State] = _no_new_state
    jvp: Callable[[Params, Tape, Params, Any], Any] | None = None


def parameter_free(
    kind: str, rule: Rule, name: str | None, output_shape: Callable[[Shape], Shape], **static: Any
) -> Layer:
    """A parameter-free layer that applies one single-input rule; its tape is the residuals."""

    def init(key, input_shape, dtype=jnp.float32):
        del key, input_shape, dtype
        return {}

    def forward(params, x, ctx=None):
        del params
        return rule.fwd(x, **static)

    def backward(params, tape, dy):
        del params
        (dx,) = rule.bwd(tape, dy, **static)
        return {}, {}, dx

    def jvp(params, tape, dparams, dx):
        return rule.jvp(tape, dx, **static)

    layer = Layer(name, kind, dict(static), init, forward, backward, output_shape)
    return layer if rule.jvp is None else layer._replace(jvp=jvp)


def serial_backward(
    layers: Sequence[Layer],
    params: Params,
    tape: Sequence[Tape],
    dy: Any,
    redirect: Callable[[Layer, Any], Any] | None = None,
) -> tuple[Params, dict[str, Any], Any]:
    """The backward pass of :func:`serial` over ``layers`` (already named) and their tapes.

    Walks the layers in reverse: each receives ∂C/∂(its output) — recorded in ``deltas`` under
    its name — and hands ∂C/∂(its input) to the layer before it. ``redirect(layer, dx)``, if
    given, may replace what a layer hands back (direct feedback alignment sends the output
    error there instead).
    """
    grads, deltas_reversed = {}, []
    for layer, t in zip(reversed(layers), reversed(tape), strict=True):
        deltas_reversed.append((layer.name, dy))  # ∂C/∂(this layer's output)
        g, inner, dy = layer.backward(params[layer.name], t, dy)  # dy ← ∂C/∂(its input)
        if redirect is not None:
            dy = redirect(layer, dy)
        grads[layer.name] = g
        deltas_reversed.extend((f"{layer.name}/{k}", v) for k, v in reversed(list(inner.items())))
    grads = {layer.name: grads[layer.name] for layer in layers}
    return grads, dict(reversed(deltas_reversed)), dy


def serial(*layers: Layer, name: str | None = None) -> Layer:
    """Compose layers in order: the output of each is the input of the next.

    Unnamed layers are named ``f"{kind}_{position}"`` (``dense_0``, ``sigmoid_1``, ...).
    ``params`` (and ``state``) is a dict from each layer's name to its params (state); layer i
    runs in the context ``ctx.child(i, name)``. The backward pass walks the
    layers in reverse: each receives ∂C/∂(its output) — recorded in ``deltas`` under its name —
    and hands ∂C/∂(its input) to the layer before it.
    """
    if not layers:
        raise ValueError("serial: needs at least one layer")
    check_layer_name("serial", name)
    named = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"serial: argument {i} must be a manual_bp.nn.Layer, got {layer!r}")
        check_layer_name(f"serial: argument {i}", layer.name)
        named.append(layer if layer.name else layer._replace(name=f"{layer.kind}_{i}"))
    names = [layer.name for layer in named]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"serial: layer names must be unique, repeated: {duplicates}")
    named = tuple(named)

    def init(key, input_shape, dtype=jnp.float32):
        params, shape = {}, tuple(input_shape)
        for layer, k in zip(named, jax.random.split(key, len(named)), strict=True):
            params[layer.name] = layer.init(k, shape, dtype)
            shape = layer.output_shape(shape)
        return params

    def init_state(key, input_shape, dtype=jnp.float32):
        state, shape = {}, tuple(input_shape)
        for layer, k in zip(named, jax.random.split(key, len(named)), strict=True):
            state[layer.name] = layer.init_state(k, shape, dtype)
            shape = layer.output_shape(shape)
        return state

    def forward(params, x, ctx=None):
        check_context(name or "serial", ctx)
        tape = []
        for i, layer in enumerate(named):
            c = child_context(ctx, i, layer.name)
            x, t = prefix_errors(
                layer.name, lambda x=x, layer=layer, c=c: layer.forward(params[layer.name], x, c)
            )
            if ctx is not None:
                ctx.tap(layer.name, x)
            tape.append(t)  # the forward pass keeps every activation
        return x, tuple(tape)

    def state_of(tape):
        return {layer.name: layer.state_of(t) for layer, t in zip(named, tape, strict=True)}

    def backward(params, tape, dy):
        return serial_backward(named, params, tape, dy)

    def jvp(params, tape, dparams, dx):
        return serial_jvp(named, params, tape, dparams, dx)

    def output_shape(input_shape):
        shape = tuple(input_shape)
        for layer in named:
            shape = layer.output_shape(shape)
        return shape

    return Layer(
        name, "serial", {}, init, forward, backward, output_shape, named, init_state, state_of, jvp
    )


def residual(block: Layer, *, name: str | None = None) -> Layer:
    """y = x + block(x): a skip connection around ``block`` (whose output has x's shape).

    x feeds two paths, so ∂C/∂x is their sum (the lecture's sum over every path):
    dx = dy + block's dx. ``params = {block.name: block params}``; an unnamed block is named
    ``f"{block.kind}_0"``; the block runs in the context ``ctx.child(0, block.name)``.
    ``deltas`` holds ``block.name`` → dy (∂C/∂(block output) = ∂C/∂y)
    and the block's own deltas under ``block.name + "/"``.
    """
    if not isinstance(block, Layer):
        raise TypeError(f"residual: block must be a manual_bp.nn.Layer, got {block!r}")
    check_layer_name("residual", name)
    check_layer_name("residual: block", block.name)
    block = block if block.name else block._replace(name=f"{block.kind}_0")
    b = block.name

    def init(key, input_shape, dtype=jnp.float32):
        out = block.output_shape(tuple(input_shape))
        if tuple(out) != tuple(input_shape):
            raise ValueError(
                f"residual: block {b!r} must keep the input shape {tuple(input_shape)}, "
                f"its output is {tuple(out)}"
            )
        return {b: block.init(key, input_shape, dtype)}

    def init_state(key, input_shape, dtype=jnp.float32):
        return {b: block.init_state(key, input_shape, dtype)}

    def forward(params, x, ctx=None):
        check_context(name or "residual", ctx)
        h, tape = block.forward(params[b], x, child_context(ctx, 0, b))
        if ctx is not None:
            ctx.tap(b, h)
        return x + h, tape

    def state_of(tape):
        return {b: block.state_of(tape)}

    def backward(params, tape, dy):
        grads, inner, dx_block = block.backward(params[b], tape, dy)
        deltas = {f"{b}/{k}": v for k, v in inner.items()}
        deltas[b] = dy
        return {b: grads}, deltas, dy + dx_block  # both paths into x

    def jvp(params, tape, dparams, dx):
        return dx + serial_jvp((block,), params, (tape,), dparams, dx)

    fns = (init, forward, backward, same_shape, (block,), init_state, state_of, jvp)
    return Layer(name, "residual", {}, *fns)


def _describe(x: Any) -> str:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"array of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def _check_tree(expected: Any, got: Any, root: str, where: str) -> None:
    def walk(exp, got, path):
        if isinstance(exp, Mapping):
            if not isinstance(got, Mapping):
                raise TypeError(
                    f"{path}: expected a dict with keys {sorted(exp)}, got {_describe(got)}"
                )
            missing = sorted(set(exp) - set(got))
            extra = sorted(set(got) - set(exp))
            if missing or extra:
                raise ValueError(
                    f"{path}: keys do not match the network: missing {missing}, unexpected {extra}"
                )
            for k in exp:
                walk(exp[k], got[k], f"{path}[{k!r}]")
            return
        if not hasattr(got, "shape") or not hasattr(got, "dtype"):
            raise TypeError(f"{path}: expected an array of shape {exp.shape}, got {_describe(got)}")
        if tuple(got.shape) != tuple(exp.shape):
            raise ValueError(
                f"{path}: expected shape {tuple(exp.shape)} {where}, got {tuple(got.shape)}"
            )
        if not jnp.issubdtype(got.dtype, jnp.floating):
            raise TypeError(f"{path}: expected a floating dtype, got {got.dtype}")

    walk(expected, got, root)


def _expected(net: Layer, fn: Callable[..., Any], input_shape: Sequence[int]) -> Any:
    if not isinstance(net, Layer):
        raise TypeError(f"expected a manual_bp.nn.Layer, got {type(net).__name__}")
    return jax.eval_shape(
        lambda k: fn(k, tuple(input_shape)), jax.ShapeDtypeStruct((2,), jnp.uint32)
    )


def check_params(net: Layer, params: Params, input_shape: Sequence[int]) -> None:
    """Check that ``params`` has the structure, shapes and float dtypes ``net`` expects.

    The expected tree is what ``net.init`` builds for ``input_shape`` (computed abstractly,
    without allocating). Raises ValueError/TypeError naming the first mismatching path.
    """
    expected = _expected(net, lambda k, s: net.init(k, s), input_shape)
    _check_tree(expected, params, "params", f"for an input of shape {tuple(input_shape)}")


def check_state(net: Layer, state: State, input_shape: Sequence[int]) -> None:
    """Check that ``state`` matches what ``net.init_state`` builds for ``input_shape``;
    ValueError/TypeError naming the first mismatching path."""
    expected = _expected(net, lambda k, s: net.init_state(k, s), input_shape)
    _check_tree(expected, state, "state", f"for an input of shape {tuple(input_shape)}")


def by_layer(tree: Params) -> dict[str, Params]:
    """Every layer's own entry of a params-shaped tree (parameters or gradients), by layer path.

    A combinator's entry holds only its children's entries, by name, and is walked into; any
    other entry is a layer's (its arrays, and beside them any dicts of its own, such as the
    Kolen–Pollack feedback matrices): ``{"block": {"dense_0": {"w": ·, "b": ·}, "tanh_1": {}}}``
    gives ``{"block/dense_0": {"w": ·, "b": ·}}``. Entries without arrays (parameter-free
    layers) are left out; a tree that is one layer's own entry comes back under the path ``""``.
    """
    if not isinstance(tree, Mapping):
        raise TypeError(
            f"by_layer: tree must be a dict of parameters by layer name, got {_describe(tree)}"
        )
    entries: dict[str, Params] = {}

    def walk(entry: Any, path: str) -> None:
        children = (
            isinstance(entry, Mapping)
            and entry
            and all(isinstance(v, Mapping) for v in entry.values())
        )
        if children:
            for name, child in entry.items():
                walk(child, f"{path}{name}/")
        elif jax.tree.leaves(entry):
            entries[path.rstrip("/")] = entry

    walk(tree, "")
    return entries


def forward_order(net: Layer) -> list[str]:
    """Delta names in forward order (a container after its children), from the description."""

    def walk(layer, prefix):
        for child in layer.children:
            name = prefix + child.name
            yield from walk(child, name + "/")
            yield name

    return list(walk(net, ""))


def has_state(net: Layer) -> bool:
    """Whether ``net`` (or a layer inside it) keeps state, such as batch-norm statistics."""
    if net.children:
        return any(has_state(c) for c in net.children)
    return net.init_state is not _no_state


def check_input(net: Layer, x: Any) -> None:
    """Check that ``x`` is an array of rank >= 1; the first layer's rule checks its dtype
    (floating for most layers, integer ids for an embedding)."""
    op = net.name or net.kind
    require_array(op, "x", x)
    require_ndim(op, "x", x, at_least=1)

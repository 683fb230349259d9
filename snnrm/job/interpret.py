"""A small vectorised numpy interpreter of the NIR primitives the common exporters write.

It runs a NIR graph forward in fixed time steps of ``dt`` seconds (forward Euler, the discretisation of NIR's
reference equations) and counts the spikes every node emits, which is what the stage split needs. Supported:
Input, Output, Affine, Linear, Scale, Flatten, Conv2d, SumPool2d, Delay, Threshold, LIF, CubaLIF, IF, LI, CubaLI
and I (NIR's integrator). Any other node type is refused by name.

Semantics, per step t (``x`` is the sum of the node's inputs):

- LIF: ``v += dt / tau * (v_leak - v + r * x)``; spike where ``v > v_threshold``; ``v = v_reset`` there.
- CubaLIF: ``i += dt / tau_syn * (-i + w_in * x)``, then as LIF with ``r * i`` as the input.
- IF: ``v += dt * r * x``; spike and reset as LIF. I: ``v += dt * r * x`` (no spikes). LI/CubaLI: LIF/CubaLIF
  without spikes (the output is ``v``).
- Edges inside a recurrent cycle deliver the previous step's output (a one-step synaptic delay), as a chip does.

Batch dimensions are not used: one sample at a time, shapes as the node's ``input_type``/``output_type`` give them.
Nodes outside recurrent cycles map blocks of time steps at once (weights, convolutions and pooling have no state,
so a block of steps is one numpy call); neurons and delays step through the block. The numbers equal stepping the
whole graph once per step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from snnrm.core.split import GraphNode, units

Array = npt.NDArray[np.float64]
SUPPORTED = (
    "Input",
    "Output",
    "Affine",
    "Linear",
    "Scale",
    "Flatten",
    "Conv2d",
    "SumPool2d",
    "Delay",
    "Threshold",
    "LIF",
    "CubaLIF",
    "IF",
    "LI",
    "CubaLI",
    "I",
)
SPIKING = frozenset({"Input", "LIF", "CubaLIF", "IF", "Threshold"})


class GraphError(ValueError):
    """The graph cannot be run: the message names the node and what is wrong."""


PARAMETERS: dict[str, tuple[str, ...]] = {
    "Affine": ("weight", "bias"),
    "Linear": ("weight",),
    "Scale": ("scale",),
    "Conv2d": ("weight", "bias"),
    "Delay": ("delay",),
    "Threshold": ("threshold",),
    "LIF": ("tau", "r", "v_leak", "v_threshold", "v_reset"),
    "CubaLIF": ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"),
    "IF": ("r", "v_threshold", "v_reset"),
    "LI": ("tau", "r", "v_leak"),
    "CubaLI": ("tau_syn", "tau_mem", "r", "v_leak", "w_in"),
    "I": ("r",),
}
"""The numeric parameters of each supported type; every one must be real and finite."""
TIME_CONSTANTS = frozenset({"tau", "tau_syn", "tau_mem"})
_LARGEST_INT = 1 << 30  # bounds strides, kernels and shapes so converting them to int cannot overflow


def _ints(name: str, kind: str, field: str, value: Any, *, least: int, sizes: tuple[int, ...] = (1, 2)) -> list[int]:
    """``value`` as whole numbers >= ``least`` (one or two of them), or a GraphError naming the node and field."""
    a = np.atleast_1d(np.asarray(value))
    ok = a.ndim == 1 and a.size in sizes and a.dtype.kind in "biuf"
    if ok:
        with np.errstate(invalid="ignore"):
            ok = bool(np.isfinite(a).all() and (a == np.rint(a)).all() and (a >= least).all())
        ok = ok and bool((a <= _LARGEST_INT).all())
    if not ok:
        count = "a whole number" if sizes == (1,) else "one or two whole numbers"
        shown = np.asarray(value).tolist() if np.asarray(value).dtype.kind in "biuf" else repr(value)
        raise GraphError(f"node {name!r} ({kind}): {field} must be {count} >= {least}, got {shown}")
    return [int(v) for v in a.tolist()]


def check_node(name: str, kind: str, params: Mapping[str, Any]) -> None:
    """Refuse parameters the interpreter cannot run, naming the node and field.

    ``params`` are a node's fields (a nir node's ``vars()`` or the dictionary a ``.nir`` file holds). Checked:
    numeric parameters are real and finite, time constants > 0, delays >= 0, Conv2d and SumPool2d geometry
    (groups dividing the channels, strides, kernels and dilations >= 1, padding between 0 and the kernel size).
    Raises :class:`GraphError`.
    """
    for key in PARAMETERS.get(kind, ()):
        value = params.get(key)
        if value is None:
            continue  # optional (v_reset): nir fills in its default
        a = np.asarray(value)
        if a.dtype.kind not in "biuf":
            raise GraphError(f"node {name!r} ({kind}): {key} must be real numbers, got dtype {a.dtype}")
        if not np.isfinite(a).all():
            raise GraphError(f"node {name!r} ({kind}): {key} holds NaN or infinite values")
        if key in TIME_CONSTANTS and not (a > 0).all():
            raise GraphError(f"node {name!r} ({kind}): time constant {key} must be > 0 s, got {float(a.min())}")
        if key == "delay" and not (a >= 0).all():
            raise GraphError(f"node {name!r} ({kind}): delay must be >= 0 s, got {float(a.min())}")
    if kind == "Conv2d":
        w = np.asarray(params.get("weight"))
        if w.ndim != 4 or min(w.shape) < 1:
            raise GraphError(
                f"node {name!r} (Conv2d): weight must be (C_out, C_in/groups, kh, kw), each >= 1, got {w.shape}"
            )
        (groups,) = _ints(name, kind, "groups", params.get("groups"), least=1, sizes=(1,))
        if w.shape[0] % groups:
            raise GraphError(
                f"node {name!r} (Conv2d): groups {groups} does not divide the {w.shape[0]} output channels"
            )
        _ints(name, kind, "stride", params.get("stride"), least=1)
        dh, dw = _pair(_ints(name, kind, "dilation", params.get("dilation"), least=1))
        padding = params.get("padding")
        if isinstance(padding, bytes):
            padding = padding.decode(errors="replace")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise GraphError(f"node {name!r} (Conv2d): padding {padding!r} is not 'same', 'valid' or a number")
        else:
            spans = (dh * (w.shape[2] - 1) + 1, dw * (w.shape[3] - 1) + 1)
            pads = _pair(_ints(name, kind, "padding", padding, least=0))
            if pads[0] > spans[0] or pads[1] > spans[1]:
                raise GraphError(f"node {name!r} (Conv2d): padding {pads} is larger than the kernel {spans}")
    elif kind == "SumPool2d":
        kernel = _pair(_ints(name, kind, "kernel_size", params.get("kernel_size"), least=1))
        _ints(name, kind, "stride", params.get("stride"), least=1)
        pads = _pair(_ints(name, kind, "padding", params.get("padding"), least=0))
        if pads[0] > kernel[0] or pads[1] > kernel[1]:
            raise GraphError(f"node {name!r} (SumPool2d): padding {pads} is larger than the kernel {kernel}")


def _arr(v: Any) -> Array:
    return np.asarray(v, dtype=np.float64)


def _pair(v: Any) -> tuple[int, int]:
    a = np.atleast_1d(np.asarray(v)).astype(int).tolist()
    return (a[0], a[0]) if len(a) == 1 else (a[0], a[1])


def conv2d(x: Array, weight: Array, bias: Array, stride: Any, padding: Any, dilation: Any, groups: int) -> Array:
    """2-D cross-correlation of ``x`` (..., C_in, H, W) with ``weight`` (C_out, C_in/groups, kh, kw), as PyTorch.

    Leading dimensions (time steps) are kept, so a whole run of a feed-forward layer is one call.
    """
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    c_out, c_in_g, kh, kw = weight.shape
    if isinstance(padding, str):
        if padding == "valid":
            ph = pw = 0
        elif padding == "same":
            ph, pw = (dh * (kh - 1)) // 2, (dw * (kw - 1)) // 2
        else:
            raise GraphError(f"Conv2d padding {padding!r} is not 'same', 'valid' or a number")
    else:
        ph, pw = _pair(padding)
    lead = x.ndim - 3
    xp = np.pad(x, ((0, 0),) * (lead + 1) + ((ph, ph), (pw, pw)))
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (span_h, span_w), axis=(-2, -1))
    win = win[..., ::sh, ::sw, ::dh, ::dw]  # (..., C_in, H_out, W_out, kh, kw)
    per_group = c_out // groups
    parts = []
    for g in range(groups):
        w = weight[g * per_group : (g + 1) * per_group]
        xs = win[..., g * c_in_g : (g + 1) * c_in_g, :, :, :, :]
        # contract C_in, kh, kw: (..., H_out, W_out, C_out/groups), then channels first again
        y = np.tensordot(xs, w, axes=([lead, lead + 3, lead + 4], [1, 2, 3]))
        parts.append(np.moveaxis(y, -1, -3))
    out = parts[0] if groups == 1 else np.concatenate(parts, axis=-3)
    b = np.asarray(bias, dtype=np.float64)
    result: Array = out + b.reshape(-1, 1, 1) if b.size > 1 else out + b
    return result


def sum_pool2d(x: Array, kernel: Any, stride: Any, padding: Any) -> Array:
    """Sum pooling of ``x`` (..., C, H, W)."""
    kh, kw = _pair(kernel)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    xp = np.pad(x, ((0, 0),) * (x.ndim - 2) + ((ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(-2, -1))[..., ::sh, ::sw, :, :]
    out: Array = win.sum(axis=(-2, -1))
    return out


@dataclass(slots=True)
class _Node:
    name: str
    kind: str
    step: Callable[[Array], Array]
    out_shape: tuple[int, ...]
    batch: Callable[[Array], Array] | None = None
    """The same map over a block of time steps (leading axis), for nodes without state; None: step by step."""


def _shape(node: Any, which: str, port: str) -> tuple[int, ...]:
    types = getattr(node, which, None) or {}
    value = types.get(port)
    return tuple(int(v) for v in np.asarray(value).tolist()) if value is not None else ()


def _neuron(kind: str, node: Any, dt: float) -> Callable[[Array], Array]:
    if kind in ("LIF", "LI"):
        tau, r, leak = _arr(node.tau), _arr(node.r), _arr(node.v_leak)
        v = np.zeros_like(leak)
        thr = _arr(node.v_threshold) if kind == "LIF" else None
        reset = _arr(node.v_reset) if kind == "LIF" else None

        def lif(x: Array) -> Array:
            nonlocal v
            v = v + dt / tau * (leak - v + r * x)
            if thr is None or reset is None:
                return v.copy()
            z = v > thr
            v = np.where(z, reset, v)
            return z.astype(np.float64)

        return lif
    if kind in ("CubaLIF", "CubaLI"):
        tau_syn, tau_mem, r, leak = _arr(node.tau_syn), _arr(node.tau_mem), _arr(node.r), _arr(node.v_leak)
        w_in = _arr(node.w_in)
        i_syn = np.zeros_like(leak)
        v = np.zeros_like(leak)
        thr = _arr(node.v_threshold) if kind == "CubaLIF" else None
        reset = _arr(node.v_reset) if kind == "CubaLIF" else None

        def cuba(x: Array) -> Array:
            nonlocal i_syn, v
            i_syn = i_syn + dt / tau_syn * (-i_syn + w_in * x)
            v = v + dt / tau_mem * (leak - v + r * i_syn)
            if thr is None or reset is None:
                return v.copy()
            z = v > thr
            v = np.where(z, reset, v)
            return z.astype(np.float64)

        return cuba
    # IF and I: dv/dt = R x
    r = _arr(node.r)
    v = np.zeros_like(r)
    thr = _arr(node.v_threshold) if kind == "IF" else None
    reset = _arr(node.v_reset) if kind == "IF" else None

    def integrate(x: Array) -> Array:
        nonlocal v
        v = v + dt * r * x
        if thr is None or reset is None:
            return v.copy()
        z = v > thr
        v = np.where(z, reset, v)
        return z.astype(np.float64)

    return integrate


MAX_DELAY_STEPS = 1_000_000


def _delay(node: Any, dt: float, shape: tuple[int, ...]) -> Callable[[Array], Array]:
    exact = np.rint(_arr(node.delay) / dt).reshape(-1)
    longest = float(exact.max(initial=0.0))
    if longest >= MAX_DELAY_STEPS:  # the ring buffer holds every step in flight; checked before the int cast
        raise GraphError(f"delay of {longest:,.0f} steps of {dt:g} s is more than {MAX_DELAY_STEPS:,}; raise --dt")
    steps = exact.astype(np.int64)
    if steps.size == 1:
        steps = np.full(int(np.prod(shape)) if shape else 1, int(steps[0]))
    depth = int(steps.max(initial=0)) + 1
    ring = np.zeros((depth, steps.size))
    t = 0
    cols = np.arange(steps.size)

    def delay(x: Array) -> Array:
        nonlocal t
        ring[(t + steps) % depth, cols] += x.reshape(-1)
        out: Array = ring[t % depth].copy().reshape(x.shape)
        ring[t % depth] = 0.0
        t += 1
        return out

    return delay


def _build(name: str, node: Any, dt: float) -> _Node:
    kind = type(node).__name__
    if kind not in SUPPORTED:
        raise GraphError(f"node {name!r}: type {kind} is not supported (supported: {', '.join(SUPPORTED)})")
    check_node(name, kind, vars(node))
    out_shape = _shape(node, "output_type", "output")
    # ``batch`` maps a block of steps (T, *shape) at once; stateless nodes have one, neurons and delays step.
    batch: Callable[[Array], Array] | None
    if kind in ("Input", "Output"):
        batch = lambda x: x  # noqa: E731 - identity
    elif kind == "Affine":
        w, b = _arr(node.weight), _arr(node.bias)
        batch = lambda x: x.reshape(len(x), -1) @ w.T + b  # noqa: E731
    elif kind == "Linear":
        w = _arr(node.weight)
        batch = lambda x: x.reshape(len(x), -1) @ w.T  # noqa: E731
    elif kind == "Scale":
        scale = _arr(node.scale)
        batch = lambda x: scale * x  # noqa: E731
    elif kind == "Flatten":
        shape = out_shape

        def flatten(x: Array) -> Array:
            per_step = x[0].size if len(x) else 0
            return x.reshape(len(x), *shape) if shape and int(np.prod(shape)) == per_step else x.reshape(len(x), -1)

        batch = flatten
    elif kind == "Conv2d":
        w, b = _arr(node.weight), _arr(node.bias)

        def conv(x: Array) -> Array:
            return conv2d(x, w, b, node.stride, node.padding, node.dilation, int(node.groups))

        batch = conv
    elif kind == "SumPool2d":

        def pool(x: Array) -> Array:
            return sum_pool2d(x, node.kernel_size, node.stride, node.padding)

        batch = pool
    elif kind == "Threshold":
        thr = _arr(node.threshold)
        batch = lambda x: (x > thr).astype(np.float64)  # noqa: E731
    else:
        batch = None
    step: Callable[[Array], Array]
    if batch is not None:
        one = batch

        def single(x: Array) -> Array:
            y: Array = one(x[None])[0]
            return y

        step = single
    elif kind == "Delay":
        try:
            step = _delay(node, dt, out_shape)
        except GraphError as e:
            raise GraphError(f"node {name!r} (Delay): {e}") from None
    else:
        step = _neuron(kind, node, dt)
    return _Node(name, kind, step, out_shape, batch)


@dataclass(slots=True)
class RunResult:
    """Spikes each node emitted over the run."""

    spikes: dict[str, float]
    steps: int
    dt: float
    outputs: dict[str, list[Array]] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.steps * self.dt

    def rates_hz(self) -> dict[str, float]:
        """Spikes per second, per spiking node (summed over its neurons)."""
        return {k: v / self.seconds for k, v in self.spikes.items()} if self.steps else {}


CHUNK = 128
"""Time steps per block: feed-forward nodes map a block at once, memory stays bounded for long recordings."""


def run(
    nodes: Mapping[str, Any],
    edges: Sequence[tuple[str, str]],
    inputs: Mapping[str, Array],
    *,
    dt: float,
    keep: Sequence[str] = (),
) -> RunResult:
    """Run the graph on ``inputs`` (node name → (T, *shape) array) for T steps of ``dt`` seconds.

    The result equals stepping every node once per step in topological order; nodes outside recurrent cycles
    process blocks of :data:`CHUNK` steps at once (the same numbers, fewer numpy calls), nodes of a cycle step
    together. ``keep`` names nodes whose per-step outputs are returned (for tests). Raises :class:`GraphError`
    naming the node for unsupported types and for shapes that do not match.
    """
    if not dt > 0:
        raise GraphError(f"dt must be > 0 seconds, got {dt}")
    built = {name: _build(name, node, dt) for name, node in nodes.items()}
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        if a not in nodes or b not in nodes:
            raise GraphError(f"edge {a} -> {b} names a node the graph does not have")
        preds[b].append(a)
    groups = units([GraphNode(n, built[n].kind) for n in nodes], edges)
    order = [x for group in groups for x in group]
    rank = {n: i for i, n in enumerate(order)}
    lengths = {len(v) for v in inputs.values()}
    if len(lengths) != 1:
        raise GraphError("every input needs the same number of time steps")
    steps = lengths.pop()
    for name in inputs:
        if name not in built or built[name].kind != "Input":
            raise GraphError(f"input data for {name!r}, which is not an Input node of the graph")
    missing = [n for n in order if built[n].kind == "Input" and n not in inputs]
    if missing:
        raise GraphError(f"no input data for Input node {missing[0]!r}")
    for name in order:
        if built[name].kind != "Input" and not preds[name]:
            raise GraphError(f"node {name!r} has no input edge")
    prev: dict[str, Array] = {}  # last step's output of nodes in cycles (a one-step delay on edges inside a cycle)
    outputs: dict[str, list[Array]] = {k: [] for k in keep}
    spikes = {n: 0.0 for n in order if built[n].kind in SPIKING}

    def summed(name: str, parts: list[Array]) -> Array:
        x = parts[0]
        for extra in parts[1:]:
            if extra.shape != x.shape:
                raise GraphError(f"node {name!r}: inputs of shapes {x.shape} and {extra.shape} do not match")
            x = x + extra
        return x

    def apply(node: _Node, fn: Callable[[Array], Array], x: Array, shape: tuple[int, ...]) -> Array:
        try:
            return fn(x)
        except (ValueError, IndexError) as e:
            raise GraphError(f"node {node.name!r} ({node.kind}): input of shape {shape} does not fit: {e}") from None

    # Huge weights or inputs may overflow mid-run: numpy's warnings are silenced because every block is checked
    # below and the node that overflowed is named instead.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for start in range(0, steps, CHUNK):
            n = min(CHUNK, steps - start)
            block: dict[str, Array] = {}
            for group in groups:
                members = set(group)
                cyclic = len(group) > 1 or group[0] in preds[group[0]]
                if not cyclic:
                    name = group[0]
                    node = built[name]
                    if node.kind == "Input":
                        x = np.asarray(inputs[name][start : start + n], dtype=np.float64)
                    else:
                        x = summed(name, [block[p] for p in preds[name]])
                    if node.batch is not None:
                        y = apply(node, node.batch, x, x.shape[1:])
                    else:
                        y = np.stack([apply(node, node.step, x[i], x.shape[1:]) for i in range(n)])
                    block[name] = y
                    continue
                seq: dict[str, list[Array]] = {m: [] for m in group}
                for i in range(n):
                    cur: dict[str, Array] = {}
                    for name in group:
                        node = built[name]
                        parts = []
                        for p in preds[name]:
                            if p not in members:
                                src: Array | None = block[p][i]
                            else:
                                src = cur.get(p) if rank[p] < rank[name] else prev.get(p)
                            if src is None:
                                src = np.zeros(built[p].out_shape or (1,))
                            parts.append(src)
                        x = summed(name, parts)
                        cur[name] = apply(node, node.step, x, x.shape)
                        seq[name].append(cur[name])
                    prev.update(cur)
                for name in group:
                    block[name] = np.stack(seq[name])
            for name, y in block.items():
                if not np.isfinite(y).all():
                    raise GraphError(
                        f"node {name!r} ({built[name].kind}): values overflow to inf or NaN; "
                        "the input or the weights are too large"
                    )
                if name in spikes:
                    spikes[name] += float(y.sum())  # input frames may hold event counts per pixel and step
                    if not np.isfinite(spikes[name]):
                        raise GraphError(f"node {name!r}: its spike count overflows; the input counts are too large")
                if name in outputs:
                    outputs[name].extend(y)
    return RunResult(spikes=spikes, steps=steps, dt=dt, outputs=outputs)

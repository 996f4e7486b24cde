"""Ops that move or combine values: residual Add/Sub, gates, constant affine maps, and the shape ops.

Shape ops move relevance exactly as they move values (Concat -> Split, Pad -> Slice, ...); the same
code serves gradients. A residual sum uses the norm rule R_i = x_i R / stab(x_1 + x_2); a gate
x * s(x) sends all relevance to the signal x; Add/Sub/Mul/Div by a constant (input normalisation in
the graph) pass relevance unchanged, and scale a gradient by their derivative."""

from types import SimpleNamespace

import numpy as np
from typing import TYPE_CHECKING

from lrpgraph.catalog import Context
from lrpgraph.converters.registry import converts
from lrpgraph.errors import UnsupportedModelError
from lrpgraph.rules import Rule

if TYPE_CHECKING:
    from lrpgraph.catalog import Unit
    from lrpgraph.graph import Builder


def unbroadcast(ctx: Context, t: str, to: str, unit: "Unit", frm: str) -> str:
    """Sum t (shaped like tensor frm) over the axes along which tensor `to` was broadcast."""
    b = ctx.b
    src, dst = ctx.shapes.get(frm), ctx.shapes.get(to)
    if src is None or dst is None:
        raise UnsupportedModelError(f"node '{unit.name}' ({unit.op}): unknown shapes of its operands")
    if len(src) == len(dst) and all(s == d or d is None or s is None for s, d in zip(src, dst)):
        return t
    lead = len(src) - len(dst)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(dst) if d == 1 and src[lead + i] != 1]
    if axes:
        t = b.op("ReduceSum", [t, b.ints(axes)], "unbroadcast", keepdims=1)
    return b.reshape_like(t, to) if lead else t


@converts("Add", "Sub")
@converts("Add", "Sub", kind="affine")
def add_sub(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """A residual sum x + y or x - y (signals [(x, 1), (y, -1 for Sub)]), or a signal plus a constant, whose
    gradient negates where the signal is subtracted."""
    if unit.kind == "affine":
        i = 0 if unit.inputs[0] in ctx.signal else 1
        negated = unit.op == "Sub" and i == 1
        return _affine(ctx, unit, rule, r_outs, i, lambda r: ctx.b.op("Neg", [r], "neg") if negated else r)
    sign = -1.0 if unit.op == "Sub" else 1.0
    return _sum(ctx, unit, rule, r_outs, [(unit.inputs[0], 1.0), (unit.inputs[1], sign)])


def _sum(ctx, unit, rule, r_outs, signals):
    """The rule's sum emitter; primitives: the signals [(tensor or None, sign)], and place_all, which sums each
    part over the axes its input was broadcast along."""
    out = unit.outputs[0]
    op = SimpleNamespace(signals=signals, place_all=lambda parts: [
        unbroadcast(ctx, p, t, unit, out) if p else None for p, t in zip(parts, unit.inputs)])
    return rule.emitter("sum", unit)(ctx, unit, rule, r_outs, op)


def _affine(ctx, unit, rule, r_outs, i, gradient):
    """The rule's affine emitter; primitives: place (at signal input i, summed over broadcast axes) and the
    gradient of the map."""
    def place(t):
        result = [None] * len(unit.inputs)
        result[i] = unbroadcast(ctx, t, unit.inputs[i], unit, unit.outputs[0])
        return result

    op = SimpleNamespace(place=place, gradient=gradient)
    return rule.emitter("affine", unit)(ctx, unit, rule, r_outs, op)


@converts("Sum")
@converts("Sum", kind="affine")
def sum_(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """Like a residual Add with n inputs (constants get nothing); a Sum with one signal is affine: the signal
    gets the message."""
    if unit.kind == "affine":
        i = next(k for k, t in enumerate(unit.inputs) if t in ctx.signal)
        return _affine(ctx, unit, rule, r_outs, i, lambda r: r)
    return _sum(ctx, unit, rule, r_outs, [(t if t in ctx.signal else None, 1.0) for t in unit.inputs])


@converts("Mul", "Div")
def mul_div(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """A signal times (or divided by) a constant: its gradient scales by it."""
    i = 0 if unit.inputs[0] in ctx.signal else 1
    other = unit.inputs[1 - i]
    return _affine(ctx, unit, rule, r_outs, i,
                   lambda r: ctx.b.div(r, other) if unit.op == "Div" else ctx.b.mul(r, other))


@converts("Neg")
def neg(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """x -> -x (rotary embeddings' rotate_half): relevance passes unchanged, a gradient changes sign."""
    return _affine(ctx, unit, rule, r_outs, 0, lambda r: ctx.b.op("Neg", [r], "neg"))


@converts("Mul", kind="gate")
def gate(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """A signal times a gate (x * sigmoid(x), squeeze-excitation; unit.gate: the gate's index). Primitives:
    place (at the signal) and partial(i, t): the product rule's share of operand i, t times the other operand."""
    out = unit.outputs[0]
    signal = 1 - unit.gate

    def place(t):
        result = [None, None]
        result[signal] = unbroadcast(ctx, t, unit.inputs[signal], unit, out)
        return result

    def partial(i, t):
        return unbroadcast(ctx, ctx.b.mul(t, unit.inputs[1 - i]), unit.inputs[i], unit, out)

    op = SimpleNamespace(place=place, partial=partial)
    return rule.emitter("gate", unit)(ctx, unit, rule, r_outs, op)


@converts("Identity", "Dropout")
def identity(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    return [r_outs[0]] + [None] * (len(unit.inputs) - 1)


@converts("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    return [ctx.b.reshape_like(r_outs[0], unit.inputs[0])] + [None] * (len(unit.inputs) - 1)


@converts("Transpose")
def transpose(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    perm = list(unit.attrs.get("perm", range(len(ctx.shapes[unit.inputs[0]]))[::-1]))
    inverse = [perm.index(i) for i in range(len(perm))]
    return [ctx.b.op("Transpose", [r_outs[0]], "transpose", perm=inverse)]


@converts("Concat")
def concat(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    axis = unit.attrs["axis"]
    sizes = [_size_along(ctx, t, axis) for t in unit.inputs]
    if None in sizes:  # a dynamic axis (a cache's past and new keys along the length): read at run time
        end = {} if axis == -1 else {"end": axis + 1}
        split = ctx.b.op("Concat", [ctx.b.op("Shape", [t], "size", start=axis, **end) for t in unit.inputs], "sizes",
                         axis=0)
    else:  # only the sizes along the axis need be static (a rotary's Concat on [N, H, L, D])
        split = ctx.b.ints(sizes)
    parts = ctx.b.op("Split", [r_outs[0], split], "split", outputs=len(sizes), axis=axis)
    parts = parts if isinstance(parts, list) else [parts]
    return [p if t in ctx.signal else None for p, t in zip(parts, unit.inputs)]


def _size_along(ctx, t, axis):
    shape = ctx.shapes.get(t)
    return shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None


@converts("Split")
def split(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    b = ctx.b
    parts = [r if r is not None else b.zeros_like(out) for r, out in zip(r_outs, unit.outputs)]
    joined = b.op("Concat", parts, "concat", axis=unit.attrs.get("axis", 0))
    return [joined] + [None] * (len(unit.inputs) - 1)


@converts("Slice")
def slice_(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    b = ctx.b
    x = unit.inputs[0]
    shape = ctx.shapes.get(x)
    starts = [int(v) for v in ctx.value(unit.inputs[1], unit, "starts")]
    ends = [int(v) for v in ctx.value(unit.inputs[2], unit, "ends")]
    axes = [int(v) for v in ctx.value(unit.inputs[3], unit, "axes")] if _has(unit, 3) else list(range(len(starts)))
    steps = [int(v) for v in ctx.value(unit.inputs[4], unit, "steps")] if _has(unit, 4) else [1] * len(starts)
    pads, strided = [0] * (2 * len(shape)), []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= len(shape)
        dim = shape[axis]
        if dim is None:
            raise UnsupportedModelError(f"node '{unit.name}' (Slice): slicing a dynamic axis is not supported")
        if step != 1:  # every step-th value (Swin's patch merging): R goes back to the positions read
            strided.append((axis, np.arange(dim)[slice(start, end, step)], dim))
            continue
        start = min(max(start + dim if start < 0 else start, 0), dim)
        end = min(max(end + dim if end < 0 else end, 0), dim)
        pads[axis], pads[axis + len(shape)] = start, dim - max(end, start)
    r = r_outs[0]
    for axis, index, dim in strided:
        r = scatter_along(b, r, index, dim, axis, len(shape))
    return [b.op("Pad", [r, b.ints(pads)], "pad")] + [None] * (len(unit.inputs) - 1)


def scatter_along(b: "Builder", r: str, index: np.ndarray, dim: int, axis: int, rank: int) -> str:
    """r, whose `axis` holds the values at positions `index` of an axis of size dim, put back at those positions
    (zeros elsewhere, repeated positions summed): a MatMul with a 0/1 matrix along the axis moved last."""
    perm = [i for i in range(rank) if i != axis] + [axis]
    onehot = np.zeros((len(index), dim), np.float32)
    onehot[np.arange(len(index)), index] = 1.0
    moved = b.op("MatMul", [b.op("Transpose", [r], "to_last", perm=perm), b.const(onehot)], "scatter")
    return b.op("Transpose", [moved], "from_last", perm=[perm.index(i) for i in range(rank)])


@converts("Pad")
def pad(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    b = ctx.b
    mode = unit.attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        raise UnsupportedModelError(f"node '{unit.name}' (Pad): mode '{mode}' is not supported (only constant)")
    shape = ctx.shape(unit.inputs[0], unit)
    pads = [int(v) for v in (ctx.value(unit.inputs[1], unit, "pads") if _has(unit, 1) else unit.attrs["pads"])]
    rank = len(shape)
    axes = [int(a) % rank for a in ctx.value(unit.inputs[3], unit, "axes")] if _has(unit, 3) else list(range(rank))
    n = len(axes)
    if any(p < 0 for p in pads):
        raise UnsupportedModelError(f"node '{unit.name}' (Pad): negative pads (cropping) are not supported")
    starts = [pads[i] for i in range(n)]
    ends = [pads[i] + (shape[a] if shape[a] is not None else 2**62) for i, a in enumerate(axes)]
    r = b.op("Slice", [r_outs[0], b.ints(starts), b.ints(ends), b.ints(axes)], "slice")
    return [r] + [None] * (len(unit.inputs) - 1)


def _has(unit, i):
    return len(unit.inputs) > i and bool(unit.inputs[i])

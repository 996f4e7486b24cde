"""Ops that move or combine values: residual Add/Sub, gates, constant affine maps, and the shape ops.

Shape ops move relevance exactly as they move values (Concat -> Split, Pad -> Slice, ...); the same
code serves gradients. A residual sum uses the norm rule R_i = x_i R / stab(x_1 + x_2); a gate
x * s(x) sends all relevance to the signal x; Add/Sub/Mul/Div by a constant (input normalisation in
the graph) pass relevance unchanged, and scale a gradient by their derivative."""

from typing import TYPE_CHECKING

from lrpgraph.catalog import Context, unsupported_rule
from lrpgraph.converters.registry import converts
from lrpgraph.errors import UnsupportedModelError
from lrpgraph.rules import GRADIENT_RULES, Rule

if TYPE_CHECKING:
    from lrpgraph.catalog import Unit


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
    r, b = r_outs[0], ctx.b
    x, y = unit.inputs[:2]
    out = unit.outputs[0]
    sign = -1.0 if unit.op == "Sub" else 1.0
    if unit.kind == "affine":
        i = 0 if x in ctx.signal else 1
        if rule.name in GRADIENT_RULES and sign < 0 and i == 1:
            r = b.op("Neg", [r], "neg")
        elif rule.name not in GRADIENT_RULES + ("pass",):
            raise unsupported_rule(unit, rule)
        result = [None, None]
        result[i] = unbroadcast(ctx, r, unit.inputs[i], unit, out)
        return result
    if rule.name == "norm":
        s = b.div(r, b.stab(out, rule.stabilizer))
        rx, ry = b.mul(x, s), b.mul(y, s)
        if sign < 0:
            ry = b.op("Neg", [ry], "neg")
    elif rule.name in GRADIENT_RULES or rule.name == "pass":
        rx = ry = r
        if sign < 0 and rule.name != "pass":
            ry = b.op("Neg", [r], "neg")
    else:
        raise unsupported_rule(unit, rule)
    return [unbroadcast(ctx, rx, x, unit, out), unbroadcast(ctx, ry, y, unit, out)]


@converts("Sum")
@converts("Sum", kind="affine")
def sum_(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """Like a residual Add with n inputs: the norm rule R_i = x_i R / stab(sum), or the gradient (each
    signal gets R); constants get nothing (a Sum with one signal passes R to it)."""
    r, b, out = r_outs[0], ctx.b, unit.outputs[0]
    signals = [t if t in ctx.signal else None for t in unit.inputs]
    if rule.name == "norm" and unit.kind == "sum":
        s = b.div(r, b.stab(out, rule.stabilizer))
        parts = [b.mul(t, s) if t else None for t in signals]
    elif rule.name in GRADIENT_RULES or rule.name == "pass":
        parts = [r if t else None for t in signals]
    else:
        raise unsupported_rule(unit, rule)
    return [unbroadcast(ctx, p, t, unit, out) if p else None for p, t in zip(parts, unit.inputs)]


@converts("Mul", "Div")
def mul_div(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    r, b = r_outs[0], ctx.b
    x, y = unit.inputs[:2]
    out = unit.outputs[0]
    if unit.kind == "gate":
        gate = unit.gate
        signal = 1 - gate
        result = [None, None]
        if rule.name == "pass":
            result[signal] = unbroadcast(ctx, r, unit.inputs[signal], unit, out)
        elif rule.name in GRADIENT_RULES:  # the product rule
            result[signal] = unbroadcast(ctx, b.mul(r, unit.inputs[gate]), unit.inputs[signal], unit, out)
            result[gate] = unbroadcast(ctx, b.mul(r, unit.inputs[signal]), unit.inputs[gate], unit, out)
        else:
            raise unsupported_rule(unit, rule)
        return result
    i = 0 if x in ctx.signal else 1
    if rule.name in GRADIENT_RULES:
        other = unit.inputs[1 - i]
        r = b.div(r, other) if unit.op == "Div" else b.mul(r, other)
    elif rule.name != "pass":
        raise unsupported_rule(unit, rule)
    result = [None, None]
    result[i] = unbroadcast(ctx, r, unit.inputs[i], unit, out)
    return result


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
    sizes = []
    for t in unit.inputs:
        shape = ctx.shape(t, unit)
        sizes.append(shape[axis])
    parts = ctx.b.op("Split", [r_outs[0], ctx.b.ints(sizes)], "split", outputs=len(sizes), axis=axis)
    parts = parts if isinstance(parts, list) else [parts]
    return [p if t in ctx.signal else None for p, t in zip(parts, unit.inputs)]


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
    if any(s != 1 for s in steps):
        raise UnsupportedModelError(f"node '{unit.name}' (Slice): only steps of 1 are supported")
    pads = [0] * (2 * len(shape))
    for start, end, axis in zip(starts, ends, axes):
        axis %= len(shape)
        dim = shape[axis]
        if dim is None:
            raise UnsupportedModelError(f"node '{unit.name}' (Slice): slicing a dynamic axis is not supported")
        start = min(max(start + dim if start < 0 else start, 0), dim)
        end = min(max(end + dim if end < 0 else end, 0), dim)
        pads[axis], pads[axis + len(shape)] = start, dim - max(end, start)
    return [b.op("Pad", [r_outs[0], b.ints(pads)], "pad")] + [None] * (len(unit.inputs) - 1)


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

"""A standalone BatchNormalization (one not folded into a preceding Conv/Gemm): an affine map per channel.
LRP composites pass relevance through it ('pass', as zennit does); gradient rule sets scale by
scale / sqrt(var + eps)."""

import math
from types import SimpleNamespace
from typing import TYPE_CHECKING

from lrpgraph.catalog import Context
from lrpgraph.converters.registry import converts
from lrpgraph.rules import Rule

if TYPE_CHECKING:
    from lrpgraph.catalog import Unit


@converts("BatchNormalization")
def batch_norm(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """Primitives: the gradient scales by scale / sqrt(var + eps) per channel."""
    rest = [None] * (len(unit.inputs) - 1)

    def gradient(r):
        b = ctx.b
        scale, _, _, var = unit.inputs[1:5]
        k = b.div(scale, b.op("Sqrt", [b.add(var, b.const(float(unit.attrs.get("epsilon", 1e-5))))], "sqrt"))
        rank = len(ctx.shape(unit.inputs[0], unit))
        return b.mul(r, b.op("Reshape", [k, b.ints([1, -1] + [1] * (rank - 2))], "bn_scale"))

    op = SimpleNamespace(place=lambda t: [t] + rest, gradient=gradient)
    return rule.emitter("bn", unit)(ctx, unit, rule, r_outs, op)


@converts("LayerNormalization")
def layer_norm(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """y = scale (x - mean) / sigma + bias over the axes from `axis` on (written out: any axes). Primitives:
    frozen (sigma a constant and the centring linear: g_x = (t - mean(t)) / sigma with t = scale g; the
    'identity' rule of AttnLRP and CP-LRP, whose message is a gradient), gradient (the full derivative)."""
    def start(g):
        x, t, mean, eps = _normaliser_start(ctx, unit, g)
        centred = ctx.b.sub(x, mean(x))
        sigma = ctx.b.op("Sqrt", [ctx.b.add(mean(ctx.b.mul(centred, centred)), ctx.b.const(eps))], "sigma")
        return t, mean, centred, sigma

    def frozen(g):
        b, (t, mean, _, sigma) = ctx.b, start(g)
        return b.div(b.sub(t, mean(t)), sigma)

    def gradient(g):
        b, (t, mean, centred, sigma) = ctx.b, start(g)
        normed = b.div(centred, sigma)
        inner = b.sub(b.sub(t, mean(t)), b.mul(normed, mean(b.mul(t, normed))))
        return b.div(inner, sigma)

    return _normaliser(ctx, unit, rule, r_outs, frozen, gradient)


def _normaliser(ctx, unit, rule, r_outs, frozen, gradient):
    rest = [None] * (len(unit.inputs) - 1)
    op = SimpleNamespace(place=lambda t: [t] + rest, frozen=frozen, gradient=gradient)
    return rule.emitter("normaliser", unit)(ctx, unit, rule, r_outs, op)


def _normaliser_start(ctx, unit, g):
    """What LayerNorm and RMSNorm share under both primitives: (x, the incoming message times the scale (a norm
    written out without a scale, fusion.py, has none), the mean over the normalised axes, epsilon)."""
    scale = unit.inputs[1]
    return (unit.inputs[0], ctx.b.mul(g, scale) if scale else g) + _normaliser_mean(ctx, unit)


def _normaliser_mean(ctx, unit):
    """(the mean over the normalised axes, as a function of a tensor; the node's epsilon). The axes: from `axis`
    to the last (the ONNX ops), or the `axes` of a norm written out over others (fusion.py: a channel norm).
    A ReduceSum divided by the count: ReduceMean takes its axes as an input only from opset 18 on."""
    b, shape = ctx.b, ctx.shapes[unit.inputs[0]]
    if "axes" in unit.attrs:
        normalised = sorted({int(a) % len(shape) for a in unit.attrs["axes"]})
    else:
        normalised = list(range(int(unit.attrs.get("axis", -1)) % len(shape), len(shape)))
    axes, dims = b.ints(normalised), [shape[a] for a in normalised]

    def mean(t):
        total = b.op("ReduceSum", [t, axes], "sum", keepdims=1)
        if all(d is not None for d in dims):
            return b.mul(total, b.const(1.0 / math.prod(dims)))
        return b.div(total, b.op("ReduceSum", [b.add(b.zeros_like(t), b.const(1.0)), axes], "count", keepdims=1))

    return mean, float(unit.attrs.get("epsilon", 1e-5))


@converts("RMSNormalization")
def rms_norm(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """y = scale x / rms(x), rms over the axes from `axis` on (opset 23; written out: any axes). Primitives:
    frozen (rms a constant, LXT's RMSNorm patch: g_x = scale g / rms), gradient (the full derivative)."""
    def start(g):
        x, t, mean, eps = _normaliser_start(ctx, unit, g)
        return x, t, mean, ctx.b.op("Sqrt", [ctx.b.add(mean(ctx.b.mul(x, x)), ctx.b.const(eps))], "rms")

    def frozen(g):
        _, t, _, rms = start(g)
        return ctx.b.div(t, rms)

    def gradient(g):
        b, (x, t, mean, rms) = ctx.b, start(g)
        inner = b.sub(t, b.mul(x, b.div(mean(b.mul(t, x)), b.mul(rms, rms))))
        return b.div(inner, rms)

    return _normaliser(ctx, unit, rule, r_outs, frozen, gradient)

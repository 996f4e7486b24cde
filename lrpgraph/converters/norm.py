"""A standalone BatchNormalization (one not folded into a preceding Conv/Gemm): an affine map per channel.
LRP composites pass relevance through it ('pass', as zennit does); gradient rule sets scale by
scale / sqrt(var + eps)."""

import math
from typing import TYPE_CHECKING

from lrpgraph.catalog import Context, unsupported_rule
from lrpgraph.converters.registry import converts
from lrpgraph.rules import GRADIENT_RULES, Rule

if TYPE_CHECKING:
    from lrpgraph.catalog import Unit


@converts("BatchNormalization")
def batch_norm(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    r, rest = r_outs[0], [None] * (len(unit.inputs) - 1)
    if rule.name == "pass":
        return [r] + rest
    if rule.name in GRADIENT_RULES:
        b = ctx.b
        scale, _, _, var = unit.inputs[1:5]
        k = b.div(scale, b.op("Sqrt", [b.add(var, b.const(float(unit.attrs.get("epsilon", 1e-5))))], "sqrt"))
        rank = len(ctx.shape(unit.inputs[0], unit))
        k = b.op("Reshape", [k, b.ints([1, -1] + [1] * (rank - 2))], "bn_scale")
        return [b.mul(r, k)] + rest
    raise unsupported_rule(unit, rule)


@converts("LayerNormalization")
def layer_norm(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """y = scale (x - mean) / sigma + bias over the axes from `axis` on (written out: any axes). 'identity'
    (AttnLRP, CP-LRP; the message is a gradient, converters/attention.py): sigma is a constant and the centring
    linear, so g_x = (t - mean(t)) / sigma with t = scale g; 'gradient': the full derivative; 'pass': R
    unchanged."""
    b, rest = ctx.b, [None] * (len(unit.inputs) - 1)
    if rule.name == "pass":
        return [r_outs[0]] + rest
    x, g, mean, eps = _normaliser_start(ctx, unit, rule, r_outs[0])
    centred = b.sub(x, mean(x))
    sigma = b.op("Sqrt", [b.add(mean(b.mul(centred, centred)), b.const(eps))], "sigma")
    if rule.name == "identity":
        return [b.div(b.sub(g, mean(g)), sigma)] + rest
    normed = b.div(centred, sigma)
    inner = b.sub(b.sub(g, mean(g)), b.mul(normed, mean(b.mul(g, normed))))
    return [b.div(inner, sigma)] + rest


def _normaliser_start(ctx, unit, rule, r):
    """What LayerNorm and RMSNorm share under 'identity' and the gradient rules: (x, the incoming message times
    the scale (a norm written out without a scale, fusion.py, has none), the mean over the normalised axes,
    epsilon)."""
    if rule.name != "identity" and rule.name not in GRADIENT_RULES:
        raise unsupported_rule(unit, rule)
    scale = unit.inputs[1]
    return (unit.inputs[0], ctx.b.mul(r, scale) if scale else r) + _normaliser_mean(ctx, unit)


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
    """y = scale x / rms(x), rms over the axes from `axis` on (opset 23; written out: any axes). 'identity': rms
    is a constant (LXT's RMSNorm patch): g_x = scale g / rms; 'gradient': the full derivative; 'pass': R
    unchanged."""
    b, rest = ctx.b, [None] * (len(unit.inputs) - 1)
    if rule.name == "pass":
        return [r_outs[0]] + rest
    x, t, mean, eps = _normaliser_start(ctx, unit, rule, r_outs[0])
    rms = b.op("Sqrt", [b.add(mean(b.mul(x, x)), b.const(eps))], "rms")
    if rule.name == "identity":
        return [b.div(t, rms)] + rest
    inner = b.sub(t, b.mul(x, b.div(mean(b.mul(t, x)), b.mul(rms, rms))))
    return [b.div(inner, rms)] + rest

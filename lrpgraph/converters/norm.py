"""A standalone BatchNormalization (one not folded into a preceding Conv/Gemm): an affine map per channel.
LRP composites pass relevance through it ('pass', as zennit does); gradient rule sets scale by
scale / sqrt(var + eps)."""

from lrpgraph.converters.registry import Context, register, unsupported_rule
from lrpgraph.rules import GRADIENT_RULES, Rule


@register("BatchNormalization", kind="bn")
def batch_norm(ctx: Context, unit, rule: Rule, r_outs: list) -> list:
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

"""Element-wise activations. LRP passes relevance through them unchanged ('pass'); gradient-family
rule sets use the plain derivative ('gradient'), LRP-Flex scales the ReLU gradient by a / (a + eps)
('flex-relu'), and guided methods let only positive gradients through a ReLU ('guided')."""

from lrpgraph.converters import register, unsupported_rule
from lrpgraph.rules import GRADIENT_RULES
from lrpgraph.errors import UnsupportedModelError


@register("Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish")
def activation(ctx, unit, rule, r_outs):
    r = r_outs[0]
    rest = [None] * (len(unit.inputs) - 1)
    if rule.name == "pass":
        return [r] + rest
    b, x, y = ctx.b, unit.inputs[0], unit.outputs[0]
    if rule.name == "flex-relu" and unit.op == "Relu":
        ratio = b.div(y, b.add(y, b.const(rule.params[0])))
        ratio = b.op("Where", [b.op("IsNaN", [ratio], "isnan"), b.const(0.0), ratio], "nan_to_zero")
        return [b.mul(r, ratio)] + rest
    if rule.name == "guided" and unit.op in ("Relu", "LeakyRelu", "PRelu", "Clip"):
        return [b.mul(b.pos(r), derivative(ctx, unit, x, y))] + rest
    if rule.name in GRADIENT_RULES:
        return [b.mul(r, derivative(ctx, unit, x, y))] + rest
    raise unsupported_rule(unit, rule)


def derivative(ctx, unit, x, y):
    """d y / d x of the activation, element-wise, as one tensor (torch's conventions at the kinks)."""
    b, op, attrs = ctx.b, unit.op, unit.attrs
    one, zero = b.const(1.0), b.const(0.0)

    def where(cond, a, c):
        return b.op("Where", [cond, a, c], "where")

    positive = b.op("Greater", [x, zero], "is_pos")
    if op == "Relu":
        return b.op("Cast", [positive], "step", to=1)
    if op == "LeakyRelu":
        return where(positive, one, b.const(float(attrs.get("alpha", 0.01))))
    if op == "PRelu":
        return where(positive, one, unit.inputs[1])
    if op == "Clip":
        low, high = _clip_bounds(ctx, unit)
        inside = b.op("And", [b.op("Greater", [x, b.const(low)], "above"),
                              b.op("Less", [x, b.const(high)], "below")], "inside")
        return b.op("Cast", [inside], "step", to=1)
    if op == "Sigmoid":
        return b.mul(y, b.sub(one, y))
    if op == "Tanh":
        return b.sub(one, b.mul(y, y))
    if op == "HardSigmoid":
        alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
        t = b.add(b.mul(x, b.const(alpha)), b.const(beta))
        inside = b.op("And", [b.op("Greater", [t, zero], "above"), b.op("Less", [t, one], "below")], "inside")
        return b.mul(b.op("Cast", [inside], "step", to=1), b.const(alpha))
    if op == "HardSwish":  # 0 below -3, x/3 + 1/2 up to 3, 1 above
        middle = b.add(b.div(x, b.const(3.0)), b.const(0.5))
        inner = where(b.op("Greater", [x, b.const(3.0)], "above"), one, middle)
        return where(b.op("Less", [x, b.const(-3.0)], "below"), zero, inner)
    raise UnsupportedModelError(f"node '{unit.name}' ({op}): no derivative for this activation")


def _clip_bounds(ctx, unit):
    inputs, attrs = unit.inputs, unit.attrs
    low = float(ctx.value(inputs[1], unit, "min")) if len(inputs) > 1 and inputs[1] else attrs.get("min", -3.4e38)
    high = float(ctx.value(inputs[2], unit, "max")) if len(inputs) > 2 and inputs[2] else attrs.get("max", 3.4e38)
    return float(low), float(high)

"""Element-wise activations. LRP passes relevance through them unchanged ('pass'); gradient-family
rule sets use the plain derivative ('gradient'), LRP-Flex scales the ReLU gradient by a / (a + eps)
('flex-relu'), and guided methods let only positive gradients through a ReLU ('guided').

Each activation is one record (catalog/ops.py, ACTIVATIONS) and one function, its derivative,
`derivative(ctx, unit, x, y) -> dy/dx` (torch's conventions at the kinks), attached by `@derivative_of(op_type)`.
An activation the catalog does not know is added with `@activation_op(op_type, flags...)`: both at once."""

from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING

from lrpgraph.catalog import RECORDS, Context, add, record
from lrpgraph.converters.registry import EMITTERS, attach
from lrpgraph.rules import Rule

if TYPE_CHECKING:
    from lrpgraph.catalog import Unit


def activation(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """The rule's activation emitter, with the op's derivative (and whether guided methods gate it) as primitives."""
    rest, derivative = [None] * (len(unit.inputs) - 1), EMITTERS[unit.op].derivative
    x, y = unit.inputs[0], unit.outputs[0]
    op = SimpleNamespace(place=lambda t: [t] + rest, guided=RECORDS[unit.op].guided,
                         gradient=lambda t: ctx.b.mul(t, derivative(ctx, unit, x, y)))
    return rule.emitter("activation", unit)(ctx, unit, rule, r_outs, op)


def derivative_of(*op_types: str) -> Callable:
    """Decorator: attach an element-wise activation's derivative fn(ctx, unit, x, y) -> dy/dx to the catalog's
    records of op_types (with the converter `activation`, which every activation shares)."""

    def decorate(derivative):
        for op_type in op_types:
            attach(op_type, "activation", activation, derivative=derivative)
        return derivative

    return decorate


def activation_op(*op_types: str, **flags) -> Callable:
    """Decorator for an activation the catalog does not know: its record (flags: OpRecord fields: rules,
    nonneg_output, guided, gate_source, keys, ...) and its derivative fn(ctx, unit, x, y) -> dy/dx,
    in one registration. An unknown rule or field is an error before anything is added."""
    new = [record(op_type, "activation", **flags) for op_type in op_types]

    def decorate(derivative):
        for one in new:
            add(one)
        return derivative_of(*op_types)(derivative)

    return decorate


def _where(b, cond, a, c):
    return b.op("Where", [cond, a, c], "where")


def _positive(b, x):
    return b.op("Greater", [x, b.const(0.0)], "is_pos")


@derivative_of("Relu")
def relu(ctx: Context, unit: "Unit", x: str, y: str) -> str:
    return ctx.b.op("Cast", [_positive(ctx.b, x)], "step", to=1)


@derivative_of("LeakyRelu")
def leaky_relu(ctx: Context, unit: "Unit", x: str, y: str) -> str:
    b = ctx.b
    return _where(b, _positive(b, x), b.const(1.0), b.const(float(unit.attrs.get("alpha", 0.01))))


@derivative_of("PRelu")
def prelu(ctx: Context, unit: "Unit", x: str, y: str) -> str:
    b = ctx.b
    return _where(b, _positive(b, x), b.const(1.0), unit.inputs[1])


@derivative_of("Clip")
def clip(ctx: Context, unit: "Unit", x: str, y: str) -> str:
    b = ctx.b
    low, high = _clip_bounds(ctx, unit)
    inside = b.op("And", [b.op("Greater", [x, b.const(low)], "above"),
                          b.op("Less", [x, b.const(high)], "below")], "inside")
    return b.op("Cast", [inside], "step", to=1)


@derivative_of("Sigmoid")
def sigmoid(ctx: Context, unit: "Unit", x: str, y: str) -> str:
    """e / (1 + e)^2 with e = exp(-|x|): onnxruntime's float32 Sigmoid approximates its tails (relative error 1e-4
    at x = -10, 0.17 at -15), and y (1 - y) would inherit that where a detector's class logits saturate."""
    b = ctx.b
    e = b.op("Exp", [b.op("Neg", [b.op("Abs", [x], "abs")], "neg")], "exp")
    one_plus = b.add(b.const(1.0), e)
    return b.div(e, b.mul(one_plus, one_plus))


@derivative_of("Tanh")
def tanh(ctx: Context, unit: "Unit", x: str, y: str) -> str:
    b = ctx.b
    return b.sub(b.const(1.0), b.mul(y, y))


@derivative_of("HardSigmoid")
def hard_sigmoid(ctx: Context, unit: "Unit", x: str, y: str) -> str:
    b, attrs = ctx.b, unit.attrs
    one, zero = b.const(1.0), b.const(0.0)
    alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    t = b.add(b.mul(x, b.const(alpha)), b.const(beta))
    inside = b.op("And", [b.op("Greater", [t, zero], "above"), b.op("Less", [t, one], "below")], "inside")
    return b.mul(b.op("Cast", [inside], "step", to=1), b.const(alpha))


@derivative_of("HardSwish")
def hard_swish(ctx: Context, unit: "Unit", x: str, y: str) -> str:  # 0 below -3, x/3 + 1/2 up to 3, 1 above
    b = ctx.b
    middle = b.add(b.div(x, b.const(3.0)), b.const(0.5))
    inner = _where(b, b.op("Greater", [x, b.const(3.0)], "above"), b.const(1.0), middle)
    return _where(b, b.op("Less", [x, b.const(-3.0)], "below"), b.const(0.0), inner)


def _clip_bounds(ctx, unit):
    inputs, attrs = unit.inputs, unit.attrs
    low = float(ctx.value(inputs[1], unit, "min")) if len(inputs) > 1 and inputs[1] else attrs.get("min", -3.4e38)
    high = float(ctx.value(inputs[2], unit, "max")) if len(inputs) > 2 and inputs[2] else attrs.get("max", 3.4e38)
    return float(low), float(high)


@derivative_of("Elu")
def elu(ctx: Context, unit: "Unit", x: str, y: str) -> str:  # 1 above 0, alpha * exp(x) = y + alpha below
    b = ctx.b
    alpha = b.const(float(unit.attrs.get("alpha", 1.0)))
    return _where(b, _positive(b, x), b.const(1.0), b.add(y, alpha))


SELU_ALPHA, SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875  # the ONNX defaults


@derivative_of("Selu")
def selu(ctx: Context, unit: "Unit", x: str, y: str) -> str:  # gamma above 0, gamma * alpha * exp(x) below
    b = ctx.b
    alpha, gamma = float(unit.attrs.get("alpha", SELU_ALPHA)), float(unit.attrs.get("gamma", SELU_GAMMA))
    below = b.mul(b.op("Exp", [x], "exp"), b.const(alpha * gamma))
    return _where(b, _positive(b, x), b.const(gamma), below)


@derivative_of("Softplus")
def softplus(ctx: Context, unit: "Unit", x: str, y: str) -> str:  # d log(1 + e^x) / dx = sigmoid(x)
    return ctx.b.op("Sigmoid", [x], "sigmoid")


@derivative_of("Mish")
def mish(ctx: Context, unit: "Unit", x: str, y: str) -> str:  # x tanh(sp(x)): tanh(sp) + x sigmoid(x) (1 - tanh(sp)^2)
    b = ctx.b
    t = b.op("Tanh", [b.op("Softplus", [x], "softplus")], "tanh")
    inner = b.mul(b.mul(x, b.op("Sigmoid", [x], "sigmoid")), b.sub(b.const(1.0), b.mul(t, t)))
    return b.add(t, inner)

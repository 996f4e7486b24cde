"""The rules for the other units of a CNN: pass, norm, winner-take-all, and the gradient family (the plain
gradient, LRP-Flex's ReLU, guided back-propagation). The op-specific part (an activation's derivative, a
pooling's adjoint, a MaxPool's routing) comes from the converter as `op` (see base.py)."""

from typing import TYPE_CHECKING

from lrpgraph.rules.base import MOVE, Param, Rule, RuleUnit, register_rule

if TYPE_CHECKING:
    from types import SimpleNamespace

    from lrpgraph.catalog import Unit
    from lrpgraph.catalog import Context

DEFAULT_FLEX_EPSILON = 0.01  # LRP-Flex's ReLU eps

PASS = register_rule(RuleUnit("pass", (), "The relevance goes through unchanged (a sum: each signal gets it all).",
                              default_kinds=frozenset({"activation", "bn", "sum", "affine", "gate", "structure"})))
NORM = register_rule(RuleUnit("norm", (), "Each input gets its share of the output: R_i = x_i R_j / stab(sum of the "
                              "inputs of j); an average pool is a sum with equal weights.",
                              default_kinds=frozenset({"sum", "avgpool"})))
WTA = register_rule(RuleUnit("wta", (), "Winner takes all: R_j goes to the arg-max of window j (overlapping "
                             "windows add up).", default_kinds=frozenset({"maxpool"})))
GRADIENT = register_rule(RuleUnit(
    "gradient", (), "The plain gradient of the node (gradient-family methods, flex, the transformer composites).",
    default_kinds=frozenset({"linear", "activation", "bn", "sum", "affine", "gate", "maxpool", "avgpool",
                             "structure"})))
GUIDED = register_rule(RuleUnit("guided", (), "Guided back-propagation: only positive gradients pass ReLU-like "
                                "units and MaxPool; the plain gradient elsewhere.",
                                default_kinds=frozenset({"activation", "maxpool"})))
FLEX_RELU = register_rule(RuleUnit(
    "flex-relu", (Param("epsilon", DEFAULT_FLEX_EPSILON, minimum=0.0, strict=True, option="flex_epsilon",
                        help="eps of LRP-Flex's ReLUs"),),
    "LRP-Flex's ReLU: the gradient times a / (a + eps), a the ReLU's output."))

PASS.emitters["structure"] = GRADIENT.emitters["structure"] = MOVE


@PASS.emits("activation", "bn", "affine", "gate", "normaliser")
def emit_pass(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    return op.place(r_outs[0])


@PASS.emits("sum")
def emit_pass_sum(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    return op.place_all([r_outs[0] if t else None for t, _ in op.signals])


@NORM.emits("sum")
def emit_norm_sum(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    b = ctx.b
    s = b.div(r_outs[0], b.stab(unit.outputs[0], rule.stabilizer))
    parts = []
    for t, sign in op.signals:
        part = b.mul(t, s) if t else None
        parts.append(b.op("Neg", [part], "neg") if part and sign < 0 else part)
    return op.place_all(parts)


@NORM.emits("avgpool")
def emit_norm_pool(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    b = ctx.b
    s = b.div(r_outs[0], b.stab(unit.outputs[0], rule.stabilizer))
    return op.place(b.mul(unit.inputs[0], op.gradient(s)))


@WTA.emits("maxpool")
@GRADIENT.emits("maxpool")
def emit_route(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    return [op.route(r_outs[0])]


@GRADIENT.emits("linear")
def emit_gradient_linear(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    return [op.backward(ctx.b, r_outs[0], op.weights(ctx.b)[0])]


@GRADIENT.emits("activation", "bn", "affine", "normaliser", "avgpool")
def emit_gradient(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    return op.place(op.gradient(r_outs[0]))


@GRADIENT.emits("sum")
def emit_gradient_sum(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    r = r_outs[0]
    return op.place_all([None if not t else r if sign > 0 else ctx.b.op("Neg", [r], "neg") for t, sign in op.signals])


@GRADIENT.emits("gate")
def emit_product_rule(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    """The product rule: the signal gets g times the gate, the gate g times the signal."""
    result = [None, None]
    signal = 1 - unit.gate
    result[signal] = op.partial(signal, r_outs[0])
    result[unit.gate] = op.partial(unit.gate, r_outs[0])
    return result


@GRADIENT.emits("product")
def emit_gradient_product(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    return list(op.gradients(r_outs[0]))


@GUIDED.emits("activation")
def emit_guided(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    r = ctx.b.pos(r_outs[0]) if op.guided else r_outs[0]
    return op.place(op.gradient(r))


@GUIDED.emits("maxpool")
def emit_guided_route(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    return [op.route(ctx.b.pos(r_outs[0]))]


@FLEX_RELU.emits("activation")
def emit_flex_relu(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    """accepted by ReLU only (its record's rules): g a / (a + eps), NaN (0 / 0) as 0."""
    b, y = ctx.b, unit.outputs[0]
    ratio = b.div(y, b.add(y, b.const(rule.params[0])))
    ratio = b.op("Where", [b.op("IsNaN", [ratio], "isnan"), b.const(0.0), ratio], "nan_to_zero")
    return op.place(b.mul(r_outs[0], ratio))

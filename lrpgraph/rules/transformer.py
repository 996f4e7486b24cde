"""The rules of the transformer composites (AttnLRP, CP-LRP), in LXT's gradient form: the message is
g = R / x and the heatmap x * g. The op-specific part (a product's gradients, a normaliser's derivative with
its statistics held constant) comes from the converter as `op` (see base.py).

AttnLRP's product and softmax rules also have a relevance form, for the LRP composites' attention inside a CNN
(YOLO11's C2PSA): the same relevance as LXT's gradient form computes, R = x * g, written with R."""

from typing import TYPE_CHECKING

from lrpgraph.errors import UnsupportedModelError
from lrpgraph.rules.base import Rule, RuleUnit, register_rule

if TYPE_CHECKING:
    from types import SimpleNamespace

    from lrpgraph.catalog import Unit
    from lrpgraph.catalog import Context

UNIFORM = register_rule(RuleUnit("uniform", (), "AttnLRP: each operand of a product of two signals gets half of "
                                 "the product rule's gradient; in relevance (the LRP composites) R_a = a * "
                                 "d<R_y / stab(y), y>/da / 2 for y = a (x) b (an element-wise a * b: R_y / 2 each)."))
CP = register_rule(RuleUnit("cp", (), "CP-LRP: the operand computed by a Softmax (the attention probabilities, a "
                            "gate) or by an activation (a gated MLP's gate) is a constant; the other operand gets the "
                            "full gradient (as uniform without such an operand)."))
IDENTITY = register_rule(RuleUnit("identity", (), "AttnLRP: R_x = R_y on element-wise activations (g_x = g_y f(x) "
                                  "/ x); LayerNorm and RMSNorm with their sigma held constant.",
                                  default_kinds=frozenset({"activation"})))
SOFTMAX = register_rule(RuleUnit("softmax", (), "AttnLRP's softmax rule (LXT's): R_x = x (R_s - s sum R_s) over the "
                                 "Softmax's axis; in the gradient form (g = R / x) its plain gradient."))


@UNIFORM.emits("product")
def emit_uniform(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    if ctx.message == "relevance":
        return _uniform_relevance(ctx, unit, rule, r_outs[0], op)
    half = ctx.b.const(0.5)
    if getattr(op, "halve_first", False):  # the same floats: halving commutes with every rounding (a power of 2)
        return list(op.gradients(ctx.b.mul(r_outs[0], half)))
    ga, gb = op.gradients(r_outs[0])
    return [ctx.b.mul(ga, half), ctx.b.mul(gb, half)]


@CP.emits("product")
def emit_cp(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    if unit.gate is None:
        return emit_uniform(ctx, unit, rule, r_outs, op)
    ga, gb = op.gradients(r_outs[0])
    return [None, gb] if unit.gate == 0 else [ga, None]


@CP.emits("gate")
def emit_cp_gate(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    """The gate is a constant: the signal gets g * gate, the gate nothing."""
    result = [None, None]
    signal = 1 - unit.gate
    result[signal] = op.partial(signal, r_outs[0])
    return result


@IDENTITY.emits("activation")
def emit_identity(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    b, x, y = ctx.b, unit.inputs[0], unit.outputs[0]
    return op.place(b.mul(r_outs[0], b.div(y, b.stab(x, 1e-10))))


@IDENTITY.emits("normaliser")
def emit_identity_normaliser(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    return op.place(op.frozen(r_outs[0]))


def _uniform_relevance(ctx: "Context", unit: "Unit", rule: Rule, r: str, op: "SimpleNamespace") -> list:
    """R_a = a * ga / 2, R_b = b * gb / 2 with (ga, gb) the product rule's gradients of R_y / stab(y): what LXT's
    gradient form gives (R = x g) when the message g_y = R_y / y reaches the product."""
    operands = getattr(op, "operands", None)
    if operands is None:
        raise UnsupportedModelError(f"node '{unit.name}': rule '{rule.name}' in relevance form (the LRP composites) "
                                    "needs the product's operands; use --composite attn-lrp or cp-lrp")
    b = ctx.b
    shares = op.gradients(b.div(r, b.stab(op.output, rule.stabilizer)))
    half = b.const(0.5)
    return [b.mul(x, b.mul(g, half)) for x, g in zip(operands, shares)]


@SOFTMAX.emits("normaliser")
def emit_softmax(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    """R_x = x (R_s - s sum R_s) (op.total: the sum over the Softmax's axis); g_x = s (g_s - sum s g_s)."""
    b, r = ctx.b, r_outs[0]
    if ctx.message == "gradient":
        return op.place(op.gradient(r))
    x, s = unit.inputs[0], unit.outputs[0]
    return op.place(b.mul(x, b.sub(r, b.mul(s, op.total(r)))))

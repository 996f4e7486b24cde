"""The rules of the transformer composites (AttnLRP, CP-LRP), in LXT's gradient form: the message is
g = R / x and the heatmap x * g. The op-specific part (a product's gradients, a normaliser's derivative with
its statistics held constant) comes from the converter as `op` (see base.py)."""

from typing import TYPE_CHECKING

from lrpgraph.rules.base import Rule, RuleUnit, register_rule

if TYPE_CHECKING:
    from types import SimpleNamespace

    from lrpgraph.catalog import Unit
    from lrpgraph.catalog import Context

UNIFORM = register_rule(RuleUnit("uniform", (), "AttnLRP: each operand of a product of two signals gets half of "
                                 "the product rule's gradient."))
CP = register_rule(RuleUnit("cp", (), "CP-LRP: the operand computed by a Softmax (the attention probabilities, a "
                            "gate) or by an activation (a gated MLP's gate) is a constant; the other operand gets the "
                            "full gradient (as uniform without such an operand)."))
IDENTITY = register_rule(RuleUnit("identity", (), "AttnLRP: R_x = R_y on element-wise activations (g_x = g_y f(x) "
                                  "/ x); LayerNorm and RMSNorm with their sigma held constant.",
                                  default_kinds=frozenset({"activation"})))


@UNIFORM.emits("product")
def emit_uniform(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    ga, gb = op.gradients(r_outs[0])
    half = ctx.b.const(0.5)
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

"""The rules for linear layers (Conv, ConvTranspose, Gemm, MatMul with their bias and a folded
BatchNormalization): each is data, groups of Terms (terms.py), turned into nodes by linear_relevance.

When the message is a gradient (attn-lrp, cp-lrp: g = R / x), a linear rule returns g_x = R_x / x with R_x
its relevance for R_y = y g_y, as LXT's zennit hooks compute it; epsilon needs no division by x."""

from collections.abc import Callable
from typing import TYPE_CHECKING

from lrpgraph.checks import check_bounds
from lrpgraph.errors import LrpgraphError
from lrpgraph.rules.base import DEFAULT_STABILIZER, RULES, Param, Rule, RuleUnit, register_rule
from lrpgraph.rules.terms import Group, Term, linear_relevance

if TYPE_CHECKING:
    from types import SimpleNamespace

    from lrpgraph.catalog import Unit
    from lrpgraph.catalog import LayerEmitters
    from lrpgraph.catalog import Context

DEFAULT_GAMMA = 0.25
DEFAULT_ALPHA, DEFAULT_BETA = 2.0, 1.0
DEFAULT_LOW, DEFAULT_HIGH = 0.0, 1.0  # the image's value range (zbox)


def linear_rule(name: str, *params: Param, check: Callable | None = None, image_range: bool = False) -> Callable:
    """Decorator: register fn(*parameters) -> [Group] as the linear rule `name` (its docstring: the formula),
    accepted by every linear layer; check, image_range: as RuleUnit's."""
    def decorate(groups):
        unit = RuleUnit(name, params, groups.__doc__ or "", default_kinds=frozenset({"linear"}), check=check,
                        image_range=image_range, groups=groups)
        unit.emits("linear")(emit_groups)
        register_rule(unit)
        return groups

    return decorate


def emit_groups(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, layer: "LayerEmitters") -> list:
    """Any linear rule: its groups, with the stabilizer as eps; in the gradient form R_x / x for R_y = y g."""
    b, nonneg = ctx.b, layer.x in ctx.nonneg
    groups = RULES[rule.name].groups(*rule.params)
    if ctx.message == "gradient":
        relevance = linear_relevance(b, layer, rule, groups, b.mul(r_outs[0], layer.out), rule.stabilizer, nonneg,
                                     output=layer.out)
        return [b.div(relevance, b.stab(layer.x, 1e-10))]
    return [linear_relevance(b, layer, rule, groups, r_outs[0], rule.stabilizer, nonneg, output=layer.out)]


@linear_rule("epsilon", Param("epsilon", DEFAULT_STABILIZER, minimum=0.0, option="epsilon",
                              help="eps of the epsilon rule [the stabilizer]"))
def epsilon(eps: float) -> list:
    """R_i = x_i sum_j w_ij R_j / stab(z_j), z_j = sum_i x_i w_ij + b_j (the layer's own output), stabilised by
    eps; eps = 0 is LRP-0."""
    return [Group((Term("x", "w", "b"),))]


@RULES["epsilon"].emits("linear")
def emit_epsilon(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, layer: "LayerEmitters") -> list:
    """The epsilon rule divides by the layer's own output (no forward of its own), stabilised by its eps; in
    the gradient form g_x = W^T (g_y y / stab(y)), no division by x."""
    b, eps = ctx.b, rule.params[0]
    if ctx.message == "gradient":
        g = r_outs[0]
        return [layer.backward(b, b.mul(g, b.div(layer.out, b.stab(layer.out, eps))), layer.weights(b)[0])]
    groups = epsilon(eps)
    return [linear_relevance(b, layer, rule, groups, r_outs[0], eps, layer.x in ctx.nonneg, output=layer.out,
                             z=None if rule.zero_bias else layer.out)]  # without the bias: z = x W, its own forward


@RULES["epsilon"].emits("structure")
def emit_epsilon_map(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, op: "SimpleNamespace") -> list:
    """The epsilon rule of a linear map with no weights of its own (a Resize; op: its input x, output y and
    transpose(t), the adjoint): R_x = x * A^T (R_y / stab(y)); in the gradient form g_x = A^T (g_y y / stab(y))."""
    b, eps = ctx.b, rule.params[0]
    rest = [None] * (len(unit.inputs) - 1)
    if ctx.message == "gradient":
        return [op.transpose(b.mul(r_outs[0], b.div(op.y, b.stab(op.y, eps))))] + rest
    return [b.mul(op.x, op.transpose(b.div(r_outs[0], b.stab(op.y, eps))))] + rest


@linear_rule("zplus")
def zplus() -> list:
    """Only contributions that push in the direction of the input's sign: R_i = sum_j (x+_i w+_ij + x-_i w-_ij)
    R_j / stab(sum_i (x+_i w+_ij + x-_i w-_ij) + b+_j)."""
    return [Group((Term("pos", "pos", "pos"), Term("neg", "neg", "zero")))]


def _check_alpha_beta(values, where):
    """alpha - beta = 1, alpha, beta >= 0"""
    alpha, beta = values
    if alpha < 0 or beta < 0 or abs(alpha - beta - 1) > 1e-9:
        raise LrpgraphError(f"{where}: alpha-beta needs alpha - beta = 1 and alpha, beta >= 0 (got {alpha:g}, "
                            f"{beta:g}; e.g. alpha-beta:2:1)")


@linear_rule("alpha-beta", Param("alpha", DEFAULT_ALPHA, option="alpha", help="alpha of the alpha-beta rule"),
             Param("beta", DEFAULT_BETA, option="beta", help="beta of the alpha-beta rule"), check=_check_alpha_beta)
def alpha_beta(alpha: float, beta: float) -> list:
    """alpha times the zplus share (denominator with b+) minus beta times the share of the opposing
    contributions x+ w- + x- w+ (denominator with b-); alpha - beta = 1, alpha, beta >= 0."""
    return [Group((Term("pos", "pos", "pos"), Term("neg", "neg", "zero")), coef=alpha),
            Group((Term("pos", "neg", "neg"), Term("neg", "pos", "zero")), coef=-beta)]


@linear_rule("gamma", Param("gamma", DEFAULT_GAMMA, minimum=0.0, option="gamma", help="gamma of the gamma rule"))
def gamma(gamma: float) -> list:
    """Positive weights boosted: w + gamma w+ for contributions that agree with the sign of z_j, w + gamma w-
    for those that oppose it (roles swapped where z_j < 0); gamma = 0 is LRP-0."""
    return [Group((Term("pos", "gamma+", "gamma+"), Term("neg", "gamma-", "zero")), mask="pos"),
            Group((Term("pos", "gamma-", "gamma-"), Term("neg", "gamma+", "zero")), mask="neg")]


def _check_box(values, where):
    """low < high (per channel)"""
    check_bounds(values[0], values[1], where)


_BOX_HELP = "image value, for zbox (carried through in-graph normalisation)"


@linear_rule("zbox", Param("low", DEFAULT_LOW, option="low", help="lowest " + _BOX_HELP),
             Param("high", DEFAULT_HIGH, option="high", help="highest " + _BOX_HELP), check=_check_box,
             image_range=True)
def zbox(low: float | tuple, high: float | tuple) -> list:
    """For a first layer whose inputs lie in [low, high] (one value or one per channel, low < high):
    R_i = sum_j (x_i w_ij - low_i w+_ij - high_i w-_ij) R_j / stab(sum_i of the same); the biases cancel."""
    return [Group((Term("x", "w", "zero"), Term("low", "pos", "zero", -1.0), Term("high", "neg", "zero", -1.0)))]


@linear_rule("flat")
def flat() -> list:
    """Every input in the receptive field gets the same share: R_i = sum_j R_j / stab(n_j)."""
    return [Group((Term("ones", "ones", "zero"),))]


@linear_rule("wsquare")
def wsquare() -> list:
    """Shares by squared weight: R_i = sum_j w_ij^2 R_j / stab(sum_i w_ij^2 + b_j^2)."""
    return [Group((Term("ones", "square", "square"),))]


FLEX_ZBOX = register_rule(RuleUnit(
    "flex-zbox", (Param("low", DEFAULT_LOW), Param("high", DEFAULT_HIGH)),
    "LRP-Flex's first layer: the relevance z * g at the layer's output (g the gradient message), then zbox.",
    default_kinds=frozenset({"linear"}), check=_check_box, image_range=True))


@FLEX_ZBOX.emits("linear")
def emit_flex_zbox(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list, layer: "LayerEmitters") -> list:
    b = ctx.b
    relevance = b.mul(layer.out, r_outs[0])
    return [linear_relevance(b, layer, rule, zbox(*rule.params), relevance, rule.stabilizer, layer.x in ctx.nonneg,
                             output=layer.out)]

"""The mechanism of the linear rules: a rule is data (input, weight and bias modifiers grouped under one
denominator), and linear_relevance turns that data into ONNX nodes, as zennit's BasicHook does in torch.

For a group of terms t = (input modifier, weight modifier, bias modifier, sign):
    z_g  = sum_t sign_t * layer(in_t(x), w_t(W), b_t(b))          (a forward Conv/Gemm per term)
    s_g  = mask_g(R) / stab(z_g)
    R_in = sum_g coef_g * sum_t sign_t * in_t(x) * layer^T(s_g, w_t(W))   (the layer's adjoint per term)
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lrpgraph.catalog import LayerEmitters
    from lrpgraph.graph import Builder
    from lrpgraph.rules.base import Rule


@dataclass(frozen=True)
class Term:
    """One modified copy of the layer: which input, weight and bias modifier it uses, and its sign."""

    input: str  # x, pos, neg, ones, low, high (the rule's first two parameters: zbox's bounds)
    weight: str  # w, pos, neg, gamma+, gamma- (w + p w+, w + p w-, p the rule's first parameter), ones, square
    bias: str  # b, pos, neg, gamma+, gamma-, square, zero
    sign: float = 1.0


@dataclass(frozen=True)
class Group:
    """Terms that share one denominator, the group's coefficient, and an optional mask by the sign of z."""

    terms: tuple
    coef: float = 1.0
    mask: str = ""  # "pos" / "neg": only where the layer's own output z > 0 / z < 0


def linear_relevance(b: "Builder", layer: "LayerEmitters", rule: "Rule", groups: list, relevance: str, eps: float,
                     nonneg_input: bool = False, output: str | None = None, z: str | None = None) -> str:
    """Emit the relevance at a linear layer's input for the groups of a linear rule (see the module docstring).

    layer: a linear layer bound to its op's passes (catalog.LayerEmitters: forward, backward, weights); rule: its parameters feed the
    modifiers (zbox's bounds, gamma); eps: the stabilizer; output: the layer's own output tensor, for gamma's
    sign masks; z: a denominator to use instead of the groups' forward (the epsilon rule reuses the output)."""
    mods = _Modifiers(b, layer, rule, nonneg_input)
    result = []
    for group in groups:
        terms = [t for t in group.terms if not (nonneg_input and t.input == "neg")]
        if z is None:
            parts = [layer.forward(b, mods.input(t.input), mods.weight(t.weight), mods.bias(t.bias))
                     for t in terms]
            denominator = _signed_sum(b, parts, [t.sign for t in terms])
        else:
            denominator = z
        r = relevance
        if group.mask:
            test = "Greater" if group.mask == "pos" else "Less"
            r = b.mul(r, b.op("Cast", [b.op(test, [output, b.const(0.0)], "mask")], "maskf", to=1))
        if _nonnegative(terms) and z is None:
            s = b.div(r, b.add(denominator, b.const(eps)))  # z >= 0 (every term is): stab(z) = z + eps, no sign test
        else:
            s = b.div(r, b.stab(denominator, eps))
        parts = []
        for t in terms:
            back = layer.backward(b, s, mods.weight(t.weight))
            parts.append(back if t.input == "ones" else b.mul(mods.input(t.input), back))
        r_in = _signed_sum(b, parts, [t.sign for t in terms])
        if group.coef != 1.0:
            r_in = b.mul(r_in, b.const(group.coef))
        result.append(r_in)
    return b.sum(result)


_SIGNS = {"pos": 1, "neg": -1, "ones": 1, "square": 1}  # the modifiers with a known sign


def _nonnegative(terms):
    """True when every term's forward is >= 0 whatever the input and weights (z+ of zplus and alpha-beta's
    first group, flat, wsquare): then stab(z) = z + eps exactly (the sign test always picks +eps)."""
    return all(t.sign > 0 and _SIGNS.get(t.input, 0) * _SIGNS.get(t.weight, 0) > 0
               and t.bias in ("pos", "square", "zero") for t in terms)


def _signed_sum(b, tensors, signs):
    out = None
    for t, sign in zip(tensors, signs):
        if out is None:
            out = t if sign > 0 else b.op("Neg", [t], "neg")
        else:
            out = b.add(out, t) if sign > 0 else b.sub(out, t)
    return out


class _Modifiers:
    """Emits (once each) the modified inputs, weights and biases that a rule's terms ask for."""

    def __init__(self, b, layer, rule, nonneg_input=False):
        self.b, self.layer, self.rule = b, layer, rule
        self.nonneg_input = nonneg_input  # x >= 0 is known: x+ = x
        self.cache = {}

    def _once(self, key, make):
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def input(self, kind):
        b, x = self.b, self.layer.x
        if kind == "x":
            return x
        if kind == "pos":
            return x if self.nonneg_input else self._once("in+", lambda: b.pos(x))
        if kind == "neg":
            return self._once("in-", lambda: b.neg(x))
        if kind == "ones":
            return self._once("in1", lambda: b.ones_like(x))
        low, high = self.rule.params[:2]
        value = low if kind == "low" else high
        return self._once(kind, lambda: b.mul(b.ones_like(x), self.layer.per_channel(b, value)))

    def weight(self, kind):
        return self._once("w" + kind, lambda: self._modify(self.layer.weights(self.b)[0], kind))

    def bias(self, kind):
        bias = self.layer.weights(self.b)[1]
        if kind == "zero" or bias is None or self.rule.zero_bias:
            return None
        return self._once("b" + kind, lambda: self._modify(bias, kind))

    def _modify(self, p, kind):
        b = self.b
        if kind in ("w", "b"):
            return p
        if kind == "pos":
            return b.pos(p)
        if kind == "neg":
            return b.neg(p)
        if kind == "square":
            return b.mul(p, p)
        if kind == "ones":
            return b.ones_like(p)
        gamma = self.rule.params[0]
        part = b.pos(p) if kind == "gamma+" else b.neg(p)
        return b.add(p, b.mul(part, b.const(gamma)))

"""LRP rules: each linear rule is data (input, weight and bias modifiers grouped under one denominator),
and one mechanism turns that data into ONNX nodes, as zennit's BasicHook does in torch.

For a group of terms t = (input modifier, weight modifier, bias modifier, sign):
    z_g  = sum_t sign_t * layer(in_t(x), w_t(W), b_t(b))          (a forward Conv/Gemm per term)
    s_g  = mask_g(R) / stab(z_g)
    R_in = sum_g coef_g * sum_t sign_t * in_t(x) * layer^T(s_g, w_t(W))   (the layer's adjoint per term)
"""

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from lrpgraph.errors import LrpgraphError

if TYPE_CHECKING:
    from lrpgraph.catalog.layer import LayerEmitters
    from lrpgraph.graph import Builder

DEFAULT_STABILIZER = 1e-6
DEFAULT_GAMMA = 0.25
DEFAULT_ALPHA, DEFAULT_BETA = 2.0, 1.0
DEFAULT_LOW, DEFAULT_HIGH = 0.0, 1.0  # the image's value range (zbox)
DEFAULT_FLEX_EPSILON = 0.01  # LRP-Flex's ReLU eps


@dataclass(frozen=True)
class RuleOptions:
    """The composites' numeric rule options, from the CLI (or lrpgraph.convert's keywords) to the rules.

    epsilon: the epsilon rule's eps (None: the stabiliser); stabilizer: the other rules' denominator
    stabiliser; gamma; alpha, beta (alpha - beta = 1); low, high: the image's value range for zbox (a number
    or one per channel); flex_epsilon: LRP-Flex's ReLU eps."""

    epsilon: float | None = None
    stabilizer: float = DEFAULT_STABILIZER
    gamma: float = DEFAULT_GAMMA
    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    low: float | tuple = DEFAULT_LOW
    high: float | tuple = DEFAULT_HIGH
    flex_epsilon: float = DEFAULT_FLEX_EPSILON

    @classmethod
    def names(cls) -> tuple:
        return tuple(f.name for f in fields(cls))

    def params(self) -> dict:
        """{rule name: its parameters} that the composites give the rules they choose."""
        eps = self.stabilizer if self.epsilon is None else self.epsilon
        return {"epsilon": (eps,), "gamma": (self.gamma,), "alpha-beta": (self.alpha, self.beta),
                "zbox": (self.low, self.high), "flex-zbox": (DEFAULT_LOW, DEFAULT_HIGH),
                "flex-relu": (self.flex_epsilon,)}

    def to_dict(self) -> dict:
        """The options given (None left out), as the model's metadata records them."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Rule:
    """A rule chosen for one node: its name and parameters (already parsed into floats)."""

    name: str
    params: tuple = ()
    stabilizer: float = DEFAULT_STABILIZER

    def __str__(self):
        return self.name + "".join(":" + _fmt(p) for p in self.params)


def _fmt(p):
    return ",".join(f"{v:g}" for v in p) if isinstance(p, tuple) else f"{p:g}"


def _number(p, where):
    """A float, or for per-channel parameters (zbox bounds) a tuple of floats."""
    try:
        return tuple(float(v) for v in p) if isinstance(p, (list, tuple)) else float(p)
    except (TypeError, ValueError):
        raise LrpgraphError(f"{where}: rule parameters must be numbers (got {p!r})") from None


@dataclass(frozen=True)
class Term:
    input: str  # x, pos, neg, ones, low, high
    weight: str  # w, pos, neg, gamma+, gamma-, ones, square
    bias: str  # b, pos, neg, gamma+, gamma-, square, zero
    sign: float = 1.0


@dataclass(frozen=True)
class Group:
    terms: tuple
    coef: float = 1.0
    mask: str = ""  # "pos" / "neg": only where the layer's own output z > 0 / z < 0


# Rules for linear layers: name -> (parameter names and defaults, builder of the groups)
def _epsilon(eps):
    return [Group((Term("x", "w", "b"),))]


def _zplus():
    return [Group((Term("pos", "pos", "pos"), Term("neg", "neg", "zero")))]


def _alpha_beta(alpha, beta):
    return [Group((Term("pos", "pos", "pos"), Term("neg", "neg", "zero")), coef=alpha),
            Group((Term("pos", "neg", "neg"), Term("neg", "pos", "zero")), coef=-beta)]


def _gamma(gamma):
    return [Group((Term("pos", "gamma+", "gamma+"), Term("neg", "gamma-", "zero")), mask="pos"),
            Group((Term("pos", "gamma-", "gamma-"), Term("neg", "gamma+", "zero")), mask="neg")]


def _zbox(low, high):
    # the biases cancel: b - b+ - b- = 0
    return [Group((Term("x", "w", "zero"), Term("low", "pos", "zero", -1.0), Term("high", "neg", "zero", -1.0)))]


def _flat():
    return [Group((Term("ones", "ones", "zero"),))]


def _wsquare():
    return [Group((Term("ones", "square", "square"),))]


LINEAR_RULES = {
    "epsilon": (("epsilon",), (DEFAULT_STABILIZER,), _epsilon),
    "zplus": ((), (), _zplus),
    "alpha-beta": (("alpha", "beta"), (DEFAULT_ALPHA, DEFAULT_BETA), _alpha_beta),
    "gamma": (("gamma",), (DEFAULT_GAMMA,), _gamma),
    "zbox": (("low", "high"), (DEFAULT_LOW, DEFAULT_HIGH), _zbox),
    "flat": ((), (), _flat),
    "wsquare": ((), (), _wsquare),
}

# Rules for the other nodes; their arithmetic lives in the converters of each op family.
OTHER_RULES = {
    "pass": ((), ()),  # relevance flows unchanged
    "norm": ((), ()),  # R_i = x_i R_j / stab(sum of the inputs of j)
    "wta": ((), ()),  # max pooling: all of R_j to the arg-max of its window
    "gradient": ((), ()),  # the plain gradient (gradient-family methods, flex)
    "flex-relu": (("epsilon",), (DEFAULT_FLEX_EPSILON,)),  # ReLU gradient times a / (a + eps)
    "flex-zbox": (("low", "high"), (DEFAULT_LOW, DEFAULT_HIGH)),  # relevance z * g at the output, then zbox (flex's first layer)
    "guided": ((), ()),  # guided non-linearity: only positive gradients pass ReLU / MaxPool
    # transformers (REFERENCE.md section 9; arithmetic in converters/attention.py and norm.py)
    "uniform": ((), ()),  # AttnLRP: a product of two signals gives each operand half
    "cp": ((), ()),  # CP-LRP: attention probabilities (a gate) are constants, the other operand gets all
    "identity": ((), ()),  # AttnLRP: R_x = R_y on activations; LayerNorm with its sigma held constant
}

GRADIENT_RULES = ("gradient", "flex-relu", "guided")  # carry a gradient, not a relevance


def make_rule(name: str, params: tuple = (), stabilizer: float = DEFAULT_STABILIZER, where: str = "rule") -> Rule:
    """A Rule with its parameters checked (defaults fill missing ones)."""
    table = {**{k: v[:2] for k, v in LINEAR_RULES.items()}, **OTHER_RULES}
    if name not in table:
        raise LrpgraphError(f"{where}: unknown rule '{name}'; choose one of {', '.join(sorted(table))}")
    names, defaults = table[name]
    if len(params) > len(names):
        raise LrpgraphError(f"{where}: rule '{name}' takes {len(names)} parameter(s) ({', '.join(names) or 'none'}), "
                            f"got {len(params)}")
    values = tuple(_number(p, where) for p in params) + tuple(defaults[len(params):])
    if name == "alpha-beta":
        alpha, beta = values
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1) > 1e-9:
            raise LrpgraphError(f"{where}: alpha-beta needs alpha - beta = 1 and alpha, beta >= 0 (got {alpha:g}, {beta:g})")
    if name == "epsilon" and values[0] < 0:
        raise LrpgraphError(f"{where}: epsilon must be >= 0 (got {values[0]:g})")
    return Rule(name, values, stabilizer)


def parse_rule(text: str, stabilizer: float = DEFAULT_STABILIZER, where: str = "rule") -> Rule:
    """'alpha-beta:2:1' -> Rule('alpha-beta', (2.0, 1.0))."""
    name, *params = text.strip().split(":")
    try:
        numbers = tuple(tuple(float(v) for v in p.split(",")) if "," in p else float(p) for p in params)
    except ValueError:
        raise LrpgraphError(f"{where}: parameters of '{text}' must be numbers, e.g. gamma:0.25 or "
                            "zbox:-2.1:2.6 (per channel: zbox:-2.1,-2.0,-1.8:2.2,2.4,2.6)") from None
    return make_rule(name, numbers, stabilizer, where)


def is_linear(rule: Rule) -> bool:
    return rule.name in LINEAR_RULES


def linear_relevance(b: "Builder", layer: "LayerEmitters", rule: Rule, relevance: str, nonneg_input: bool = False,
                     output: str | None = None) -> str:
    """Emit the relevance at a linear layer's input for a rule in LINEAR_RULES (see the module docstring).

    layer: a linear layer with its emitters (weights, forward, backward; converters/linear.py); output: the
    layer's own output tensor, reused as the denominator by the epsilon rule and for gamma's sign masks."""
    groups = LINEAR_RULES[rule.name][2](*rule.params)
    eps = rule.params[0] if rule.name == "epsilon" else rule.stabilizer
    mods = _Modifiers(b, layer, rule, nonneg_input)
    result = []
    for group in groups:
        terms = [t for t in group.terms if not (nonneg_input and t.input == "neg")]
        if rule.name == "epsilon" and output is not None:
            z = output
        else:
            parts = [layer.forward(b, mods.input(t.input), mods.weight(t.weight), mods.bias(t.bias))
                     for t in terms]
            z = _signed_sum(b, parts, [t.sign for t in terms])
        r = relevance
        if group.mask:
            test = "Greater" if group.mask == "pos" else "Less"
            r = b.mul(r, b.op("Cast", [b.op(test, [output, b.const(0.0)], "mask")], "maskf", to=1))
        if _nonnegative(terms) and not (rule.name == "epsilon" and output is not None):
            s = b.div(r, b.add(z, b.const(eps)))  # z >= 0 (every term is): stab(z) = z + eps, no sign test
        else:
            s = b.div(r, b.stab(z, eps))
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
        if kind == "zero" or bias is None:
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

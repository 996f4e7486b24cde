"""Composites: which rule each unit gets, one Composite per preset. Same names and meaning as zennit's, so
heatmaps can be compared. Imports neither onnx nor the converters: the CLI, its checks and ISNet training
read the names and the options each composite reads from here; composites.plan applies them to a graph.

A table maps composite keys (first linear layer, conv, dense, activation, sum, avgpool, bn, maxpool, gate,
affine, structure, ...: the keys of the op records, lrpgraph/catalog/) to rule names."""

from dataclasses import dataclass, field

from lrpgraph.rules.base import RULES

TRANSFORMER = {"first": "gradient", "conv": "gradient", "dense": "gradient", "activation": "identity",
               "layernorm": "identity", "normaliser": "gradient", "sum": "gradient", "avgpool": "gradient",
               "bn": "gradient", "maxpool": "gradient", "gate": "cp", "affine": "gradient", "structure": "gradient"}

# every LRP composite starts from this table; an attention inside a CNN (YOLO11's C2PSA) takes AttnLRP's rules in
# relevance form, as LXT applies them: products of two signals 'uniform', the Softmax of the attention
# probabilities 'softmax' (any other Softmax inside the graph, a detector's DFL, passes relevance)
BASE = {"activation": "pass", "sum": "norm", "avgpool": "norm", "bn": "pass", "maxpool": "wta",
        "structure": "pass", "gate": "pass", "affine": "pass", "product": "uniform", "attention": "softmax"}


@dataclass(frozen=True)
class Composite:
    """A rule preset: its name, its table (an LRP composite's on top of BASE), whether it carries a gradient
    from the logits (the seed is d(explained)/dy, not a relevance), whether that gradient reaches the input
    (the heatmap is input x message; the others end in a rule), and whether the command line takes --rule
    overrides with it."""

    name: str
    table: dict = field(default_factory=dict)
    gradient: bool = False
    to_input: bool = False
    overrides: bool = True
    doc: str = ""

    def rules(self) -> dict:
        """{composite key: rule name} in full."""
        return dict(self.table) if self.gradient else {**BASE, **self.table}

    def options(self) -> frozenset:
        """The RuleOptions fields it reads: the options of its rules' parameters, and the stabilizer for LRP ones."""
        names = {p.option for rule in set(self.rules().values()) for p in RULES[rule].params if p.option}
        return frozenset(names | (set() if self.gradient else {"stabilizer"}))


COMPOSITES: dict = {}


def register_composite(composite: Composite) -> Composite:
    COMPOSITES[composite.name] = composite
    return composite


def _lrp(name, first, conv, dense, doc=""):
    register_composite(Composite(name, {"first": first, "conv": conv, "dense": dense}, doc=doc))


_lrp("epsilon", "epsilon", "epsilon", "epsilon")
_lrp("epsilon-plus", "zplus", "zplus", "epsilon")
_lrp("epsilon-plus-flat", "flat", "zplus", "epsilon")
_lrp("zplus", "zplus", "zplus", "zplus", "z+ on every linear layer, dense ones included (Dual ISNet's first heatmap)")
_lrp("epsilon-gamma-box", "zbox", "gamma", "epsilon")
_lrp("epsilon-alpha2-beta1", "alpha-beta", "alpha-beta", "epsilon")
_lrp("epsilon-alpha2-beta1-flat", "flat", "alpha-beta", "epsilon")
register_composite(Composite(
    "flex", {"first": "flex-zbox", "conv": "gradient", "dense": "gradient", "activation": "gradient",
             "relu": "flex-relu", "sum": "gradient", "avgpool": "gradient", "bn": "gradient", "maxpool": "wta",
             "gate": "gradient", "affine": "gradient", "product": "gradient", "normaliser": "gradient",
             "lrn": "gradient", "layernorm": "gradient"}, gradient=True,
    doc="LRP-Flex: relevance = input x gradient with ReLU gradients scaled by a / (a + eps), zbox(0, 1) first"))
# transformers, in LXT's gradient form (the message is g = R / x, the heatmap x * g): LRP-0 on every linear layer
# (the plain gradient: what LXT does where no zennit rule is attached), the identity rule on element-wise
# activations (GELU), LayerNorm with sigma constant, the plain gradient elsewhere (residual and constant Adds
# absorb like biases, the Softmax inside is its gradient); products: halved (AttnLRP) or with the attention
# probabilities constant (CP-LRP)
register_composite(Composite("attn-lrp", {**TRANSFORMER, "product": "uniform"}, gradient=True, to_input=True,
                             overrides=False, doc="AttnLRP"))
register_composite(Composite("cp-lrp", {**TRANSFORMER, "product": "cp"}, gradient=True, to_input=True,
                             overrides=False, doc="CP-LRP"))


def names() -> list:
    return list(COMPOSITES)


def gradient_composites() -> set:
    """The composites that carry a gradient from the logits."""
    return {c.name for c in COMPOSITES.values() if c.gradient}


def message_composites() -> set:
    """... of which these carry it to the input (the heatmap is input x message)."""
    return {c.name for c in COMPOSITES.values() if c.to_input}


def option_users() -> dict:
    """{option: the composites that read it}; 'rules' (--rule): the composites that take overrides."""
    users = {}
    for composite in COMPOSITES.values():
        for option in composite.options():
            users.setdefault(option, set()).add(composite.name)
    users["rules"] = {c.name for c in COMPOSITES.values() if c.overrides}
    return users

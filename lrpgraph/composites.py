"""Composites: which rule each unit gets. Same names and meaning as zennit's, so heatmaps can be compared.

A composite maps unit categories (first linear layer, conv, dense, activation, sum, avgpool, bn,
maxpool, gate, affine, structure: the kinds and categories of the op records in converters/) to rules;
overrides by op type or node name come on top. Which rules a node accepts is its op record's."""

from lrpgraph.checks import check_rule, check_rule_options
from lrpgraph.catalog import RECORDS
from lrpgraph.errors import LrpgraphError
from lrpgraph.rules import RuleOptions, make_rule, parse_rule

TRANSFORMER = {"first": "gradient", "conv": "gradient", "dense": "gradient", "activation": "identity",
               "layernorm": "identity", "normaliser": "gradient", "sum": "gradient", "avgpool": "gradient",
               "bn": "gradient", "maxpool": "gradient", "gate": "cp", "affine": "gradient", "structure": "gradient"}

# every LRP composite starts from this map (REFERENCE.md section 3)
BASE = {"activation": "pass", "sum": "norm", "avgpool": "norm", "bn": "pass", "maxpool": "wta",
        "structure": "pass", "gate": "pass", "affine": "pass"}

COMPOSITES = {
    "epsilon": {"first": "epsilon", "conv": "epsilon", "dense": "epsilon"},
    "epsilon-plus": {"first": "zplus", "conv": "zplus", "dense": "epsilon"},
    "epsilon-plus-flat": {"first": "flat", "conv": "zplus", "dense": "epsilon"},
    # z+ on every linear layer, dense ones included (Dual ISNet's first heatmap, REFERENCE.md section 6)
    "zplus": {"first": "zplus", "conv": "zplus", "dense": "zplus"},
    "epsilon-gamma-box": {"first": "zbox", "conv": "gamma", "dense": "epsilon"},
    "epsilon-alpha2-beta1": {"first": "alpha-beta", "conv": "alpha-beta", "dense": "epsilon"},
    "epsilon-alpha2-beta1-flat": {"first": "flat", "conv": "alpha-beta", "dense": "epsilon"},
    # LRP-Flex: relevance = input x gradient with ReLU gradients scaled by a / (a + eps), zbox(0, 1) first
    "flex": {"first": "flex-zbox", "conv": "gradient", "dense": "gradient", "activation": "gradient",
             "relu": "flex-relu", "sum": "gradient", "avgpool": "gradient", "bn": "gradient", "maxpool": "wta",
             "gate": "gradient", "affine": "gradient", "product": "gradient", "normaliser": "gradient",
             "lrn": "gradient", "layernorm": "gradient"},
    # transformers (REFERENCE.md section 9), in LXT's gradient form (the message is g = R / x, the heatmap x * g):
    # LRP-0 on every linear layer (the plain gradient: what LXT does where no zennit rule is attached; the
    # rules of section 2 through --rule, e.g. Conv=gamma:0.25), the identity rule on element-wise
    # activations (GELU), LayerNorm with sigma constant, the plain gradient elsewhere (residual and constant
    # Adds absorb like biases, the Softmax inside is its gradient); products: halved (AttnLRP) or with the
    # attention probabilities constant (CP-LRP)
    "attn-lrp": {**TRANSFORMER, "product": "uniform"},
    "cp-lrp": {**TRANSFORMER, "product": "cp"},
}

# rule sets that carry a gradient from the logits (the seed is d(explained)/dy, not a relevance)
GRADIENT_COMPOSITES = {"flex", "attn-lrp", "cp-lrp"}
# ... of which these carry it to the input, whose heatmap is input x message (the others end in a rule)
MESSAGE_COMPOSITES = {"attn-lrp", "cp-lrp"}


def plan(units: list, composite: str = "epsilon-plus", overrides: list | tuple = (), options: RuleOptions | None = None,
         first_bounds: dict | None = None) -> dict:
    """{unit name: Rule} for every unit. overrides: 'OpType=rule:params' or 'NAME=rule:params', NAME a node
    name or a layer's module path (from its weight's name); a name wins over an op type. options: the rule
    options (options.low, options.high: the image's value range); first_bounds {unit name: (low, high) ->
    (low, high)} (bounds.first_layer_maps) carries it to a first layer behind in-graph normalisation for the
    composites' zbox rules."""
    if composite not in COMPOSITES:
        raise LrpgraphError(f"unknown composite '{composite}'; choose one of {', '.join(COMPOSITES)}")
    options = options or RuleOptions()
    check_rule_options(options)
    stabilizer = options.stabilizer
    table = COMPOSITES[composite] if composite in GRADIENT_COMPOSITES else {**BASE, **COMPOSITES[composite]}
    params = options.params()
    by_key = _parse_overrides(overrides, units, stabilizer)
    chosen = {}
    for unit in units:
        record = RECORDS[unit.op]
        rule = by_key.get(unit.name) or by_key.get(unit.op)
        if rule is None:
            if composite in GRADIENT_COMPOSITES - MESSAGE_COMPOSITES and unit.upstream:
                name = "pass"
            elif unit.first:
                name = table["first"]
            elif record.composite_key in table:
                name = table[record.composite_key]
            else:
                name = table.get(unit.category, "pass")
            values = params.get(name, ())
            if unit.first and name in ("zbox", "flex-zbox") and unit.name in (first_bounds or {}):
                values = first_bounds[unit.name](*values)
            rule = make_rule(name, values, stabilizer, where=f"node '{unit.name}'")
        allowed = record.rules_for(unit.kind)
        if rule.name not in allowed:
            raise LrpgraphError(f"node '{unit.name}' ({unit.op}): rule '{rule.name}' does not apply to a {unit.category} "
                                f"node; use one of {', '.join(sorted(allowed))}")
        chosen[unit.name] = rule
    return chosen


def _aliases(units):
    """Names a rule override may use for a unit: its node name, the names of nodes fused into it, and for
    linear layers the module path of the weight (torch exporters name it 'features.conv0.weight', so
    'features.conv0' and '/features/conv0' both work)."""
    aliases = {}
    for unit in units:
        names = [unit.name] + list(unit.fused)
        if unit.layer is not None:
            weight = unit.layer.weight
            names += [weight, weight[: -len(".weight")] if weight.endswith(".weight") else weight]
            bias = unit.layer.bias or ""  # torch.onnx exports nn.Linear as MatMul with an unnamed transposed weight
            if bias.endswith(".bias"):
                names.append(bias[: -len(".bias")])
        for name in names:
            aliases.setdefault(_plain(name), unit.name)
    return aliases


def _plain(name):
    return name.strip("/").replace("/", ".")


def _parse_overrides(overrides, units, stabilizer):
    aliases = _aliases(units)
    ops = {u.op for u in units}
    out = {}
    for text in overrides:
        key, sep, spec = text.partition("=")
        key = key.strip()
        if not sep or not key or not spec.strip():
            raise LrpgraphError(f"--rule '{text}': write KEY=RULE, e.g. Gemm=epsilon:0.25 or /features/conv0=zplus")
        if key in ops:
            name = key
        elif _plain(key) in aliases:
            name = aliases[_plain(key)]
        else:
            raise LrpgraphError(f"--rule '{text}': no node, layer or op type '{key}' on the explained path; "
                                "`lrpgraph inspect` lists them")
        out[name] = parse_rule(spec, stabilizer, where=f"--rule '{text}'")
        check_rule(out[name], f"--rule '{text}'")
    return out

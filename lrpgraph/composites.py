"""Composites: which rule each unit gets (the presets themselves are units in rules/composites.py). Same names
and meaning as zennit's, so heatmaps can be compared.

A composite maps composite keys (first linear layer, conv, dense, activation, sum, avgpool, bn,
maxpool, gate, affine, structure: the op records' keys, lrpgraph/catalog/) to rules;
overrides by op type or node name come on top. Which rules a node accepts is its op record's."""

from dataclasses import replace

from lrpgraph.catalog import RECORDS
from lrpgraph.errors import LrpgraphError
from lrpgraph.rules import RULES, RuleOptions, accepted, check_rule_options, make_rule, parse_rule
from lrpgraph.rules.composites import COMPOSITES, gradient_composites, message_composites

GRADIENT_COMPOSITES = gradient_composites()  # carry a gradient from the logits (the seed is d(explained)/dy)
MESSAGE_COMPOSITES = message_composites()  # ... to the input, whose heatmap is input x message


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
    table = COMPOSITES[composite].rules()
    params = options.params()
    by_key = _parse_overrides(overrides, units, stabilizer)
    if composite not in GRADIENT_COMPOSITES:  # flex (input x gradient) has its own rules for transformers
        _refuse_transformer(units, by_key, composite)
    chosen = {}
    for unit in units:
        record = RECORDS[unit.op]
        rule = by_key.get(unit.name) or by_key.get(unit.op)
        if rule is None:
            if composite in GRADIENT_COMPOSITES - MESSAGE_COMPOSITES and unit.upstream:
                name = "pass"
            elif unit.first:
                name = table["first"]
            else:
                name = next((table[key] for key in unit.keys if key in table), "pass")
            values = params.get(name, ())
            if unit.first and RULES[name].image_range and unit.name in (first_bounds or {}):
                values = first_bounds[unit.name](*values)
            rule = make_rule(name, values, stabilizer, where=f"node '{unit.name}'", check=False)
        if options.zero_params and unit.layer is not None:
            rule = replace(rule, zero_bias=True)
        allowed = accepted(record, unit.kind)
        if rule.name not in allowed:
            raise LrpgraphError(f"node '{unit.name}' ({unit.op}): rule '{rule.name}' does not apply to a {unit.keys[0]} "
                                f"node; use one of {', '.join(sorted(allowed))}")
        chosen[unit.name] = rule
    return chosen


def _refuse_transformer(units: list, by_key: dict, composite: str) -> None:
    """The LRP composites give attention products AttnLRP's rules in relevance form, checked inside a CNN
    (YOLO11's C2PSA); a transformer, whose LayerNorms they would pass relevance through, is refused with the
    composites made for it, unless each product's rule is given (--rule NODE=RULE)."""
    norm = next((u for u in units if "layernorm" in u.keys), None)
    product = next((u for u in units if u.kind == "product" and not (by_key.get(u.name) or by_key.get(u.op))), None)
    if norm is not None and product is not None:
        raise LrpgraphError(f"a transformer (LayerNorm '{norm.name}', attention product '{product.name}'): the LRP "
                            f"composite '{composite}' is not made for it; use --composite attn-lrp or cp-lrp (LXT's "
                            f"rules for transformers)")


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
    return out

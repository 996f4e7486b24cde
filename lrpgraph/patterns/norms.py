"""Norms written out in elementary ops, as the one LayerNormalization or RMSNormalization node the walker
explains. A norm may reduce over any axes (a channel norm: axis 1 of [N, C, H, W]); the synthetic node
carries them as `axes` (ONNX's `axis` means "from there to the last axis")."""

from onnx import NodeProto, helper

from lrpgraph.patterns.match import Graph, Match, Pattern, described, other


def _epsilon(graph: Graph, add: NodeProto, statistic: str) -> tuple:
    """(the ReduceMean that add adds epsilon to, epsilon's value) or a reason (str) naming what is missing."""
    mean = graph.producer(add.input[0]) or graph.producer(add.input[1])
    if mean is None or mean.op_type != "ReduceMean":
        return f"{described(add)} does not add epsilon to a ReduceMean (the {statistic})"
    eps = graph.const(other(add, mean.output[0]))
    if eps is None:
        return f"the epsilon '{other(add, mean.output[0])}' that {described(add)} adds is not a constant"
    if eps.size != 1:
        return f"the epsilon '{other(add, mean.output[0])}' that {described(add)} adds is not a scalar " \
               f"(shape {list(eps.shape)})"
    return mean, eps


def _is_square(graph: Graph, node: NodeProto, x: str) -> bool:
    """node computes x^2, as Pow(x, 2) or Mul(x, x)."""
    if node is None:
        return False
    if node.op_type == "Pow":
        exponent = graph.const(node.input[1])
        return node.input[0] == x and exponent is not None and exponent.size == 1 and float(exponent) == 2.0
    return node.op_type == "Mul" and list(node.input) == [x, x]


def _affine_tail(graph: Graph, match: Match, shift: bool) -> None:
    """Extend match by a following Mul by a constant (the scale), then, with shift, by a following Add of a
    constant (the shift), each where present."""
    for op, key in (("Mul", "scale"), ("Add", "shift"))[:2 if shift else 1]:
        nxt = graph.only_consumer(match.output, op)
        if nxt is None or other(nxt, match.output) not in graph.inits:
            continue
        match.values[key], match.output = other(nxt, match.output), nxt.output[0]
        match.members.append(nxt)


def layer_norm(graph: Graph, div: NodeProto) -> Match | str | None:
    """(x - ReduceMean(x)) / Sqrt(ReduceMean(d^2) + eps), d the deviation, d^2 as Pow(d, 2) or Mul(d, d), the
    two ReduceMeans over the same axes, then (+ Mul scale) (+ Add shift)."""
    sub, sqrt = graph.producer(div.input[0], "Sub"), graph.producer(div.input[1], "Sqrt")
    mean = graph.producer(sub.input[1], "ReduceMean") if sub is not None else None
    if sqrt is None or mean is None or mean.input[0] != sub.input[0]:
        return None
    add = graph.producer(sqrt.input[0], "Add")
    if add is None:
        return f"{described(sqrt)} does not read an Add (the variance plus epsilon)"
    found = _epsilon(graph, add, "variance")
    if isinstance(found, str):
        return found
    var, eps = found
    d = sub.output[0]
    if not _is_square(graph, graph.producer(var.input[0]), d):
        return f"the variance's {described(var)} does not read the squared deviation, Pow('{d}', 2) or " \
               f"Mul('{d}', '{d}')"
    axes = graph.axes(mean)
    if not axes:
        return f"the mean's {described(mean)} has no constant axes or does not keep its dims"
    if axes != graph.axes(var):
        return f"the variance's {described(var)} reduces axes {graph.axes(var)} but the mean's " \
               f"{described(mean)} reduces {axes}"
    match = Match([mean, sub, graph.producer(var.input[0]), var, add, sqrt, div], div.output[0],
                  {"x": sub.input[0], "scale": "", "shift": "", "axes": axes, "epsilon": float(eps),
                   "name": div.name})
    _affine_tail(graph, match, shift=True)
    return match


def _root(graph: Graph, last: NodeProto) -> tuple | None:
    """(x, the Sqrt, [the Reciprocal or 1 / Sqrt]) of x / Sqrt(...): a Div, or a Mul by a Reciprocal or by
    a Div of one; None if last is neither."""
    if last.op_type == "Div":
        return last.input[0], graph.producer(last.input[1], "Sqrt"), []
    for x, inverse in (last.input, last.input[::-1]):
        inv = graph.producer(inverse)
        if inv is not None and (inv.op_type == "Reciprocal" or inv.op_type == "Div"
                                and graph.scalar(inv.input[0], 1.0)):
            return x, graph.producer(inv.input[-1], "Sqrt"), [inv]
    return None


def rms_norm(graph: Graph, last: NodeProto) -> Match | str | None:
    """x / Sqrt(ReduceMean(x^2) + eps) (Div, or Mul by a Reciprocal or by 1 / Sqrt), times a constant
    scale."""
    found = _root(graph, last)
    if found is None or found[1] is None:
        return None
    x, sqrt, inverse = found
    add = graph.producer(sqrt.input[0], "Add")
    if add is None or graph.producer(add.input[0]) is None and graph.producer(add.input[1]) is None:
        return None
    found = _epsilon(graph, add, "mean square")
    if isinstance(found, str):
        return found
    mean, eps = found
    axes = graph.axes(mean)
    if not axes:
        return f"the mean square's {described(mean)} has no constant axes or does not keep its dims"
    square = graph.producer(mean.input[0])
    if not _is_square(graph, square, x):
        return f"the mean square's {described(mean)} does not read Pow('{x}', 2) or Mul('{x}', '{x}') " \
               f"('{x}' is what {described(last)} divides)"
    match = Match([square, mean, add, sqrt] + inverse + [last], last.output[0],
                  {"x": x, "scale": "", "axes": axes, "epsilon": float(eps), "name": last.name})
    _affine_tail(graph, match, shift=False)
    return match


def layer_normalization(match: Match) -> NodeProto:
    v = match.values
    return helper.make_node("LayerNormalization", [v["x"], v["scale"], v["shift"]], [match.output],
                            name=v["name"] or match.output, axis=v["axes"][0], axes=v["axes"],
                            epsilon=v["epsilon"])


def rms_normalization(match: Match) -> NodeProto:
    v = match.values
    return helper.make_node("RMSNormalization", [v["x"], v["scale"]], [match.output],
                            name=v["name"] or match.output, axis=v["axes"][0], axes=v["axes"], epsilon=v["epsilon"])


LAYER_NORM = Pattern("LayerNorm", "Div", layer_norm, layer_normalization)
RMS_NORM = Pattern("RMSNorm", "Div", rms_norm, rms_normalization)
RMS_NORM_BY_PRODUCT = Pattern("RMSNorm", "Mul", rms_norm, rms_normalization)

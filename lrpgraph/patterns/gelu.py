"""GELU written out, as the one Gelu node the walker explains: x * 0.5 * (1 + Erf(x / sqrt 2)) and its tanh
form x * 0.5 * (1 + Tanh(sqrt(2 / pi) (x + 0.044715 x^3))), in their usual orders."""

import math

from onnx import NodeProto, helper

from lrpgraph.patterns.match import Graph, Match, Pattern, described, other


def gelu(graph: Graph, erf: NodeProto) -> Match | str | None:
    """Erf(x / sqrt 2) (or x * (1 / sqrt 2)), then the tail."""
    scaled = graph.producer(erf.input[0])
    if scaled is None or not (scaled.op_type == "Div" and graph.scalar(scaled.input[1], math.sqrt(2))
                              or scaled.op_type == "Mul"
                              and graph.scalar(other(scaled, scaled.input[0]), 1 / math.sqrt(2))):
        return f"{described(erf)} does not read x / sqrt(2) or x * (1 / sqrt(2))"
    x = scaled.input[0] if scaled.op_type == "Div" or scaled.input[0] not in graph.inits else scaled.input[1]
    return _tail(graph, x, erf, [scaled, erf])


def gelu_tanh(graph: Graph, tanh: NodeProto) -> Match | str | None:
    """Tanh(c (x + 0.044715 x^3)), c = sqrt(2 / pi), with x^3 as Pow(x, 3) or x * x * x; then the tail."""
    scaled = graph.producer(tanh.input[0], "Mul")
    c = math.sqrt(2 / math.pi)
    inner_of = next((t for t in scaled.input if graph.scalar(other(scaled, t), c)), None) if scaled else None
    if inner_of is None:
        return None
    inner = graph.producer(inner_of, "Add")
    if inner is None:
        return f"{described(scaled)} does not scale an Add (x + 0.044715 x^3) by sqrt(2 / pi)"
    for x, term in (inner.input, inner.input[::-1]):
        times = graph.producer(term, "Mul")
        if times is None:
            continue
        cubed = next((t for t in times.input if graph.scalar(other(times, t), 0.044715)), None)
        cube = _cube(graph, cubed, x) if cubed is not None else None
        if cube is not None:
            return _tail(graph, x, tanh, cube + [times, inner, scaled, tanh], approximate="tanh")
    return f"{described(inner)} does not add x and 0.044715 x^3 (x^3 as Pow(x, 3) or x * x * x)"


def _cube(graph: Graph, tensor: str, x: str) -> list | None:
    """The nodes computing tensor = x^3 (Pow(x, 3), x * (x * x) or (x * x) * x), or None."""
    node = graph.producer(tensor)
    if node is None:
        return None
    if node.op_type == "Pow":
        return [node] if node.input[0] == x and graph.scalar(node.input[1], 3.0) else None
    if node.op_type != "Mul" or x not in node.input:
        return None
    square = graph.producer(other(node, x), "Mul")
    return [square, node] if square is not None and list(square.input) == [x, x] else None


def _tail(graph: Graph, x: str, f: NodeProto, members: list, **attrs) -> Match | str:
    """The GELU after its inner function f (Erf or Tanh): (1 + f) times x and times 0.5, in either order, or
    times (x * 0.5)."""
    add = graph.only_consumer(f.output[0], "Add")
    if add is None or not graph.scalar(other(add, f.output[0]), 1.0):
        return f"the output of {described(f)} is not read by one Add of 1 alone"
    members, out, half, with_x = members + [add], add.output[0], False, False
    for _ in range(2):
        nxt = graph.only_consumer(out, "Mul")
        if nxt is None:
            return f"'{out}' is not read by one Mul alone (by x, by 0.5 or by x * 0.5, x = '{x}')"
        factor = other(nxt, out)
        half_x = graph.producer(factor, "Mul")
        if factor == x and not with_x:
            with_x = True
        elif graph.scalar(factor, 0.5) and not half:
            half = True
        elif half_x is not None and x in half_x.input and graph.scalar(other(half_x, x), 0.5) \
                and not (half or with_x):
            half = with_x = True
            members.append(half_x)
        else:
            return f"{described(nxt)} multiplies by '{factor}', not by x, 0.5 or x * 0.5 (x = '{x}')"
        members.append(nxt)
        out = nxt.output[0]
        if half and with_x:
            break
    if not (half and with_x):
        return f"'{out}' is not multiplied by both x and 0.5 (x = '{x}')"
    return Match(members, out, {"x": x, "name": f.name, "attrs": attrs})


def gelu_node(match: Match) -> NodeProto:
    v = match.values
    return helper.make_node("Gelu", [v["x"]], [match.output], name=v["name"] or match.output, **v["attrs"])


GELU = Pattern("GELU", "Erf", gelu, gelu_node)
GELU_TANH = Pattern("GELU", "Tanh", gelu_tanh, gelu_node)

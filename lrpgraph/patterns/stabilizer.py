"""The stabilised divisions of the emitted relevance graph, and what simplify.py needs to rewrite them: the
division Div(r, stab(z)), the forward activation v that r is a product of (a Relu's or a Clip's output), and
the other factors of r."""

from collections.abc import Mapping

from onnx import NodeProto

from lrpgraph.graph import attrs_of


def relu_outputs(nodes: list) -> dict:
    """{z: relu(z)} for every Relu among nodes."""
    return {n.input[0]: n.output[0] for n in nodes if n.op_type == "Relu"}


def tiled_copies(nodes: list, marker: str) -> dict:
    """{tensor: its copy tiled K times along the batch} for the Tile nodes whose name holds marker (the K-target
    walk's copies of the forward tensors, targets.tile: all with the same repeats)."""
    return {n.input[0]: n.output[0] for n in nodes if n.op_type == "Tile" and marker in n.name}


def clips_from_zero(forward_nodes: list, inits: Mapping) -> dict:
    """{z: clip(z)} for every Clip whose lower bound is 0 and upper bound is at least 0 (ReLU6). (graph.load has
    turned Constant nodes into initializers.)"""
    clips = {}
    for n in forward_nodes:
        if n.op_type != "Clip":
            continue
        attrs = attrs_of(n)
        bounds = [attrs.get("min"), attrs.get("max")]  # opset 6; inputs from opset 11
        for k, t in enumerate(n.input[1:3]):
            bounds[k] = inits[t].reshape(-1)[0] if t in inits and inits[t].size == 1 else (None if t else bounds[k])
        low, high = bounds
        if low is not None and float(low) == 0.0 and (high is None or float(high) >= 0.0):
            clips[n.input[0]] = n.output[0]
    return clips


def stabilized_division(div: NodeProto, producer: Mapping, values: Mapping) -> tuple | None:
    """(z, name of the eps constant) when div is a Div by z + Where(z >= 0, eps, -eps) with eps > 0
    (Builder.stab); producer: {tensor: node}, values: constants by name."""
    if div.op_type != "Div":
        return None
    add = producer.get(div.input[1])
    if add is None or add.op_type != "Add":
        return None
    z, shift = add.input
    where, test = producer.get(shift), None
    if where is not None and where.op_type == "Where":
        test = producer.get(where.input[0])
    if test is None or test.op_type != "GreaterOrEqual" or list(test.input[:1]) != [z]:
        return None
    zero, plus, minus = (values.get(t) for t in (test.input[1], where.input[1], where.input[2]))
    if any(v is None or v.size != 1 for v in (zero, plus, minus)):
        return None
    eps = float(plus.reshape(-1)[0])
    if float(zero.reshape(-1)[0]) != 0.0 or not eps > 0 or float(minus.reshape(-1)[0]) != -eps:
        return None
    return z, where.input[1]


def products(r: str, v: str, producer: Mapping, uses: Mapping) -> list | None:
    """[g_1, ...] when r = v * g (or a sum of such products) and nothing else reads r or the products."""
    node = producer.get(r)
    if node is None or uses.get(r, 0) != 1:
        return None
    parts = list(node.input) if node.op_type == "Sum" else [r]  # Builder.sum's fan-in
    factors = []
    for t in parts:
        mul = producer.get(t)
        if mul is None or mul.op_type != "Mul" or v not in mul.input or (t != r and uses.get(t, 0) != 1):
            return None
        factors.append(mul.input[1] if mul.input[0] == v else mul.input[0])
    return factors

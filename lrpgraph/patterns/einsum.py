"""An Einsum of a signal and a constant matrix that is x @ W or x @ W^T, as the MatMul or Gemm layer it is."""

from onnx import NodeProto, helper

from lrpgraph.graph import attrs_of
from lrpgraph.patterns.match import Graph, Match, Pattern


def einsum_layer(graph: Graph, node: NodeProto) -> Match | str | None:
    """x @ W ('...k,kc->...c', 'blk,kc->blc', any letters) as MatMul, or x @ W^T ('...k,ck->...c') as Gemm with
    transB, with the constant as either operand ('ck,bk->bc' is x @ W^T too): the fused node reads [x, W].
    Other Einsums of a signal and a constant are near-misses (refused as products later)."""
    equation = attrs_of(node, decoded=True).get("equation", "").replace(" ", "")
    if len(node.input) != 2 or (node.input[0] in graph.inits) == (node.input[1] in graph.inits) \
            or "->" not in equation:
        return None
    terms, out = equation.split("->")[0].split(","), equation.split("->")[1]
    first = node.input[0] in graph.inits  # the constant is the first operand
    (a, w), (x, weight) = (terms[::-1], node.input[::-1]) if first else (terms, node.input)
    values = {"x": x, "weight": weight, "name": node.name, "outputs": list(node.output)}
    if len(w) == 2 and len(set(a.replace(".", ""))) == len(a.replace(".", "")) and len(a) >= 1:
        k, lead = a[-1], a[:-1]
        if w == k + w[1] and out == lead + w[1] and w[1] not in a:
            return Match([node], node.output[0], {**values, "transpose": False})
        if w == w[0] + k and out == lead + w[0] and w[0] not in a:
            return Match([node], node.output[0], {**values, "transpose": True})
    return f"the equation '{equation}' is not x @ W ('...k,kc->...c') or x @ W^T ('...k,ck->...c')"


def dense_node(match: Match) -> NodeProto:
    """MatMul for x @ W; for x @ W^T (nn.Linear's layout, x of any rank) a Gemm with transB for the walker,
    whose dense layer transposes W once and multiplies as MatMul does."""
    v = match.values
    if v["transpose"]:
        return helper.make_node("Gemm", [v["x"], v["weight"]], v["outputs"], name=v["name"], transB=1)
    return helper.make_node("MatMul", [v["x"], v["weight"]], v["outputs"], name=v["name"])


EINSUM_LAYER = Pattern("Einsum layer", "Einsum", einsum_layer, dense_node)

"""Recorded shapes an edited model contradicts (issue 25): a model whose value_info or output shapes disagree with
what onnx infers from its ops was edited or damaged, and a conversion built on those shapes would not run."""

import re

import onnx

from lrpgraph.catalog import is_kind
from lrpgraph.errors import LrpgraphError

_DIFFER = re.compile(r"\(op_type:(\w+), node name: ([^)]*)\): \[ShapeInferenceError\] Inferred shape and existing "
                     r"shape differ([^\n(]*)")


def check_shapes_agree(skeleton: onnx.ModelProto, where: str) -> None:
    """Refuse a model whose recorded shapes contradict what onnx infers from its ops, except at a pooling node
    with ceil_mode (onnx <= 1.23 sizes some of those wrongly; convert computes them itself)."""
    try:
        onnx.checker.check_model(skeleton, full_check=True)
        return
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        text = str(err)
    nodes = {n.name: n for n in skeleton.graph.node}
    for op, name, detail in _DIFFER.findall(text):
        node = nodes.get(name)
        pool = node is not None and (is_kind(node, "maxpool") or is_kind(node, "avgpool"))
        if not (pool and any(a.name == "ceil_mode" and a.i for a in node.attribute)):
            raise LrpgraphError(f"{where}: node '{name}' ({op}): its recorded output shape contradicts what its inputs "
                                f"and attributes give ({detail.strip(' :')}); the file was edited or is damaged: "
                                "export the model again")

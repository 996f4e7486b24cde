"""Reading graphs with onnxruntime's contrib ops (onnxruntime-genai's builder: docs/llm_genai.md).

onnxruntime registers SimplifiedLayerNormalization in the ONNX domain itself, where onnx's checker and shape
inference do not know it: `checkable` moves it to com.microsoft in the copies they read (graph.skeleton). onnx's
shape inference stops at the com.microsoft ops; `contrib_shapes` asks onnxruntime's symbolic shape inference,
which knows them, for the shapes of the tensors after them."""

from collections.abc import Iterable, MutableSequence

import onnx

ONNX_DOMAIN_CONTRIB = frozenset({"SimplifiedLayerNormalization"})  # contrib ops onnxruntime puts in domain ''


def has_contrib(nodes: Iterable[onnx.NodeProto]) -> bool:
    """Whether any node is an onnxruntime contrib op (com.microsoft, or one onnxruntime puts in domain '')."""
    return any(n.domain == "com.microsoft" or n.op_type in ONNX_DOMAIN_CONTRIB for n in nodes)


def checkable(graph: onnx.GraphProto, opset_import: MutableSequence) -> None:
    """Move the contrib ops onnxruntime registers in the ONNX domain to com.microsoft (in a copy that onnx's
    checker and shape inference read), declaring that domain."""
    moved = False
    for node in graph.node:
        if node.op_type in ONNX_DOMAIN_CONTRIB and node.domain in ("", "ai.onnx"):
            node.domain, moved = "com.microsoft", True
    if moved and not any(o.domain == "com.microsoft" for o in opset_import):
        opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))


def contrib_shapes(light: onnx.ModelProto, known: set) -> list:
    """value_info from onnxruntime's symbolic shape inference for the tensors of light (a skeleton) not in
    known; [] where it cannot run."""
    from lrpgraph import symbolic

    copy = onnx.ModelProto()
    copy.CopyFrom(light)
    del copy.graph.value_info[:]
    inferred = symbolic.infer(copy)
    return [] if inferred is None else [v for v in inferred.graph.value_info if v.name not in known]

"""Shapes and values computed inside the graph (Shape -> Gather -> Concat -> Reshape, Range, ConstantOfShape):
onnxruntime's symbolic shape inference gives the shapes that onnx's own inference leaves open (a Reshape whose
target is computed from Shape of a tensor with a symbolic batch), and the shape computations whose inputs are
known at the image size are evaluated once (onnx's reference evaluator, one node at a time), so that converters
read them as constants. The model itself is not changed: the forward graph still computes them."""

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator

from lrpgraph import symbolic
from lrpgraph.catalog import is_kind, stops_signal
from lrpgraph.graph import opset_of, skeleton, tensor_shapes, topological

MAX_FOLDED = 1 << 20
OPEN_DIM_STANDINS = (7, 13)  # two values for a dim the shapes leave open (computed_values)  # elements: a value computed from shapes larger than this is left to the graph (a mask)


def unresolved(model: onnx.ModelProto, shapes: dict, signal: set) -> bool:
    """Whether onnx's inference leaves something open on the image's path: a tensor with an unknown rank or a
    non-batch dim, or a node whose non-image input is computed by the graph (not an initializer)."""
    inits = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if not any(t in signal for t in node.input) or stops_signal(node):
            continue
        for t in node.output:
            shape = shapes.get(t)
            if t and (shape is None or any(d is None for d in shape[1:])):
                return True
        if any(t and t not in signal and t not in inits for t in node.input):
            return True
    return False


def symbolic_shapes(model: onnx.ModelProto) -> dict:
    """{tensor: [dim or None]} from onnxruntime's symbolic shape inference (a symbol such as the batch is None);
    {} where it cannot run (onnxruntime missing, an op it does not know)."""
    light = skeleton(model)
    del light.graph.value_info[:]
    inferred = symbolic.infer(light)
    return {} if inferred is None else tensor_shapes(inferred)


def merged(shapes: dict, more: dict) -> dict:
    """shapes with the dims it leaves open (unknown rank, None) taken from more where more knows them."""
    out = dict(shapes)
    for name, dims in more.items():
        have = out.get(name)
        if have is None:
            out[name] = list(dims)
        elif len(have) == len(dims):
            out[name] = [h if h is not None else d for h, d in zip(have, dims)]
    return out


def computed_values(model: onnx.ModelProto, shapes: dict, inits: Mapping) -> dict:
    """{tensor: numpy value} of the shape computations known at these shapes: Shape/Size of a tensor, and every
    node downstream of one whose inputs are all known (initializers or values). A dim left open (the batch) is
    filled with two different stand-ins; what comes out equal in both does not depend on it (nor on a random
    op, whose draws differ between the two runs)."""
    first, second = (_values(model, shapes, inits, fill) for fill in OPEN_DIM_STANDINS)
    return {name: value for name, value in first.items()
            if name in second and value.shape == second[name].shape and np.array_equal(value, second[name])}


def _values(model, shapes, inits, fill):
    graph = model.graph
    values, opset = {}, opset_of(model)
    for node in topological(list(graph.node), set(inits) | {i.name for i in graph.input}):
        if is_kind(node, "shape"):  # Shape, Size: read from a stand-in of the tensor's shape
            dims = shapes.get(node.input[0])
            value = None if dims is None else _evaluate(node, [_stand_in(dims, fill)], opset)
        elif any(t in values for t in node.input) and all(not t or t in values or t in inits for t in node.input):
            value = _evaluate(node, [values[t] if t in values else inits[t] if t else None for t in node.input], opset)
        else:
            continue
        if value is not None:
            values.update((o, v) for o, v in zip(node.output, value) if o and v.size <= MAX_FOLDED)
    return values


def _stand_in(dims, fill):
    """A zero tensor of these dims (open ones filled), without memory: what Shape and Size read."""
    return np.broadcast_to(np.zeros((), np.float32), [fill if d is None else d for d in dims])


def _evaluate(node, inputs, opset):
    """The outputs of one node on numpy inputs (onnx's reference evaluator), None where it cannot."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute) \
            or node.domain not in ("", "ai.onnx"):
        return None
    names = [f"i{k}" if v is not None else "" for k, v in enumerate(inputs)]
    outs = [f"o{k}" for k in range(len(node.output))]
    one = helper.make_node(node.op_type, names, outs, **{a.name: helper.get_attribute_value(a) for a in node.attribute})
    feeds = {n: np.asarray(v) for n, v in zip(names, inputs) if n}
    declared = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), None) for n, v in feeds.items()]
    g = helper.make_graph([one], "fold", declared, [helper.make_value_info(o, onnx.TypeProto()) for o in outs])
    try:
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception:  # noqa: BLE001  the evaluator raises whatever its numpy code raises
        return None
    return [np.asarray(r) for r in results]

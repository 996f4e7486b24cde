"""Constants held as nodes: a Constant node (its value an attribute), and an Identity that only renames a
constant. Loading turns both into initializers, so weights look the same however they were stored."""

import numpy as np
import onnx
from onnx import helper, numpy_helper


def is_constant(node: onnx.NodeProto) -> bool:
    """Whether node is an ONNX Constant node (its output's value is its attribute)."""
    return node.op_type == "Constant" and node.domain in ("", "ai.onnx")


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node given as a tensor, float(s) or int(s); None for its other forms."""
    if len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
        dtype = np.float32 if attr.name.startswith("value_float") else np.int64
        return np.array(helper.get_attribute_value(attr), dtype)
    return None


def fixed_batch_reshapes(nodes: list, signal: set, inits: dict, shapes: dict, batch: int) -> list:
    """The Reshapes of a tensor in signal whose input has the model's static batch on its first axis and whose
    constant shape writes that batch as a number (a static-batch export's [1, 144, -1]; 0 and -1 follow it)."""
    found = []
    for node in nodes:
        if node.op_type == "Reshape" and node.input[0] in signal and node.input[1] in inits:
            shape, before = np.asarray(inits[node.input[1]]).reshape(-1), shapes.get(node.input[0]) or [None]
            if len(shape) > 1 and int(shape[0]) == batch and before[0] == batch:
                found.append(node)
    return found


def constants_to_initializers(model: onnx.ModelProto) -> None:
    """Constant nodes holding tensors become initializers, so weights look the same however they were stored."""
    graph = model.graph
    keep = []
    for node in graph.node:
        tensor = constant_value(node) if is_constant(node) else None
        if tensor is not None:
            graph.initializer.append(numpy_helper.from_array(tensor, node.output[0]))
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def bypass_identities(model: onnx.ModelProto) -> None:
    """Identity nodes that only rename an initializer (the TorchScript exporter shares equal weights
    this way) are removed and their readers read the initializer, so BatchNorm folding still sees weights."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs}
    if not alias:
        return
    keep = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in keep:
        node.input[:] = [alias.get(t, t) for t in node.input]
    del graph.node[:]
    graph.node.extend(keep)

"""Quantized (QDQ) graphs, as onnxruntime.quantization.quantize_static writes them: QuantizeLinear ->
DequantizeLinear pairs on activations and DequantizeLinear on int8 weights and int32 biases.

The forward stays as it is (int8 where onnxruntime fuses DQ -> op -> Q into one quantized kernel). The
relevance path
- passes relevance through every QuantizeLinear and DequantizeLinear on the image's path (a Q -> DQ pair is
  identity for relevance; its clipping is the ReLU that quantize_static folded into it);
- reads the activations the int8 model computes: each layer's input is the DequantizeLinear output;
- uses the dequantized weights and biases: DequantizeLinear of a constant is folded at convert time into a
  float initializer, in the view that canonicalize and the rules read (`dequantized_view`);
- reads a layer's own output z (the stabilizer's denominator, the norm rule's sum) from a float copy of
  the layer (`separate`): the forward node's output keeps its one consumer, the QuantizeLinear, so
  onnxruntime can still fuse the forward into quantized kernels and the logits stay bit-identical.
"""

import copy
from typing import TYPE_CHECKING

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from lrpgraph.catalog import QDQ, Context
from lrpgraph.converters.registry import converts
from lrpgraph.errors import UnsupportedModelError
from lrpgraph.patterns.tails import is_dequantize
from lrpgraph.rules import Rule

if TYPE_CHECKING:
    import onnx

    from lrpgraph.catalog import Unit

SHADOW = "lrp/shadow/"


@converts(*QDQ)
def quantize_linear(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """Q and DQ pass relevance (and gradients: the straight-through estimator) to their data input."""
    return [r_outs[0]] + [None] * (len(unit.inputs) - 1)


def is_quantized(model: "onnx.ModelProto") -> bool:
    return any(node.op_type in QDQ for node in model.graph.node)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None, axis: int = 1) -> np.ndarray:
    """DequantizeLinear in numpy, as onnxruntime computes it: (q - zero_point) * scale in float32, with a
    per-tensor scale or a per-channel one along axis."""
    q = np.asarray(q)
    shift = q.astype(np.int64) - (0 if zero_point is None else np.asarray(zero_point).astype(np.int64)
                                 .reshape(_channel_shape(q, zero_point, axis)))
    return (shift.astype(np.float32) * np.asarray(scale, np.float32).reshape(_channel_shape(q, scale, axis)))


def _channel_shape(q, values, axis):
    values = np.asarray(values)
    if values.ndim == 0 or values.size == 1 and q.ndim == 0:
        return values.shape
    shape = [1] * q.ndim
    shape[axis % q.ndim] = -1
    return shape


def dequantized_view(model: "onnx.ModelProto") -> tuple:
    """(a copy of model in which every DequantizeLinear of constants is a float initializer of the same name,
    {those names}). The relevance rules read weights from this view; the forward keeps the int8 ones."""
    view = copy.deepcopy(model)
    inits = {i.name: i for i in view.graph.initializer}
    folded, keep = set(), []
    for node in view.graph.node:
        if is_dequantize(node) and all(not t or t in inits for t in node.input):
            values = [numpy_helper.to_array(inits[t]) if t else None for t in node.input]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            view.graph.initializer.append(numpy_helper.from_array(dequantize(*values, axis=axis), node.output[0]))
            folded.add(node.output[0])
        else:
            keep.append(node)
    del view.graph.node[:]
    view.graph.node.extend(keep)
    return view, folded


def shadow(model: "onnx.ModelProto", view: "onnx.ModelProto", folded: set, count: int) -> None:
    """Give the relevance nodes (the last `count` nodes of model) their own float copy of the forward they read.

    onnxruntime fuses DequantizeLinear -> op -> QuantizeLinear into one int8 kernel only where nothing else
    reads the tensors in between (any extra reader, even of the int8 tensor, keeps that op in float), so the
    relevance nodes read none of the forward's tensors but the image and the graph outputs: every other
    tensor they need is recomputed from the image by a copy of its producers, with the QDQ model's own
    semantics (DequantizeLinear written as Cast, Sub, Mul, so that the copy is not fused either), and the
    weights and biases they read are float initializers holding the dequantized values."""
    nodes = list(model.graph.node)
    forward, relevance = nodes[:len(nodes) - count], nodes[len(nodes) - count:]
    producer = {o: n for n in forward for o in n.output}
    keep = {i.name for i in model.graph.input}
    values = {i.name: i for i in view.graph.initializer}
    shared = {i.name for i in model.graph.initializer if i.name in values} | set(folded)  # the forward's constants
    names, copies = {}, []

    def constant(tensor):
        if tensor not in names:
            names[tensor] = SHADOW + tensor
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(values[tensor]),
                                                                   names[tensor]))
        return names[tensor]

    def read(tensor):
        if tensor in shared:  # copied: a constant read outside a Q/DQ pair keeps it from being fused as well
            return constant(tensor)
        if not tensor or tensor in keep or tensor not in producer:  # the image, outputs, constants, relevance
            return tensor
        if tensor not in names:
            node = producer[tensor]
            inputs = [read(t) for t in node.input]
            outputs = [SHADOW + o if o else "" for o in node.output]
            name = SHADOW + (node.name or tensor)
            if is_dequantize(node):
                copies.extend(_dequantize_nodes(node, inputs, outputs[0], name, values))
            else:
                clone = helper.make_node(node.op_type, inputs, outputs, name=name, domain=node.domain)
                clone.attribute.extend(node.attribute)
                copies.append(clone)
            names.update((o, c) for o, c in zip(node.output, outputs) if o)
        return names[tensor]

    for node in relevance:
        for i, tensor in enumerate(node.input):
            node.input[i] = read(tensor)
    del model.graph.node[:]
    model.graph.node.extend(forward + copies + relevance)


def _dequantize_nodes(node, inputs, output, name, values):
    """(q - zero_point) * scale as Cast, Sub, Mul: DequantizeLinear's arithmetic, invisible to QDQ fusion."""
    q, scale, zero_point = (list(inputs) + ["", ""])[:3]
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    rank = len(values[scale].dims) if scale in values else 0
    out = [helper.make_node("Cast", [q], [f"{name}/float"], name=f"{name}/cast", to=TensorProto.FLOAT)]
    shifted = f"{name}/float"
    if zero_point:
        out.append(helper.make_node("Cast", [zero_point], [f"{name}/zero_point"], name=f"{name}/cast_zp",
                                    to=TensorProto.FLOAT))
        out.append(helper.make_node("Sub", [shifted, f"{name}/zero_point"], [f"{name}/shifted"], name=f"{name}/sub"))
        shifted = f"{name}/shifted"
    if rank:
        raise UnsupportedModelError(f"node '{node.name}' (DequantizeLinear): per-channel quantized activations "
                                    f"(axis {axis}) are not supported; quantize activations per tensor")
    out.append(helper.make_node("Mul", [shifted, scale], [output], name=f"{name}/mul"))
    return out

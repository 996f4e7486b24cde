"""From an ONNX graph to the units the walker explains: find the image input and the logits (before an
output Softmax), keep the nodes on the path between them, fuse MatMul+Add and Conv(+Add)(+BatchNorm)
into one linear layer each, classify every other node, and check that every op is supported."""

from collections import Counter
from collections.abc import Mapping

import onnx
from onnx import TensorProto

from lrpgraph import shapes as shapes_
from lrpgraph.catalog import (
    RECORDS, Canonical, Initializers, LinearLayer, Unit, explainable, record_of, stops_signal)
from lrpgraph.catalog.ops import attention_operand, attention_softmax
from lrpgraph.errors import LrpgraphError, UnsupportedModelError
from lrpgraph.graph import attrs_of, infer_shapes, needed_nodes, tensor_shapes, topological
from lrpgraph.patterns.ends import embedding_indices, logits_of
from lrpgraph.patterns.fusions import fuse
from lrpgraph.patterns.tails import is_batch_norm, is_bias_add


def canonicalize(model: onnx.ModelProto, explained: str | None = None) -> Canonical:
    """The canonical view of the path from the explained input (an image or token ids) to the explained tensor:
    the given one (convert's from_tensor), or else the logits before the first output's head."""
    graph = model.graph
    inits = Initializers(graph.initializer)
    source, float_input = explained_input(graph, inits)
    if explained is None:
        logits, probabilities = logits_of(graph)
        logits = _flat_logits(model, logits, probabilities)
    else:
        logits, probabilities = explained, False
    shapes = tensor_shapes(model)
    nodes = topological(list(graph.node), set(inits) | {i.name for i in graph.input})
    signal = {source}
    for node in nodes:
        if not stops_signal(node) and any(t in signal for t in node.input):
            signal.update(t for t in node.output if t)
    _check_image_size(shapes.get(source), source, float_input)
    if shapes_.unresolved(model, shapes, signal):  # computed in the graph: resolved at the given sizes
        declared = shapes.get(source)
        shapes = shapes_.merged(shapes, shapes_.symbolic_shapes(model))
        _check_batch(declared, shapes.get(source), source)
        inits.add(shapes_.computed_values(model, shapes, inits))
    if logits not in signal:
        raise LrpgraphError(f"the model output '{logits}' does not depend on the input '{source}'; "
                            "nothing to explain")
    relevant, near_misses = fuse(_on_path(nodes, logits, signal), inits)
    _check_supported(relevant, near_misses, signal)
    units = _units(relevant, graph, inits, shapes, signal)
    _mark_first(units, source)
    return Canonical(model, units, source, shapes.get(source), logits, probabilities, shapes, inits, signal,
                     _nonneg(units, inits), float_input, near_misses)


def explained_input(graph: onnx.GraphProto, inits: Mapping) -> tuple:
    """(name, is float): the float32 input of rank >= 2, or else integer token ids of rank 2 that index a
    constant embedding table (Gather), 'input_ids' first. A decoder's cache inputs (is_cache) are neither."""
    inputs = [i for i in graph.input if i.name not in inits]
    for info in (i for i in inputs if not is_cache(i.name)):
        tensor_type = info.type.tensor_type
        if tensor_type.elem_type == TensorProto.FLOAT and len(tensor_type.shape.dim) >= 2:
            return info.name, True
    embedded = embedding_indices(graph, inits)
    tokens = [i for i in inputs if i.name in embedded and len(i.type.tensor_type.shape.dim) == 2
              and i.type.tensor_type.elem_type in (TensorProto.INT64, TensorProto.INT32)]
    if tokens:
        return next((i.name for i in tokens if i.name == "input_ids"), tokens[0].name), False
    found = ", ".join(f"{i.name} ({TensorProto.DataType.Name(i.type.tensor_type.elem_type)})"
                      for i in inputs) or "none"
    raise LrpgraphError(f"the model has no float32 image input of rank >= 2 and no token ids [N, L] into an "
                        f"embedding table (inputs: {found}); export the classifier with a float32 input "
                        "[N, C, H, W] or int64 input_ids")


CACHE_INPUTS = ("past_key_values.", "past.")  # a decoder's key/value cache (fed empty for a prompt)


def is_cache(name: str) -> bool:
    """Whether a graph input is a decoder's key/value cache, never the input explained."""
    return name.startswith(CACHE_INPUTS)


def _check_image_size(shape, image, float_input):
    """An image [N, C, H, W] with symbolic H or W: only --image-size (or a fixed export) makes its layers known."""
    if float_input and shape is not None and len(shape) == 4 and any(d is None for d in shape[2:]):
        raise UnsupportedModelError(f"the input '{image}' has symbolic spatial sizes: spatial sizes must be static; "
                                    "give the image size with --image-size H,W (image_size=(H, W)) or export with a "
                                    "fixed one")


def _check_batch(declared, resolved, image):
    """Refuse a graph that fixes the image's symbolic batch to a number > 1: a constant with that many rows meets
    the image's rows (an input rewired to a weight), so the model runs at no other batch and the relevance would
    not fit the image's rows."""
    if declared and resolved and declared[0] is None and isinstance(resolved[0], int) and resolved[0] > 1:
        raise LrpgraphError(f"the image input '{image}' has a symbolic batch, but the graph fixes it to {resolved[0]}: "
                            f"a tensor with {resolved[0]} rows that does not come from the image meets the image's "
                            "rows (was an input rewired to a weight?); export the model again")


def _flat_logits(model, logits, probabilities):
    """Logits shaped [N, C, 1, 1] or [N, C, 1] (a Conv as the classifier) are explained as [N, C]: a Flatten
    is added after them, and the first output (logits or probabilities of that shape) becomes [N, C] too,
    keeping its name. Returns the tensor to explain; the model's value_info is inferred again."""
    shapes = tensor_shapes(model)

    def flat(name):
        shape = shapes.get(name)
        return shape is not None and len(shape) > 2 and shape[1] is not None and all(d == 1 for d in shape[2:])

    output = model.graph.output[0]
    if not flat(logits) and not flat(output.name):
        return logits
    new_logits = logits
    for name in dict.fromkeys([output.name] + ([logits] if probabilities else [])):
        if not flat(name):
            continue
        if name == output.name:  # the output keeps its name: the 4-D tensor is renamed
            inner = f"{name}/unflattened"
            for node in model.graph.node:
                node.output[:] = [inner if t == name else t for t in node.output]
                node.input[:] = [inner if t == name else t for t in node.input]
            model.graph.node.append(onnx.helper.make_node("Flatten", [inner], [name], name=f"{name}/flatten", axis=1))
            dims = output.type.tensor_type.shape.dim
            del dims[2:]
            if name == logits:
                new_logits = name
        else:
            flat_name = f"{name}/flat"
            model.graph.node.append(onnx.helper.make_node("Flatten", [name], [flat_name], name=flat_name, axis=1))
            new_logits = flat_name
    infer_shapes(model)
    return new_logits


def _on_path(nodes, logits, signal):
    return needed_nodes(nodes, [logits], keep=lambda node: not stops_signal(node) and
                        any(t in signal for t in node.input), follow=lambda t: t in signal)


def _check_supported(nodes, near_misses, signal):
    missing, first = {}, None
    for node in nodes:
        if not explainable(node):
            missing.setdefault(node.op_type, []).append(node.name or node.output[0])
            first = first or node
    if missing:
        parts = "; ".join(f"{op} ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
                          for op, names in sorted(missing.items()))
        before = " or ".join(f"--from {t}" for t in dict.fromkeys(first.input) if t in signal)
        cut = f"; to explain the tensor before {first.op_type} '{first.name or first.output[0]}', convert with " \
              f"{before}" if before else ""
        raise UnsupportedModelError(f"unsupported op type(s) on the path from the image to the logits: {parts}"
                                    f"{cut}; see `lrpgraph inspect` for coverage, or open an issue with the model"
                                    + "".join(f"; not fused: {miss}" for miss in near_misses[:1]), near_misses)


def _units(nodes, graph, inits, shapes, signal):
    uses = Counter(t for n in graph.node for t in n.input)
    uses.update(o.name for o in graph.output)
    consumer = {t: n for n in nodes for t in n.input}
    units, absorbed, probabilities = [], set(), set()
    for node in nodes:
        if id(node) in absorbed:
            continue
        name = node.name or node.output[0]
        dynamic = [t in signal for t in node.input]
        record = record_of(node)
        kind = record.classify(node, dynamic) if record.classify else record.kind
        unit = Unit(node.op_type, name, kind, list(node.input), list(node.output), attrs_of(node))
        if kind == "linear":
            unit.layer, fused = _linear(node, unit, inits, shapes, signal, uses, consumer)
            absorbed.update(id(n) for n in fused)
            unit.fused = [n.name for n in fused]
            unit.outputs = [unit.layer.out]
            unit.inputs = [node.input[0]]
        elif kind == "gate":
            unit.gate = _gate_input(node, nodes, unit)
            if unit.gate is None:  # neither operand is a gate: a product of two signals
                unit.kind = "product"
                unit.gate = _activated_operand(node, units)
        elif kind == "product":  # which operand holds attention probabilities (CP-LRP keeps them constant)
            producer = {o: n for n in nodes for o in n.output}
            unit.gate = attention_operand(node, producer)
            if unit.gate is not None:
                softmax = attention_softmax(node.input[unit.gate], producer)
                probabilities.add(softmax.name or softmax.output[0])
        units.append(unit)
    for unit in units:  # the Softmax of attention probabilities: the composites' key 'attention'
        if unit.name in probabilities and unit.op == "Softmax":
            unit.extra_keys = ("attention",)
    return units


def _linear(node, unit, inits, shapes, signal, uses, consumer):
    """The LinearLayer of a linear op (its record's LinearOp reads the node's attributes) with a following bias
    Add and BatchNormalization folded in."""
    name, reads = unit.name, RECORDS[node.op_type].linear
    if len(node.input) > 1 and node.input[1] in signal:
        raise UnsupportedModelError(f"node '{name}' ({node.op_type}): both operands depend on the image; only "
                                    "layers with constant weights are supported")
    x = node.input[0]
    x_shape = shapes.get(x)
    if x_shape is None:
        raise UnsupportedModelError(f"node '{name}' ({node.op_type}): the rank of its input '{x}' is unknown")
    layer = LinearLayer(node.op_type, x, node.output[0], node.input[1], x_shape=x_shape)
    if len(node.input) > 2 and node.input[2]:
        layer.bias = node.input[2]
    for field_name, value in reads.read(node, unit.attrs, shapes, name).items():
        setattr(layer, field_name, value)
    fused, out = [], node.output[0]
    w_shape = shapes.get(layer.weight)
    channels = reads.out_channels(layer, w_shape) if w_shape else None

    def single_consumer(tensor):
        nxt = consumer.get(tensor)
        return nxt if nxt is not None and uses[tensor] == 1 else None

    nxt = single_consumer(out)
    if is_bias_add(nxt) and layer.bias is None:
        other = nxt.input[1] if nxt.input[0] == out else nxt.input[0]
        if other in inits and inits[other].size == channels and _bias_axis_ok(inits[other].shape, layer, reads):
            layer.bias, layer.bias_from_add, out = other, True, nxt.output[0]
            layer.beta = 1.0  # Gemm's beta scales C only; the added bias is not scaled
            fused.append(nxt)
            nxt = single_consumer(out)
    # BatchNormalization normalises axis 1: where that is the layer's output channels, the op says how it folds
    if is_batch_norm(nxt) and reads.bn_shape(layer) is not None \
            and all(t in inits for t in nxt.input[1:5]):
        scale, bias, mean, var = nxt.input[1:5]
        eps = attrs_of(nxt).get("epsilon", 1e-5)
        layer.bn = {"scale": scale, "B": bias, "mean": mean, "var": var, "epsilon": float(eps)}
        out = nxt.output[0]
        fused.append(nxt)
    layer.out = out
    return layer, fused


def _bias_axis_ok(shape, layer, reads):
    """An added constant is a bias when it varies along the output channel axis only."""
    shape = list(shape)
    if reads.channel_axis == 1:
        rank = len(layer.x_shape)
        shape = [1] * (rank - len(shape)) + shape
        return all(d == 1 for i, d in enumerate(shape) if i != 1)
    return all(d == 1 for d in shape[:-1])


def _activated_operand(node, units):
    """Which operand of an element-wise product of two signals an activation computed (a gated MLP's
    act(x W_gate) * (x W_up): CP-LRP holds it constant, as LXT's cp_gated_mlp_forward), or None."""
    made_by = {t: u.kind for u in units for t in u.outputs}
    found = [i for i in (0, 1) if made_by.get(node.input[i]) in ("activation", "gate")]
    return found[0] if len(found) == 1 else None


def _gate_input(node, nodes, unit):
    """Which input of a Mul of two image-dependent tensors is the gate (squeeze-excitation, x * sigmoid(x),
    HardSwish written out): the one computed by a gate source (Sigmoid, HardSigmoid, Clip: records with
    gate_source), possibly through ops the records mark gate_path (moves, element-wise arithmetic)."""
    producer = {o: n for n in nodes for o in n.output}

    def is_gate(tensor, depth=0):
        node_ = producer.get(tensor)
        if node_ is None or depth > 8:
            return False
        record = record_of(node_)
        if record is None:
            return False
        if record.gate_source:
            return True
        return record.gate_path and is_gate(node_.input[0], depth + 1)

    gates = [i for i in (0, 1) if is_gate(node.input[i])]
    if len(gates) == 1:
        return gates[0]
    if len(gates) == 2:  # x * sigmoid(x) where x itself is gated: the later gate is the multiplier
        return 1
    return None


def _mark_first(units, image):
    behind = set()  # tensors computed after some linear layer
    for unit in units:
        inputs_behind = any(t in behind for t in unit.inputs)
        if unit.kind == "linear" and not inputs_behind:
            unit.first = True
        unit.upstream = unit.kind != "linear" and not inputs_behind
        if unit.kind == "linear" or inputs_behind:
            behind.update(unit.outputs)


def _nonneg(units, inits):
    """Tensors known to be >= 0, so rules can skip their negative parts: outputs of ops whose records say
    nonneg_output, and of ops that keep signs (keeps_nonneg) when all their signal inputs are >= 0."""
    nonneg = set()
    for unit in units:
        ins = [t for t in unit.inputs if t and t not in inits]
        if unit.holds("nonneg_output", inits):
            nonneg.update(unit.outputs)
        elif ins and all(t in nonneg for t in ins) and unit.holds("keeps_nonneg", inits):
            nonneg.update(t for t in unit.outputs if t)
    return nonneg

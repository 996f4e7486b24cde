"""From an ONNX graph to the units the walker explains: find the image input and the logits (before an
output Softmax), keep the nodes on the path between them, fuse MatMul+Add and Conv(+Add)(+BatchNorm)
into one linear layer each, classify every other node, and check that every op is supported."""

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto, numpy_helper

from lrpgraph.converters import RECORDS, explainable, is_kind, record_of
from lrpgraph.converters.attention import attention_operand
from lrpgraph.converters.linear import LinearLayer
from lrpgraph.errors import LrpgraphError, UnsupportedModelError
from lrpgraph.graph import attrs_of, infer_shapes, needed_nodes, tensor_shapes, topological
from lrpgraph.patterns.ends import embedding_indices, logits_of
from lrpgraph.patterns.fusions import fuse
from lrpgraph.windows import conv_output_padding, explicit_pads


class Initializers(Mapping):
    """Initializer values by name, converted to numpy only when read (weights are rarely needed here)."""

    def __init__(self, initializers: list):
        self._protos = {i.name: i for i in initializers}
        self._arrays = {}

    def __getitem__(self, name):
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self._protos[name])
        return self._arrays[name]

    def __contains__(self, name):
        return name in self._protos

    def __iter__(self):
        return iter(self._protos)

    def __len__(self):
        return len(self._protos)


@dataclass
class Unit:
    """One explained step: a forward node, or a fused linear layer spanning several nodes."""

    op: str
    name: str  # the forward node's name, used for rule overrides and for naming emitted nodes
    kind: str  # one of converters.KINDS: the op's record's kind, or what its classify decided
    inputs: list
    outputs: list
    attrs: dict
    layer: LinearLayer = None
    fused: list = field(default_factory=list)  # names of nodes folded into this unit
    first: bool = False  # first linear layer reached from the image input
    upstream: bool = False  # between the image input and the first linear layer
    gate: int = None  # Mul gates: index of the gate input (gets no relevance)

    @property
    def category(self) -> str:
        """What composites map: the record's category (conv, dense) or the kind."""
        return RECORDS[self.op].category_of(self.kind)


@dataclass
class Canonical:
    model: object
    units: list
    image: str
    image_shape: list
    logits: str
    outputs_probabilities: bool
    shapes: dict
    inits: dict
    signal: set
    nonneg: set
    image_float: bool = True  # False: the explained input is token ids (its relevance is per token)
    near_misses: list = field(default_factory=list)  # patterns.NearMiss: written-out blocks that did not fuse, why


def canonicalize(model: onnx.ModelProto) -> Canonical:
    graph = model.graph
    inits = Initializers(graph.initializer)
    image, image_float = image_input(graph, inits)
    logits, probabilities = logits_of(graph)
    logits = _flat_logits(model, logits, probabilities)
    shapes = tensor_shapes(model)
    nodes = topological(list(graph.node), set(inits) | {i.name for i in graph.input})
    signal = {image}
    for node in nodes:
        if not is_kind(node, "shape") and any(t in signal for t in node.input):
            signal.update(t for t in node.output if t)
    if logits not in signal:
        raise LrpgraphError(f"the model output '{logits}' does not depend on the image input '{image}'; "
                            "nothing to explain")
    relevant, near_misses = fuse(_on_path(nodes, logits, signal), inits)
    _check_supported(relevant, near_misses)
    units = _units(relevant, graph, inits, shapes, signal)
    _mark_first(units, image)
    return Canonical(model, units, image, shapes.get(image), logits, probabilities, shapes, inits, signal,
                     _nonneg(units, inits), image_float, near_misses)


def image_input(graph: onnx.GraphProto, inits: Mapping) -> tuple:
    """(name, is float): the float32 input of rank >= 2, or else integer token ids of rank 2 that index a
    constant embedding table (Gather), 'input_ids' first."""
    inputs = [i for i in graph.input if i.name not in inits]
    for info in inputs:
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
    return needed_nodes(nodes, [logits], keep=lambda node: not is_kind(node, "shape") and
                        any(t in signal for t in node.input), follow=lambda t: t in signal)


def _check_supported(nodes, near_misses):
    missing = {}
    for node in nodes:
        if not explainable(node):
            missing.setdefault(node.op_type, []).append(node.name or node.output[0])
    if missing:
        parts = "; ".join(f"{op} ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
                          for op, names in sorted(missing.items()))
        raise UnsupportedModelError(f"unsupported op type(s) on the path from the image to the logits: {parts}; "
                                    "see `lrpgraph inspect` for coverage, or open an issue with the model"
                                    + "".join(f"; not fused: {miss}" for miss in near_misses[:1]), near_misses)


def _units(nodes, graph, inits, shapes, signal):
    uses = Counter(t for n in graph.node for t in n.input)
    uses.update(o.name for o in graph.output)
    consumer = {t: n for n in nodes for t in n.input}
    units, absorbed = [], set()
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
        elif kind == "product":  # which operand holds attention probabilities (CP-LRP keeps them constant)
            unit.gate = attention_operand(node, {o: n for n in nodes for o in n.output})
        units.append(unit)
    return units


def _linear(node, unit, inits, shapes, signal, uses, consumer):
    """The LinearLayer of a Conv/Gemm/MatMul with a following bias Add and BatchNormalization folded in."""
    name, attrs = unit.name, unit.attrs
    if len(node.input) > 1 and node.input[1] in signal or node.op_type == "Gemm" and attrs.get("transA", 0):
        raise UnsupportedModelError(f"node '{name}' ({node.op_type}): both operands depend on the image (or the "
                                    "data operand is transposed); only layers with constant weights are supported")
    x = node.input[0]
    x_shape = shapes.get(x)
    if x_shape is None:
        raise UnsupportedModelError(f"node '{name}' ({node.op_type}): the rank of its input '{x}' is unknown")
    layer = LinearLayer(node.op_type, x, node.output[0], node.input[1], x_shape=x_shape)
    if len(node.input) > 2 and node.input[2]:
        layer.bias = node.input[2]
    if node.op_type == "Conv":
        layer.attrs = _conv_attrs(node, attrs, shapes, inits, unit)
    elif node.op_type == "ConvTranspose":
        layer.attrs = _conv_transpose_attrs(attrs, shapes.get(node.input[1]), unit)
    elif node.op_type == "Gemm":
        layer.transpose_weight = bool(attrs.get("transB", 0))
        layer.alpha, layer.beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    fused, out = [], node.output[0]
    channels = _out_channels(layer, inits, shapes)

    def single_consumer(tensor):
        nxt = consumer.get(tensor)
        return nxt if nxt is not None and uses[tensor] == 1 else None

    nxt = single_consumer(out)
    if nxt is not None and nxt.op_type == "Add" and layer.bias is None:
        other = nxt.input[1] if nxt.input[0] == out else nxt.input[0]
        if other in inits and inits[other].size == channels and _bias_axis_ok(inits[other].shape, layer):
            layer.bias, layer.bias_from_add, out = other, True, nxt.output[0]
            layer.beta = 1.0  # Gemm's beta scales C only; the added bias is not scaled
            fused.append(nxt)
            nxt = single_consumer(out)
    # BatchNormalization normalises axis 1: the output channels of a Conv, or of a dense layer on [N, K] only
    channel_axis_1 = layer.op == "Conv" or len(layer.x_shape) == 2
    if nxt is not None and nxt.op_type == "BatchNormalization" and channel_axis_1 \
            and all(t in inits for t in nxt.input[1:5]):
        scale, bias, mean, var = nxt.input[1:5]
        eps = attrs_of(nxt).get("epsilon", 1e-5)
        layer.bn = {"scale": scale, "B": bias, "mean": mean, "var": var, "epsilon": float(eps)}
        out = nxt.output[0]
        fused.append(nxt)
    layer.out = out
    return layer, fused


def _bias_axis_ok(shape, layer):
    """An added constant is a bias when it varies along the output channel axis only."""
    shape = list(shape)
    if layer.convolutional:
        rank = len(layer.x_shape)
        shape = [1] * (rank - len(shape)) + shape
        return all(d == 1 for i, d in enumerate(shape) if i != 1)
    return all(d == 1 for d in shape[:-1])


def _out_channels(layer, inits, shapes):
    w_shape = shapes.get(layer.weight)
    if not w_shape:
        return None
    if layer.op == "Conv":
        return w_shape[0]
    if layer.op == "ConvTranspose":
        return w_shape[1] * layer.attrs["group"]
    return w_shape[0] if layer.transpose_weight else w_shape[-1]


def _conv_attrs(node, attrs, shapes, inits, unit):
    x_shape = shapes.get(node.input[0])
    w_shape = shapes.get(node.input[1])
    if not x_shape or any(d is None for d in x_shape[2:]) or not w_shape:
        raise UnsupportedModelError(f"node '{unit.name}' (Conv): spatial sizes must be static; give the image "
                                    "size with --image-size H,W (image_size=(H, W)) or export with a fixed one")
    spatial = x_shape[2:]
    kernel = attrs.get("kernel_shape", w_shape[2:])
    n = len(kernel)
    strides = attrs.get("strides", [1] * n)
    dilations = attrs.get("dilations", [1] * n)
    pads = explicit_pads(attrs.get("auto_pad", "NOTSET"), attrs.get("pads", [0] * 2 * n), spatial, kernel,
                         strides, dilations)
    return {"strides": strides, "pads": pads, "dilations": dilations, "group": attrs.get("group", 1),
            "output_padding": [conv_output_padding(spatial[i], kernel[i], strides[i], dilations[i], pads[i],
                                                   pads[i + n]) for i in range(n)]}


def _conv_transpose_attrs(attrs, w_shape, unit):
    """A ConvTranspose with explicit pads (no output_shape, no SAME padding: their pads depend on sizes)."""
    if attrs.get("output_shape") or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
        raise UnsupportedModelError(f"node '{unit.name}' (ConvTranspose): output_shape and SAME padding are not "
                                    "supported; export it with explicit pads")
    n = len(w_shape) - 2 if w_shape else len(attrs.get("kernel_shape", []))
    return {"strides": attrs.get("strides", [1] * n), "pads": attrs.get("pads", [0] * 2 * n),
            "dilations": attrs.get("dilations", [1] * n), "group": attrs.get("group", 1),
            "output_padding": attrs.get("output_padding", [0] * n)}


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
        record = RECORDS[unit.op]
        ins = [t for t in unit.inputs if t and t not in inits]
        if record.check("nonneg_output", unit, inits):
            nonneg.update(unit.outputs)
        elif ins and all(t in nonneg for t in ins) and record.check("keeps_nonneg", unit, inits):
            nonneg.update(t for t in unit.outputs if t)
    return nonneg

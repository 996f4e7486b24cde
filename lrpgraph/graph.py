"""Loading, shape facts, topological order and a small node builder for the relevance subgraph."""

import heapq
import math
import os
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from lrpgraph import untrusted
from lrpgraph.errors import LrpgraphError, UnsupportedModelError
from lrpgraph.patterns.constants import bypass_identities, constants_to_initializers
from lrpgraph.patterns.contrib import checkable, contrib_shapes, has_contrib

MIN_OPSET = 17  # ScatterElements(reduction="add"), Split/ReduceSum/Squeeze with tensor inputs


def read(model_or_path: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """The onnx.ModelProto as given: a proto (itself), serialized bytes or a path. LrpgraphError with one
    line for a missing or unreadable file, or one untrusted.check_model refuses (external data outside the
    model's folder, sizes that would exhaust memory, a broken graph)."""
    if isinstance(model_or_path, onnx.ModelProto):
        untrusted.check_model(model_or_path, "the given model")
        return model_or_path
    where = "the given model bytes" if isinstance(model_or_path, (bytes, bytearray)) else os.fspath(model_or_path)
    if not isinstance(model_or_path, (bytes, bytearray)) and not os.path.isfile(where):
        raise LrpgraphError(f"{where}: no such file; give the path of an .onnx model")
    if not isinstance(model_or_path, (bytes, bytearray)):
        return untrusted.load_file(where)  # checked before its external data is read
    try:
        model = onnx.load_from_string(bytes(model_or_path))
    except (DecodeError, ValueError, RuntimeError, OSError) as err:
        raise LrpgraphError(f"{where}: not a readable ONNX model ({type(err).__name__}: {err}); "
                            "is the file truncated? export it again with torch.onnx.export or onnx.save") from None
    untrusted.check_model(model, where)
    return model


def load(model_or_path: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """An onnx.ModelProto from a path, bytes or a proto (copied), with Constant nodes turned into
    initializers, an opset of at least MIN_OPSET, and shapes inferred. Raises LrpgraphError for unreadable
    input."""
    model = onnx.ModelProto()
    model.CopyFrom(read(model_or_path))
    where = os.fspath(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else "the given model"
    if model.ir_version <= 0 or not model.graph.node or not model.graph.output:
        raise LrpgraphError(f"{where}: not an ONNX model (no graph nodes or outputs); give a model file "
                            "written by onnx.save or torch.onnx.export")
    try:
        onnx.checker.check_model(skeleton(model))
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0]
        raise LrpgraphError(f"{where}: invalid ONNX model ({first}); fix or re-export it") from None
    constants_to_initializers(model)
    bypass_identities(model)
    model = ensure_opset(model, where)
    constants_to_initializers(model)  # the version converter writes Constant nodes (Upsample's scales)
    weights_not_inputs(model)
    return infer_shapes(model)


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def ensure_opset(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    if opset_of(model) >= MIN_OPSET:
        return model
    try:
        return _upgraded(model)
    except Exception as err:  # the converter raises plain RuntimeError/IndexError on unsupported patterns
        raise LrpgraphError(f"{where}: opset {opset_of(model)} could not be upgraded to {MIN_OPSET} ({err}); "
                            f"re-export the model with opset {MIN_OPSET} or newer") from None


def _upgraded(model):
    """onnx's version converter; some of its adapters (Gemm, BatchNormalization before opset 7) refuse a
    symbolic batch, so the inputs and outputs are declared with batch 1 for the conversion and their own
    types are put back afterwards."""
    declared = list(model.graph.input) + list(model.graph.output)
    if not any(d.dim_param for v in declared for d in v.type.tensor_type.shape.dim):
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for info in list(fixed.graph.input) + list(fixed.graph.output):
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_value = 1
    upgraded = onnx.version_converter.convert_version(fixed, MIN_OPSET)
    del upgraded.graph.value_info[:]  # inferred again from the symbolic batch
    original = {v.name: v for v in declared}
    for info in list(upgraded.graph.input) + list(upgraded.graph.output):
        if info.name in original:
            info.CopyFrom(original[info.name])
    return upgraded


def weights_not_inputs(model: onnx.ModelProto) -> None:
    """IR 3 lists every initializer as a graph input as well; the weights stop being inputs (IR 4 and on
    allow it), so that the image is the one input a session feeds."""
    inits = {i.name for i in model.graph.initializer}
    if any(i.name in inits for i in model.graph.input):
        keep = [i for i in model.graph.input if i.name not in inits]
        del model.graph.input[:]
        model.graph.input.extend(keep)
    model.ir_version = max(model.ir_version, 4)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with value_info for every tensor whose shape can be inferred (on its skeleton)."""
    light = skeleton(model)
    contrib = has_contrib(model.graph.node)
    if contrib:  # onnxruntime-genai's builder declares value_info that onnx's inference contradicts: inferred anew
        del light.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception as err:  # inference errors are plain exceptions from the C++ side
        raise LrpgraphError(f"shape inference failed ({err}); check the model with onnx.checker") from None
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    if contrib:  # onnx's inference stops at onnxruntime's contrib ops
        known = {v.name for v in inferred.graph.value_info} | {v.name for v in model.graph.input}
        model.graph.value_info.extend(contrib_shapes(skeleton(model), known))
    return model


def skeleton(model: onnx.ModelProto, limit: int = 4096) -> onnx.ModelProto:
    """A copy of the model without the data of its large initializers (they become typed graph inputs):
    what the checker and shape inference need, without serialising hundreds of MB of weights."""
    light = onnx.ModelProto()
    light.CopyFrom(model) if not model.graph.initializer else None
    if not model.graph.initializer:
        checkable(light.graph, light.opset_import)
        return light
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(light, field, getattr(model, field))
    light.opset_import.extend(model.opset_import)
    light.metadata_props.extend(model.metadata_props)
    light.functions.extend(model.functions)
    g, src = light.graph, model.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    declared = {i.name for i in src.input}
    for init in src.initializer:
        if int(np.prod(init.dims)) * 8 <= limit and not init.external_data:
            g.initializer.append(init)
        elif init.name not in declared:
            g.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    checkable(g, light.opset_import)
    return light


def tensor_shapes(model: onnx.ModelProto) -> dict:
    """{name: [dim or None]} for every tensor whose rank is known (None: symbolic, e.g. the batch)."""
    shapes = {}
    graph = model.graph
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def size_order(dims: list) -> tuple:
    """A key that orders tensor sizes with symbolic axes (any dim not an int): (the number of symbolic axes, the
    product of the known ones); [N, H, L, d] sorts before [N, H, L, L] whatever L is."""
    known = [d for d in dims if isinstance(d, int)]
    return len(dims) - len(known), math.prod(known)


def topological(nodes: list, available: set, keep_order: bool = False) -> list:
    """Nodes in an order where each node comes after the producers of its inputs (Kahn's algorithm). keep_order:
    take the earliest ready node each time (the given order wherever it is one) rather than the first ready."""
    producers = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    deps = [{producers[t] for t in node.input if t in producers and t not in available} for node in nodes]
    users = defaultdict(list)
    for i, ds in enumerate(deps):
        for d in ds:
            users[d].append(i)
    ready = [i for i, ds in enumerate(deps) if not ds]
    take = (lambda: heapq.heappop(ready)) if keep_order else (lambda: ready.pop(0))
    put = (lambda u: heapq.heappush(ready, u)) if keep_order else ready.append
    order, left = [], [len(ds) for ds in deps]
    while ready:
        i = take()
        order.append(nodes[i])
        for u in users[i]:
            left[u] -= 1
            if left[u] == 0:
                put(u)
    if len(order) != len(nodes):
        raise LrpgraphError("the graph has a cycle or a node reads a tensor nobody produces; check it with onnx.checker")
    return order


class Builder:
    """Collects the relevance subgraph: nodes named lrp/<forward node>/<step>, and initializers.
    webgpu: emit only ops that onnxruntime-web's WebGPU backend has where an exact alternative exists."""

    def __init__(self, model: onnx.ModelProto, prefix: str = "lrp", webgpu: bool = False):
        self.prefix = prefix
        self.webgpu = webgpu
        self.nodes = []
        # winner-take-all routes (MaxPool): output -> (relevance in, pooled values, pool input); simplify reads them
        self.routes = {}
        self.initializers = []
        self.scope = "graph"
        self._steps = defaultdict(int)
        self._consts = {}
        self._taken = {t for n in model.graph.node for t in list(n.input) + list(n.output)}
        self._taken |= {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input}

    def fresh(self, step: str) -> str:
        self._steps[(self.scope, step)] += 1
        k = self._steps[(self.scope, step)]
        name = f"{self.prefix}/{self.scope}/{step}" + (f"_{k}" if k > 1 else "")
        while name in self._taken:
            name += "_"
        self._taken.add(name)
        return name

    def op(self, op_type: str, inputs: list, step: str | None = None, outputs: int = 1, **attrs) -> str | list:
        """Emit one node; returns its output name (or a list when outputs > 1)."""
        name = self.fresh(step or op_type.lower())
        outs = [name] if outputs == 1 else [f"{name}:{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def const(self, value: float | list | np.ndarray, dtype: type = np.float32) -> str:
        """An initializer holding value (cached: equal constants are stored once)."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = f"{self.prefix}/const/{len(self._consts)}"
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def ints(self, values: list) -> str:
        return self.const(list(values), np.int64)

    # small arithmetic helpers, each one ONNX node
    def add(self, a: str, b: str) -> str:
        return self.op("Add", [a, b], "add")

    def sub(self, a: str, b: str) -> str:
        return self.op("Sub", [a, b], "sub")

    def mul(self, a: str, b: str) -> str:
        return self.op("Mul", [a, b], "mul")

    def div(self, a: str, b: str) -> str:
        return self.op("Div", [a, b], "div")

    def pos(self, x: str) -> str:
        return self.op("Relu", [x], "pos")

    def neg(self, x: str) -> str:
        if self.webgpu:  # x - max(x, 0) is min(x, 0) exactly
            return self.op("Sub", [x, self.pos(x)], "neg")
        return self.op("Min", [x, self.const(0.0)], "neg")

    def stab(self, z: str, eps: float) -> str:
        """z + eps * s(z) with s(0) = +1 (never Sign alone: Sign(0) = 0)."""
        nonneg = self.op("GreaterOrEqual", [z, self.const(0.0)], "sign")
        shift = self.op("Where", [nonneg, self.const(eps), self.const(-eps)], "shift")
        return self.op("Add", [z, shift], "stab")

    def sum(self, tensors: list) -> str | None:
        tensors = [t for t in tensors if t is not None]
        if not tensors:
            return None
        if len(tensors) == 1:
            return tensors[0]
        if self.webgpu:
            total = tensors[0]
            for t in tensors[1:]:
                total = self.op("Add", [total, t], "fanin")
            return total
        return self.op("Sum", tensors, "fanin")

    def wait(self, x: str, d: str) -> str:
        """x, read only once d exists: Expand(x, Slice(Shape(d), 0, 0)) (an empty shape, so Expand gives x).
        onnxruntime runs a node as soon as its inputs exist; a relevance-pass node that reads forward tensors
        only would run during the forward pass and hold its output until the relevance reaches it."""
        empty = self.op("Slice", [self.op("Shape", [d], "shape"), self.ints([0]), self.ints([0])], "wait")
        return self.op("Expand", [x, empty], "after")

    def reshape_like(self, r: str, x: str) -> str:
        return self.op("Reshape", [r, self.op("Shape", [x], "shape")], "reshape")

    def zeros_like(self, x: str) -> str:
        return self.op("ConstantOfShape", [self.op("Shape", [x], "shape")], "zeros",
                       value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0]))

    def ones_like(self, x: str) -> str:
        return self.op("ConstantOfShape", [self.op("Shape", [x], "shape")], "ones",
                       value=helper.make_tensor("value", TensorProto.FLOAT, [1], [1.0]))


def attrs_of(node: onnx.NodeProto, decoded: bool = False) -> dict:
    """A node's attributes {name: value}. decoded: strings as str, tensors as numpy arrays, and subgraph
    attributes refused (UnsupportedModelError), as the importer's torch ops take them."""
    if not decoded:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, (onnx.GraphProto, onnx.FunctionProto)) or a.type == onnx.AttributeProto.GRAPHS:
            raise UnsupportedModelError(f"node '{node.name}' ({node.op_type}): subgraph attributes are not supported")
        out[a.name] = v
    return out


def needed_nodes(nodes: list, outputs: list | set, keep: Callable | None = None, follow: Callable | None = None,
                 ends: Callable | None = None) -> list:
    """The nodes (in their topological order) that computing the tensors `outputs` runs: one backward walk.
    keep(node): a node it rejects is neither kept nor walked through; follow(tensor): only the tensors it
    accepts are needed in turn; ends(node) -> (inputs, outputs) for nodes that are not NodeProtos."""
    needed, kept = set(outputs), []
    for node in reversed(list(nodes)):
        ins, outs = ends(node) if ends is not None else (node.input, node.output)
        if not any(o in needed for o in outs) or (keep is not None and not keep(node)):
            continue
        kept.append(node)
        needed.update(t for t in ins if t and (follow is None or follow(t)))
    return kept[::-1]

"""Checks of a model file made by someone else, before anything it points to is read or allocated.

A model from a hub may be made to attack: external-data `location`s that leave the model's folder (`../`,
an absolute path, a symlink to elsewhere: onnx 1.16's path-traversal fixes refuse these as well, but with
a traceback), tensors or shapes whose size would exhaust memory, initializers that hold less data than their
dims declare, a graph with a cycle, a tensor produced twice, a node reading a tensor nobody produces, or a
node of a domain no runtime knows. Each is refused with one LrpgraphError line.

load_file reads a path without its external data, checks it (check_model) and only then loads the data from
inside the folder; graph.read and ort.source_of (every session: explain, evaluate, ExplainSession) go
through it, so convert, inspect, explain, evaluate, web, the importer and train all do.
"""

import functools
import os
from collections.abc import Callable

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, helper

from lrpgraph.errors import LrpgraphError

MAX_ELEMENTS = 1 << 36  # per tensor (256 GiB of float32): far above any model's tensor, far below 10^12
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training")  # and com.microsoft*, the model's functions


def check_file(path: str | os.PathLike) -> onnx.ModelProto:
    """The model at path without its external data, after check_model; LrpgraphError (one line) otherwise."""
    where = os.fspath(path)
    try:
        model = onnx.load(where, load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as err:
        raise LrpgraphError(f"{where}: not a readable ONNX model ({type(err).__name__}: {_first(err)}); "
                            "is the file truncated? export it again with torch.onnx.export or onnx.save") from None
    check_model(model, where, os.path.dirname(os.path.abspath(where)))
    return model


MALFORMED = (ArithmeticError, LookupError, TypeError, ValueError, onnx.checker.ValidationError,
             onnx.shape_inference.InferenceError)


def malformed_refused(step: Callable) -> Callable:
    """A convert step whose plain exceptions (a zero stride, an axes input of the wrong rank, a dtype onnx does not
    know: what a malformed model that passed the checks above makes numpy or onnx raise) become one LrpgraphError
    line that names the step and the exception. LrpgraphError passes through unchanged."""
    @functools.wraps(step)
    def guarded(*args, **kwargs):
        try:
            return step(*args, **kwargs)
        except LrpgraphError:
            raise
        except MALFORMED as err:
            raise LrpgraphError(f"the model cannot be converted ({step.__name__.strip('_')}: {type(err).__name__}: "
                                f"{_first(err)[:200]}); it is probably malformed: check it with "
                                "onnx.checker.check_model(model, full_check=True), or report it with the model") from None
    return guarded


def check_source(source: str | bytes) -> None:
    """check_model on what an onnxruntime session is about to load (a path or serialised bytes). A file that
    does not parse is left to onnxruntime, which refuses it with its own line."""
    try:
        if isinstance(source, bytes):
            model = onnx.load_from_string(source)
        else:
            model = onnx.load(source, load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError):
        return
    where = "the given model bytes" if isinstance(source, bytes) else source
    check_model(model, where, None if isinstance(source, bytes) else os.path.dirname(os.path.abspath(source)))


def load_file(path: str | os.PathLike) -> onnx.ModelProto:
    """The model at path with its external data, after check_model; LrpgraphError (one line) otherwise."""
    where = os.fspath(path)
    model = check_file(where)
    if any(external_data_helper.uses_external_data(t) for t in external_data_helper._get_all_tensors(model)):
        try:
            external_data_helper.load_external_data_for_model(model, os.path.dirname(os.path.abspath(where)))
        except (ValueError, RuntimeError, OSError) as err:
            raise LrpgraphError(f"{where}: its external data cannot be read ({_first(err)})") from None
    return model


def check_model(model: onnx.ModelProto, where: str, folder: str | None = None) -> None:
    """Refuse (one line) a model whose tensors, shapes or graph would make a reader leave folder, exhaust
    memory or fail with a traceback. folder: where its external data must lie (None: a model given as
    bytes or a proto, whose external locations are only checked for their form)."""
    for tensor in external_data_helper._get_all_tensors(model):
        check_tensor(tensor, where, folder)
    declared = len(model.graph.input) + len(model.graph.output)
    for k, info in enumerate(_value_infos(model.graph)):
        dims = [d.dim_value for d in info.type.tensor_type.shape.dim if d.HasField("dim_value")]
        _check_size(dims, f"{where}: tensor '{info.name}'")
        if info.type.HasField("tensor_type"):  # value_info may leave the type open, graph inputs/outputs not
            _check_dtype(info.type.tensor_type.elem_type, f"{where}: tensor '{info.name}'", k >= declared)
    check_graph(model, where)


def check_tensor(tensor: onnx.TensorProto, where: str, folder: str | None) -> None:
    """The tensor's size is sane and its data (inline or external, inside folder) holds what dims declare."""
    name = f"{where}: initializer '{tensor.name}'"
    elements = _check_size(list(tensor.dims), name)
    _check_dtype(tensor.data_type, name)
    fields = [f for f in ("raw_data",) + _TYPED + ("string_data",) if len(getattr(tensor, f))]
    if len(fields) > 1 or (fields == ["raw_data"] and tensor.data_type == onnx.TensorProto.STRING):
        raise LrpgraphError(f"{name} keeps its data in {' and '.join(fields)} (type {tensor.data_type}), which ONNX "
                            "does not allow; the file is damaged: export the model again")
    size = _itemsize(tensor.data_type)
    if external_data_helper.uses_external_data(tensor):
        info = {e.key: e.value for e in tensor.external_data}
        have = _external_bytes(info, name, folder)
    elif tensor.HasField("raw_data") or size is None:
        have = len(tensor.raw_data) if tensor.HasField("raw_data") else None
    else:
        have = _typed_count(tensor) * size
    external = external_data_helper.uses_external_data(tensor)
    if have is not None and size is not None and (have < elements * size or (not external and have > elements * size)):
        raise LrpgraphError(f"{name} declares {elements} elements ({elements * size} bytes) but holds {have} bytes; "
                            "the file is damaged: export the model again")


def _external_bytes(info, name, folder):
    """Bytes available to an external tensor; its location must stay inside folder (no '..', not absolute,
    no symlink leaving it)."""
    location = info.get("location", "")
    parts = location.replace("\\", "/").split("/")
    if not location or os.path.isabs(location) or location.startswith(("/", "\\")) or ".." in parts \
            or (len(location) > 1 and location[1] == ":"):
        raise LrpgraphError(f"{name} keeps its data at {location!r}, outside the model's folder; refused (external "
                            "data must be a file next to the model)")
    if folder is None:
        return None
    real_folder = os.path.realpath(folder)
    file = os.path.realpath(os.path.join(folder, location))
    if os.path.commonpath([real_folder, file]) != real_folder:
        raise LrpgraphError(f"{name} keeps its data at {location!r}, a link to {file} outside the model's folder; "
                            "refused (external data must be a file next to the model)")
    if not os.path.isfile(file):
        raise LrpgraphError(f"{name} keeps its data in {location!r}, which is missing; copy it next to the model")
    try:
        offset, length = int(info.get("offset") or 0), info.get("length")
    except ValueError:
        raise LrpgraphError(f"{name}: external data offset {info.get('offset')!r} is not a number") from None
    available = os.path.getsize(file) - offset
    if offset < 0 or available < 0 or (length is not None and not length.isdigit()) \
            or (length is not None and int(length) > available):
        raise LrpgraphError(f"{name}: external data (offset {offset}, length {length}) lies outside {location!r} "
                            f"({os.path.getsize(file)} bytes); the file is damaged: export the model again")
    return available if length is None else int(length)


def check_graph(model: onnx.ModelProto, where: str) -> None:
    """Every tensor produced once, every node input produced by someone, no cycle, only known domains."""
    graph = model.graph
    known = set(KNOWN_DOMAINS) | {f.domain for f in model.functions}
    produced = {i.name for i in graph.input} | {t.name for t in graph.initializer} | \
        {t.name for t in graph.sparse_initializer}
    for node in graph.node:
        if node.domain not in known and not node.domain.startswith("com.microsoft"):
            raise LrpgraphError(f"{where}: node '{node.name}' ({node.op_type}) is of domain {node.domain!r}, which "
                                "no runtime knows; give a model of standard ONNX ops")
        _check_attributes(node, where)
        for out in filter(None, node.output):
            if out in produced:
                raise LrpgraphError(f"{where}: tensor '{out}' is produced twice (node '{node.name}' again); "
                                    "an ONNX graph names each tensor once: export the model again")
            produced.add(out)
    for node in graph.node:
        for name in filter(None, node.input):
            if name not in produced:
                raise LrpgraphError(f"{where}: node '{node.name}' ({node.op_type}) reads '{name}', which no node, "
                                    "input or initializer produces; export the model again")
    for out in graph.output:
        if out.name not in produced:
            raise LrpgraphError(f"{where}: graph output '{out.name}' is produced by no node; export the model again")
    _check_acyclic(graph, where)


def _check_acyclic(graph, where):
    """Kahn's algorithm over the nodes; what is left over lies on a cycle."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    waiting = [len({producer[t] for t in node.input if t in producer}) for node in graph.node]
    users = {}
    for i, node in enumerate(graph.node):
        for j in {producer[t] for t in node.input if t in producer}:
            users.setdefault(j, []).append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    done = 0
    while ready:
        i = ready.pop()
        done += 1
        for j in users.get(i, ()):
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    if done < len(graph.node):
        node = graph.node[next(i for i, count in enumerate(waiting) if count > 0)]
        raise LrpgraphError(f"{where}: the graph has a cycle (through node '{node.name}', {node.op_type}); "
                            "an ONNX graph must be acyclic: export the model again")


def _check_size(dims, name):
    elements = 1
    for d in dims:
        if d < 0:
            raise LrpgraphError(f"{name} has a negative dimension {d}; the file is damaged: export the model again")
        elements *= d
        if elements > MAX_ELEMENTS:
            raise LrpgraphError(f"{name} declares shape {list(dims)} ({_count(dims)} elements, over {MAX_ELEMENTS}): "
                                "refused before allocating it; the file is damaged or made to exhaust memory")
    return elements


_DTYPES = set(onnx.TensorProto.DataType.values())


def _check_dtype(data_type, name, undefined_ok=False):
    if data_type not in _DTYPES or (data_type == onnx.TensorProto.UNDEFINED and not undefined_ok):
        raise LrpgraphError(f"{name} has element type {data_type}, which ONNX does not define; the file is damaged: "
                            "export the model again")


_POSITIVE = ("strides", "dilations", "kernel_shape")  # a zero or negative one divides by zero downstream


def _check_attributes(node, where):
    for attr in node.attribute:
        if attr.name in _POSITIVE and any(v <= 0 for v in attr.ints):
            raise LrpgraphError(f"{where}: node '{node.name}' ({node.op_type}) has {attr.name} {list(attr.ints)}; "
                                "they must be positive: the file is damaged, export the model again")


def _count(dims):
    total = 1
    for d in dims:
        total *= d
    return f"{total:.3g}"


def _value_infos(graph):
    return list(graph.input) + list(graph.output) + list(graph.value_info)


def _itemsize(data_type):
    """Bytes per element of a fixed-size ONNX type; None for strings and sub-byte types."""
    try:
        dtype = helper.tensor_dtype_to_np_dtype(data_type)
    except (KeyError, ValueError, TypeError):
        return None
    if dtype.kind in "OSU" or data_type in _SUB_BYTE:
        return None
    return dtype.itemsize


_SUB_BYTE = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}
_TYPED = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _typed_count(tensor):
    """Elements held in the typed fields (complex types hold two numbers per element)."""
    count = max(len(getattr(tensor, f)) for f in _TYPED)
    if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
        count //= 2
    return count


def _first(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

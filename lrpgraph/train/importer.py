"""ONNX -> torch: run an ONNX graph (a converted model's forward and relevance path alike) as a torch module.

`import_onnx(path_or_model)` gives an LrpModule that interprets the graph node by node, as torch.fx's
Interpreter does: each op is one small function in OPS, found by its op type (like onnx's reference
evaluator). Every float initializer of the model becomes one nn.Parameter, read by every node that uses
it, so gradients of a heatmap loss reach the real weights through both paths; weight-derived values of
the relevance path (transposes, w+ and w-, folded BatchNorm) are nodes, recomputed in every forward.
Buffers (not trained): BatchNorm running statistics, the converter's own constants (initializers only
the relevance path reads), integer initializers and Constant nodes. BatchNorm always uses its running
statistics. Float ops run in the module's dtype (`.double()` runs all of them, constants too, in float64).
"""

import inspect
import math
import os
from functools import reduce

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from lrpgraph import metadata, targets
from lrpgraph.errors import LrpgraphError, NotConvertedError, UnsupportedModelError
from lrpgraph.graph import topological

RELEVANCE_PREFIX = "lrp/"  # names of the nodes the converter emits
DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
          9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}
OPS = {}


def op(*names):
    def register(fn):
        for name in names:
            OPS[name] = fn
        return fn
    return register


class Ctx:
    """What an op may read besides its inputs and attributes: the float dtype, device, output count, opset."""

    def __init__(self, dtype, device, opset):
        self.dtype, self.device, self.opset, self.outputs = dtype, device, opset, 1

    def onnx_dtype(self, to):
        return self.dtype if to == 1 else DTYPES[to]  # FLOAT follows the module (float64 after .double())


# ---- element-wise ---------------------------------------------------------------------------------
for _name, _fn in {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow,
                   "Greater": torch.gt, "GreaterOrEqual": torch.ge, "Less": torch.lt, "LessOrEqual": torch.le,
                   "Equal": torch.eq, "And": torch.logical_and, "Or": torch.logical_or,
                   "Xor": torch.logical_xor, "BitwiseXor": torch.bitwise_xor, "BitwiseAnd": torch.bitwise_and,
                   "BitwiseOr": torch.bitwise_or}.items():
    OPS[_name] = (lambda f: lambda ctx, a, b: f(a, b))(_fn)
for _name, _fn in {"Neg": torch.neg, "Abs": torch.abs, "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log,
                   "Reciprocal": torch.reciprocal, "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh,
                   "Erf": torch.erf, "Not": torch.logical_not, "IsNaN": torch.isnan, "IsInf": torch.isinf,
                   "Sign": torch.sign, "Floor": torch.floor, "Ceil": torch.ceil, "HardSwish": F.hardswish,
                   "Cos": torch.cos, "Sin": torch.sin, "BitwiseNot": torch.bitwise_not}.items():
    OPS[_name] = (lambda f: lambda ctx, x: f(x))(_fn)
OPS.update({"MatMul": lambda ctx, a, b: torch.matmul(a, b), "Where": lambda ctx, c, a, b: torch.where(c, a, b),
            "Identity": lambda ctx, x: x, "PRelu": lambda ctx, x, slope: torch.where(x < 0, x * slope, x),
            "LeakyRelu": lambda ctx, x, alpha=0.01: F.leaky_relu(x, alpha),
            "HardSigmoid": lambda ctx, x, alpha=0.2, beta=0.5: torch.clamp(x * alpha + beta, 0.0, 1.0)})


@op("Div")
def div(ctx, a, b):
    return a / b if a.is_floating_point() else torch.div(a, b, rounding_mode="trunc")


@op("Mod")
def mod(ctx, a, b, fmod=0):
    return torch.fmod(a, b) if fmod else torch.remainder(a, b)


@op("Min", "Max", "Sum", "Mean")
def variadic(ctx, *xs, _op=None):
    fn = {"Min": torch.minimum, "Max": torch.maximum}.get(_op, torch.add)
    out = reduce(fn, xs)
    return out / len(xs) if _op == "Mean" else out


@op("Clip")
def clip(ctx, x, lo=None, hi=None, min=None, max=None):
    lo = lo if lo is not None else min
    hi = hi if hi is not None else max
    return x if lo is None and hi is None else torch.clamp(x, lo, hi)


@op("Softmax", "LogSoftmax")
def softmax(ctx, x, axis=None, _op=None):
    fn = torch.softmax if _op == "Softmax" else torch.log_softmax
    if ctx.opset >= 13:
        return fn(x, -1 if axis is None else axis)
    axis = 1 if axis is None else axis % x.dim()  # before opset 13: over the flattened trailing axes
    return fn(x.reshape(math.prod(x.shape[:axis]), -1), 1).reshape(x.shape)


@op("Cast")
def cast(ctx, x, to, saturate=1, round_mode="up"):
    return x.to(ctx.onnx_dtype(to))


@op("Dropout")
def dropout(ctx, x, ratio=None, training_mode=None, seed=None):
    return x, torch.ones_like(x, dtype=torch.bool)


# ---- linear layers and normalisation --------------------------------------------------------------
def _same_pads(auto_pad, spatial, kernel, strides, dilations):
    if auto_pad in ("NOTSET", "VALID"):
        return None if auto_pad == "NOTSET" else [0] * 2 * len(spatial)
    total = [max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
             for n, k, s, d in zip(spatial, kernel, strides, dilations)]
    begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
    return begin + [t - b for t, b in zip(total, begin)]


def _window(x, kernel_shape, auto_pad, pads, strides, dilations):
    """Resolved (kernel, pads [begin..., end...], strides, dilations) of a Conv/pool node."""
    n = len(kernel_shape)
    strides, dilations = list(strides or [1] * n), list(dilations or [1] * n)
    same = _same_pads(auto_pad, list(x.shape[2:]), kernel_shape, strides, dilations)
    return list(kernel_shape), same or list(pads or [0] * 2 * n), strides, dilations


def _torch_pad(pads):
    """ONNX [b1, b2, ..., e1, e2, ...] -> F.pad's (b_last, e_last, ..., b1, e1)."""
    n = len(pads) // 2
    return [p for i in reversed(range(n)) for p in (pads[i], pads[i + n])]


def _symmetric(pads, kernel, dilations):
    n = len(kernel)
    return all(pads[i] == pads[i + n] and pads[i] <= ((kernel[i] - 1) * dilations[i] + 1) // 2 for i in range(n))


@op("Conv")
def conv(ctx, x, w, b=None, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    kernel, pads, strides, dilations = _window(x, kernel_shape or list(w.shape[2:]), auto_pad, pads, strides,
                                               dilations)
    n = len(kernel)
    fn = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    if _symmetric(pads, kernel, dilations):
        return fn(x, w, b, strides, pads[:n], dilations, group)
    return fn(F.pad(x, _torch_pad(pads)), w, b, strides, 0, dilations, group)


@op("ConvTranspose")
def conv_transpose(ctx, x, w, b=None, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                   output_padding=None, output_shape=None, pads=None, strides=None):
    n = w.dim() - 2
    strides, dilations = list(strides or [1] * n), list(dilations or [1] * n)
    output_padding = list(output_padding or [0] * n)
    if output_shape is not None or auto_pad not in ("NOTSET", "VALID"):
        raise UnsupportedModelError("ConvTranspose: output_shape and auto_pad SAME are not supported; give pads")
    pads = list(pads or [0] * 2 * n)
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    if all(pads[i] == pads[i + n] for i in range(n)) and all(p < s or p < d for p, s, d in
                                                              zip(output_padding, strides, dilations)):
        return fn(x, w, b, strides, pads[:n], output_padding, group, dilations)
    full = fn(x, w, None, strides, 0, 0, group, dilations)  # no padding, then extend and crop
    full = F.pad(full, _torch_pad([0] * n + output_padding))
    index = (slice(None), slice(None)) + tuple(slice(pads[i], full.shape[2 + i] - pads[i + n]) for i in range(n))
    out = full[index]
    return out if b is None else out + b.reshape([1, -1] + [1] * n)


@op("Gemm")
def gemm(ctx, a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    y = (a.t() if transA else a) @ (b.t() if transB else b)
    y = y * alpha if alpha != 1.0 else y
    return y if c is None else y + (c * beta if beta != 1.0 else c)


@op("BatchNormalization")
def batch_norm(ctx, x, scale, bias, mean, var, epsilon=1e-5, momentum=0.9, training_mode=0, spatial=1):
    """Always the running statistics (eval semantics): no coupling between the samples of a batch."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    k = scale / torch.sqrt(var + epsilon)
    y = (x - mean.reshape(shape)) * k.reshape(shape) + bias.reshape(shape)
    return y, mean, var


# ---- pooling --------------------------------------------------------------------------------------
@op("MaxPool")
def max_pool(ctx, x, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
             storage_order=0, strides=None):
    """Indices as ONNX has them: flattened over the whole N x C x spatial tensor (torch's are per plane)."""
    kernel, pads, strides, dilations = _window(x, kernel_shape, auto_pad, pads, strides, dilations)
    n, spatial = len(kernel), list(x.shape[2:])
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
    symmetric = _symmetric(pads, kernel, dilations)
    src = x if symmetric else F.pad(x, _torch_pad(pads), value=-math.inf)
    padding = pads[:n] if symmetric else 0
    if ctx.outputs < 2:
        return fn(src, kernel, strides, padding, dilations, ceil_mode=bool(ceil_mode))
    y, idx = fn(src, kernel, strides, padding, dilations, ceil_mode=bool(ceil_mode), return_indices=True)
    if storage_order:
        raise UnsupportedModelError("MaxPool: storage_order = 1 (column-major indices) is not supported")
    if not symmetric:  # indices into the padded planes -> into the input planes
        padded, flat = list(src.shape[2:]), torch.zeros_like(idx)
        for i in range(n):
            coord = idx // math.prod(padded[i + 1:]) % padded[i] - pads[i]
            flat = flat * spatial[i] + coord
        idx = flat
    planes = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape([x.shape[0], x.shape[1]] + [1] * n)
    return y, idx + planes * math.prod(spatial)


@op("AveragePool")
def average_pool(ctx, x, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape=None,
                 pads=None, strides=None):
    kernel, pads, strides, dilations = _window(x, kernel_shape, auto_pad, pads, strides, dilations)
    if any(d != 1 for d in dilations):
        raise UnsupportedModelError("AveragePool: dilations other than 1 are not supported")
    n = len(kernel)
    if n == 1:  # avg_pool1d has no divisor_override: pool a 1 x L plane
        y = average_pool(ctx, x.unsqueeze(-2), "NOTSET", ceil_mode, count_include_pad, None, [1] + kernel,
                         [0, pads[0], 0, pads[1]], [1] + strides)
        return y.squeeze(-2)
    fn = (F.avg_pool2d, F.avg_pool3d)[n - 2]
    if not any(pads) and not ceil_mode:
        return fn(x, kernel, strides)
    # window sums over the zero-padded input, divided by the count of the positions each window covers
    total = fn(F.pad(x, _torch_pad(pads)), kernel, strides, 0, bool(ceil_mode), True, 1)
    ones = F.pad(torch.ones_like(x[:1, :1]), _torch_pad(pads), value=float(bool(count_include_pad)))
    count = fn(ones, kernel, strides, 0, bool(ceil_mode), True, 1)
    return total / count


@op("GlobalAveragePool", "GlobalMaxPool")
def global_pool(ctx, x, _op=None):
    dims = tuple(range(2, x.dim()))
    return x.mean(dims, keepdim=True) if _op == "GlobalAveragePool" else x.amax(dims, keepdim=True)


@op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd")
def reduce_(ctx, x, axes_in=None, axes=None, keepdims=1, noop_with_empty_axes=0, _op=None):
    axes = axes_in.tolist() if axes_in is not None else axes
    if not axes:
        if noop_with_empty_axes:
            return x
        axes = list(range(x.dim()))
    if _op == "ReduceProd":  # torch.prod takes one dim at a time
        for a in sorted((a % x.dim() for a in axes), reverse=True):
            x = torch.prod(x, a, keepdim=True)
        return x if keepdims else x.squeeze(tuple(axes))
    fn = {"ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceMax": torch.amax, "ReduceMin": torch.amin}[_op]
    return fn(x, dim=tuple(axes), keepdim=bool(keepdims))


@op("ArgMax", "ArgMin")
def argmax(ctx, x, axis=0, keepdims=1, select_last_index=0, _op=None):
    fn = torch.argmax if _op == "ArgMax" else torch.argmin
    if select_last_index:
        return x.shape[axis] - 1 - fn(x.flip(axis), axis, bool(keepdims))
    return fn(x, axis, bool(keepdims))


# ---- shapes and indexing --------------------------------------------------------------------------
def _ints(t):
    return [int(v) for v in t.tolist()] if torch.is_tensor(t) else list(t)


@op("Shape")
def shape(ctx, x, start=0, end=None):
    return torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=x.device)


@op("Size")
def size(ctx, x):
    return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


@op("ConstantOfShape")
def constant_of_shape(ctx, shape, value=None):
    value = np.zeros(1, np.float32) if value is None else value
    dtype = ctx.dtype if value.dtype == np.float32 else torch.from_numpy(value).dtype
    return torch.full(_ints(shape), value.reshape(-1)[0].item(), dtype=dtype, device=ctx.device)


@op("Expand")
def expand(ctx, x, shape):
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))


@op("Reshape")
def reshape(ctx, x, shape, allowzero=0):
    dims = _ints(shape)
    return x.reshape([x.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(dims)])


@op("Flatten")
def flatten(ctx, x, axis=1):
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), -1)


@op("Transpose")
def transpose(ctx, x, perm=None):
    return x.permute(perm if perm is not None else list(reversed(range(x.dim()))))


@op("Squeeze")
def squeeze(ctx, x, axes_in=None, axes=None):
    axes = _ints(axes_in) if axes_in is not None else axes
    if axes is None:
        return x.reshape([d for d in x.shape if d != 1])
    return x.squeeze(tuple(a % x.dim() for a in axes))


@op("Unsqueeze")
def unsqueeze(ctx, x, axes_in=None, axes=None):
    axes = _ints(axes_in) if axes_in is not None else axes
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


@op("Tile")
def tile(ctx, x, repeats):
    return x.repeat(_ints(repeats))


@op("Range")
def range_(ctx, start, limit, delta):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


@op("Concat")
def concat(ctx, *xs, axis):
    return torch.cat(xs, axis)


@op("Split")
def split(ctx, x, split_in=None, axis=0, num_outputs=None, split=None):
    sizes = _ints(split_in) if split_in is not None else split
    if sizes is None:
        parts = num_outputs or ctx.outputs
        chunk = math.ceil(x.shape[axis] / parts)
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(parts)]
    return tuple(torch.split(x, list(sizes), axis))


@op("Slice")
def slice_(ctx, x, starts=None, ends=None, axes_in=None, steps=None, axes=None):
    """Python's slicing semantics are ONNX's (clamping, negative indices and steps included); before
    opset 10 starts, ends and axes are attributes."""
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes_in) if axes_in is not None else (axes or list(range(len(starts))))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= x.dim()
        cut = slice(start, end, step)
        if step > 0:
            x = x[(slice(None),) * axis + (cut,)]
        else:
            index = torch.tensor(range(*cut.indices(x.shape[axis])), dtype=torch.int64, device=x.device)
            x = x.index_select(axis, index)
    return x


@op("Pad")
def pad(ctx, x, pads_in=None, constant_value=None, axes_in=None, mode="constant", pads=None, value=0.0):
    pads = _ints(pads_in) if pads_in is not None else list(pads)
    rank = x.dim()
    axes = [a % rank for a in _ints(axes_in)] if axes_in is not None else list(range(rank))
    full = [0] * 2 * rank
    for i, a in enumerate(axes):
        full[a], full[a + rank] = pads[i], pads[i + len(axes)]
    fill = constant_value.item() if constant_value is not None and constant_value.numel() else value
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    return F.pad(x, _torch_pad(full), torch_mode, fill if mode == "constant" else None)


@op("Gather")
def gather(ctx, x, index, axis=0):
    axis %= x.dim()
    index = torch.where(index < 0, index + x.shape[axis], index)
    out = x.index_select(axis, index.reshape(-1))
    return out.reshape(list(x.shape[:axis]) + list(index.shape) + list(x.shape[axis + 1:]))


@op("OneHot")
def one_hot(ctx, indices, depth, values, axis=-1):
    depth = int(depth.reshape(-1)[0])
    indices = indices.long()
    indices = torch.where(indices < 0, indices + depth, indices)
    hot = indices.unsqueeze(-1) == torch.arange(depth, device=indices.device)
    out = torch.where(hot, values[1], values[0])
    return out.movedim(-1, axis % out.dim())


@op("ScatterElements")
def scatter_elements(ctx, data, indices, updates, axis=0, reduction="none"):
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    if reduction == "none":
        return data.scatter(axis, indices, updates)
    if reduction == "add":
        return data.scatter_add(axis, indices, updates)
    how = {"mul": "prod", "max": "amax", "min": "amin"}[reduction]
    return data.scatter_reduce(axis, indices, updates, how, include_self=True)


# ---- the module -----------------------------------------------------------------------------------
def _attrs(node):
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


def _check_signature(node, attrs):
    if node.domain not in ("", "ai.onnx") or node.op_type not in OPS:
        raise UnsupportedModelError(f"node '{node.name}' ({node.domain or 'ai.onnx'}:{node.op_type}): the importer "
                                    f"has no torch version of this op; supported: {', '.join(sorted(OPS))}")
    params = inspect.signature(OPS[node.op_type]).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        unknown = [a for a in attrs if a not in params]
        if unknown:
            raise UnsupportedModelError(f"node '{node.name}' ({node.op_type}): attribute(s) {unknown} not supported")
    if "_op" in params:
        attrs["_op"] = node.op_type


def _constant_value(node, attrs):
    (key, v), = attrs.items()
    if key == "value":
        return v
    return np.array(v, np.float32 if key.startswith("value_float") else np.int64)


_RESERVED = set(dir(nn.ParameterDict())) | set(dir(nn.Module()))


def _key(name, taken):
    key = name.replace(".", "_") or "_"
    while key in taken or key in _RESERVED:
        key += "_"
    taken.add(key)
    return key


class LrpModule(nn.Module):
    """A (converted) ONNX model as a torch module. forward(x, target=None, seed=None) -> (logits, relevance);
    run(feeds) -> every graph output; logits(x) -> the plain forward only (works on unconverted models too).

    weights: nn.ParameterDict of the float initializers ('.' in names replaced; onnx_names maps back);
    buffers of `consts`: the rest (BatchNorm statistics, converter constants, integers, Constant nodes)."""

    def __init__(self, model):
        super().__init__()
        g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.config = metadata.read(model).get(metadata.CONFIG)
        inits = {i.name: i for i in g.initializer}
        nodes, constants = [], {}
        for node in g.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                constants[node.output[0]] = _constant_value(node, _attrs(node))
            else:
                nodes.append(node)
        nodes = topological(nodes, set(inits) | set(constants) | {i.name for i in g.input})
        stats = {t for n in nodes if n.op_type == "BatchNormalization" for t in n.input[3:5]}
        forward_reads = {t for n in nodes if not n.name.startswith(RELEVANCE_PREFIX) for t in n.input}
        self.weights, self.consts = nn.ParameterDict(), nn.Module()
        self.onnx_names, self._where, taken = {}, {}, set()
        for name, init in inits.items():
            value = torch.from_numpy(numpy_helper.to_array(init).copy())
            key = _key(name, taken)
            self.onnx_names[key] = name
            if value.is_floating_point() and name not in stats and (name in forward_reads or self.config is None):
                self.weights[key] = nn.Parameter(value)
                self._where[name] = ("weights", key)
            else:
                self.consts.register_buffer(key, value)
                self._where[name] = ("consts", key)
        for name, value in constants.items():
            key = _key(name, taken)
            self.consts.register_buffer(key, torch.from_numpy(np.array(value)))
            self._where[name] = ("consts", key)
        self.nodes = []
        for node in nodes:
            attrs = _attrs(node)
            _check_signature(node, attrs)
            self.nodes.append((node.op_type, node.name, list(node.input), list(node.output), attrs))
        self.input_names = [i.name for i in g.input if i.name not in inits]
        self.output_names = [o.name for o in g.output]
        cfg = self.config or {}
        self.image_input = cfg.get("image_input", self.input_names[0])
        self.logits_output = cfg.get("logits_output", self.output_names[0])
        self.relevance_output = (cfg.get("relevance_outputs") or ["relevance"])[0]
        self._plans = {}

    def tensor(self, onnx_name):
        """The parameter or buffer holding an initializer (by its ONNX name)."""
        where, key = self._where[onnx_name]
        return self.weights[key] if where == "weights" else getattr(self.consts, key)

    def initializer_names(self):
        """The ONNX names of every initializer the module holds (parameters and buffers)."""
        return list(self.onnx_names.values())

    def named_onnx_parameters(self):
        """(ONNX initializer name, nn.Parameter) pairs, e.g. for optimizer parameter groups."""
        return [(self.onnx_names[k], p) for k, p in self.weights.items()]

    def _plan(self, outputs):
        """The nodes needed for outputs, and after which node each tensor is read for the last time."""
        key = tuple(outputs)
        if key not in self._plans:
            needed, keep, needed_out = set(outputs), [], set(outputs)
            for i in reversed(range(len(self.nodes))):
                if any(o in needed for o in self.nodes[i][3]):
                    keep.append(i)
                    needed.update(t for t in self.nodes[i][2] if t)
            keep.reverse()
            last, drop = {}, {i: [] for i in keep}
            for i in keep:
                for t in self.nodes[i][2]:
                    last[t] = i
            for t, i in last.items():
                if t not in needed_out:
                    drop[i].append(t)
            self._plans[key] = (keep, drop)
        return self._plans[key]

    def _float(self):
        for t in list(self.weights.values()) + list(self.consts.buffers()):
            if t.is_floating_point():
                return t.dtype, t.device
        return torch.get_default_dtype(), torch.device("cpu")

    def run(self, feeds, outputs=None, detach=None):
        """Run the graph: feeds {input name: tensor or array} -> {output name: tensor} (all graph outputs by
        default). detach: optional predicate on node names; those nodes read the parameters detached (to see
        which path a gradient comes from)."""
        dtype, device = self._float()
        ctx = Ctx(dtype, device, self.opset)
        outputs = list(outputs or self.output_names)
        env = {name: self.tensor(name) for name in self._where}
        for name, value in feeds.items():
            value = torch.as_tensor(value)
            env[name] = value.to(device, dtype) if value.is_floating_point() else value.to(device)
        order, drop = self._plan(outputs)
        missing = {t for i in order for t in self.nodes[i][2] if t and t not in env} - {
            o for i in order for o in self.nodes[i][3]}
        if missing:
            raise LrpgraphError(f"missing graph input(s) {sorted(missing)}; feed them by name (inputs: "
                                f"{', '.join(self.input_names)})")
        for i in order:
            op_type, name, inputs, outs, attrs = self.nodes[i]
            args = [env[t] if t else None for t in inputs]
            if detach is not None and detach(name):
                args = [a.detach() if isinstance(a, nn.Parameter) else a for a in args]
            ctx.outputs = len(outs)
            try:
                result = OPS[op_type](ctx, *args, **attrs)
            except (RuntimeError, ValueError, IndexError, TypeError, LrpgraphError) as err:
                raise UnsupportedModelError(f"node '{name}' ({op_type}): {str(err).splitlines()[0]}") from err
            result = result if isinstance(result, tuple) else (result,)
            for out, value in zip(outs, result):
                if out:
                    env[out] = value
            for t in drop[i]:
                env.pop(t, None)
        return {o: env[o] for o in outputs}

    def logits(self, x):
        """The plain forward (only the nodes the logits need)."""
        return self.run({self.image_input: x}, [self.logits_output])[self.logits_output]

    def forward(self, x, target=None, seed=None):
        """(logits, relevance). target: int class per sample [N] (models converted with target 'index');
        seed: [N, C] (target 'seed'); neither for 'top' and 'all'."""
        if self.config is None:
            raise NotConvertedError("this model was not converted by lrpgraph (no lrpgraph.config metadata), so it "
                                    "has no relevance output; convert it with lrpgraph.convert(...) first, or use "
                                    "module.logits(x) / module.run(feeds) for the plain forward")
        mode, feeds = self.config.get("target"), {self.image_input: x}
        given = {"index": (target, targets.TARGET_INPUT, "target"), "seed": (seed, targets.SEED_INPUT, "seed")}
        for m, (value, input_name, arg) in given.items():
            if mode == m and value is None:
                raise LrpgraphError(f"the model was converted with target '{m}': pass {arg}=... to forward")
            if mode == m:
                feeds[input_name] = torch.as_tensor(value, dtype=torch.int64) if m == "index" else value
            elif value is not None:
                raise LrpgraphError(f"the model was converted with target '{mode}'; it takes no {arg} (convert it "
                                    f"with target '{m}' to pass one)")
        out = self.run(feeds, [self.logits_output, self.relevance_output])
        return out[self.logits_output], out[self.relevance_output]


def import_onnx(path_or_model):
    """An LrpModule from an ONNX file path, serialized bytes or an onnx.ModelProto."""
    if isinstance(path_or_model, onnx.ModelProto):
        model = path_or_model
    elif isinstance(path_or_model, (bytes, bytearray)):
        model = onnx.load_from_string(bytes(path_or_model))
    else:
        path = os.fspath(path_or_model)
        if not os.path.isfile(path):
            raise LrpgraphError(f"{path}: no such file; give the path of an .onnx model")
        model = onnx.load(path)
    return LrpModule(model)

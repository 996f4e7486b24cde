"""The ONNX ops the importer runs, one small function each, found by op type (as onnx's reference
evaluator): every forward op the converter explains and every op it emits for the relevance path."""

import math
from collections.abc import Callable
from functools import reduce

import numpy as np
import torch
import torch.nn.functional as F

from lrpgraph.errors import UnsupportedModelError
from lrpgraph.windows import explicit_pads

DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
          9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}
OPS = {}


def torch_op(*names) -> Callable:
    """Decorator: fn(ctx, *inputs, **attributes) runs the ONNX op(s) `names` in torch for the importer."""
    def add(fn):
        for name in names:
            OPS[name] = fn
        return fn
    return add


class TorchContext:
    """What an imported op may read at run time besides its inputs and attributes: the float dtype, device, output count, opset."""

    def __init__(self, dtype: torch.dtype, device: torch.device, opset: int):
        self.dtype, self.device, self.opset, self.outputs = dtype, device, opset, 1

    def onnx_dtype(self, to: int) -> torch.dtype:
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
            "HardSigmoid": lambda ctx, x, alpha=0.2, beta=0.5: torch.clamp(x * alpha + beta, 0.0, 1.0),
            "Elu": lambda ctx, x, alpha=1.0: F.elu(x, alpha), "Softplus": lambda ctx, x: F.softplus(x),
            "Selu": lambda ctx, x, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875:
                gamma * torch.where(x > 0, x, alpha * torch.expm1(x)), "Mish": lambda ctx, x: F.mish(x)})


@torch_op("LRN")
def lrn(ctx, x, size, alpha=1e-4, beta=0.75, bias=1.0):  # ONNX's window: floor((size-1)/2) channels before
    pad = [0, 0] * (x.dim() - 2) + [(size - 1) // 2, size // 2]
    square_sum = F.pad(x * x, pad).unfold(1, size, 1).sum(-1)
    return x / (bias + alpha / size * square_sum) ** beta


@torch_op("Div")
def div(ctx, a, b):
    return a / b if a.is_floating_point() else torch.div(a, b, rounding_mode="trunc")


@torch_op("Mod")
def mod(ctx, a, b, fmod=0):
    return torch.fmod(a, b) if fmod else torch.remainder(a, b)


@torch_op("Min", "Max", "Sum", "Mean")
def variadic(ctx, *xs, _op=None):
    fn = {"Min": torch.minimum, "Max": torch.maximum}.get(_op, torch.add)
    out = reduce(fn, xs)
    return out / len(xs) if _op == "Mean" else out


@torch_op("Clip")
def clip(ctx, x, lo=None, hi=None, min=None, max=None):
    lo = lo if lo is not None else min
    hi = hi if hi is not None else max
    return x if lo is None and hi is None else torch.clamp(x, lo, hi)


@torch_op("Softmax", "LogSoftmax")
def softmax(ctx, x, axis=None, _op=None):
    fn = torch.softmax if _op == "Softmax" else torch.log_softmax
    if ctx.opset >= 13:
        return fn(x, -1 if axis is None else axis)
    axis = 1 if axis is None else axis % x.dim()  # before opset 13: over the flattened trailing axes
    return fn(x.reshape(math.prod(x.shape[:axis]), -1), 1).reshape(x.shape)


@torch_op("Cast")
def cast(ctx, x, to, saturate=1, round_mode="up"):
    return x.to(ctx.onnx_dtype(to))


@torch_op("Dropout")
def dropout(ctx, x, ratio=None, training_mode=None, seed=None):
    return x, torch.ones_like(x, dtype=torch.bool)


# ---- linear layers and normalisation --------------------------------------------------------------
def _window(x, kernel_shape, auto_pad, pads, strides, dilations):
    """Resolved (kernel, pads [begin..., end...], strides, dilations) of a Conv/pool node."""
    n = len(kernel_shape)
    strides, dilations = list(strides or [1] * n), list(dilations or [1] * n)
    pads = explicit_pads(auto_pad, pads or [0] * 2 * n, list(x.shape[2:]), kernel_shape, strides, dilations)
    return list(kernel_shape), pads, strides, dilations


def _torch_pad(pads):
    """ONNX [b1, b2, ..., e1, e2, ...] -> F.pad's (b_last, e_last, ..., b1, e1)."""
    n = len(pads) // 2
    return [p for i in reversed(range(n)) for p in (pads[i], pads[i + n])]


def _symmetric(pads, kernel, dilations):
    n = len(kernel)
    return all(pads[i] == pads[i + n] and pads[i] <= ((kernel[i] - 1) * dilations[i] + 1) // 2 for i in range(n))


@torch_op("Conv")
def conv(ctx, x, w, b=None, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    kernel, pads, strides, dilations = _window(x, kernel_shape or list(w.shape[2:]), auto_pad, pads, strides,
                                               dilations)
    n = len(kernel)
    fn = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    if _symmetric(pads, kernel, dilations):
        return fn(x, w, b, strides, pads[:n], dilations, group)
    return fn(F.pad(x, _torch_pad(pads)), w, b, strides, 0, dilations, group)


@torch_op("ConvTranspose")
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


@torch_op("Gemm")
def gemm(ctx, a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    y = (a.t() if transA else a) @ (b.t() if transB else b)
    y = y * alpha if alpha != 1.0 else y
    return y if c is None else y + (c * beta if beta != 1.0 else c)


@torch_op("BatchNormalization")
def batch_norm(ctx, x, scale, bias, mean, var, epsilon=1e-5, momentum=0.9, training_mode=0, spatial=1):
    """Always the running statistics (eval semantics): no coupling between the samples of a batch."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    k = scale / torch.sqrt(var + epsilon)
    y = (x - mean.reshape(shape)) * k.reshape(shape) + bias.reshape(shape)
    return y, mean, var


# ---- pooling --------------------------------------------------------------------------------------
@torch_op("MaxPool")
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


@torch_op("AveragePool")
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


@torch_op("GlobalAveragePool", "GlobalMaxPool")
def global_pool(ctx, x, _op=None):
    dims = tuple(range(2, x.dim()))
    return x.mean(dims, keepdim=True) if _op == "GlobalAveragePool" else x.amax(dims, keepdim=True)


@torch_op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd")
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


@torch_op("ArgMax", "ArgMin")
def argmax(ctx, x, axis=0, keepdims=1, select_last_index=0, _op=None):
    fn = torch.argmax if _op == "ArgMax" else torch.argmin
    if select_last_index:
        return x.shape[axis] - 1 - fn(x.flip(axis), axis, bool(keepdims))
    return fn(x, axis, bool(keepdims))


# ---- shapes and indexing --------------------------------------------------------------------------
def _ints(t):
    return [int(v) for v in t.tolist()] if torch.is_tensor(t) else list(t)


@torch_op("Shape")
def shape(ctx, x, start=0, end=None):
    return torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=x.device)


@torch_op("Size")
def size(ctx, x):
    return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


@torch_op("ConstantOfShape")
def constant_of_shape(ctx, shape, value=None):
    value = np.zeros(1, np.float32) if value is None else value
    dtype = ctx.dtype if value.dtype == np.float32 else torch.from_numpy(value).dtype
    return torch.full(_ints(shape), value.reshape(-1)[0].item(), dtype=dtype, device=ctx.device)


@torch_op("Expand")
def expand(ctx, x, shape):
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))


@torch_op("Reshape")
def reshape(ctx, x, shape, allowzero=0):
    dims = _ints(shape)
    return x.reshape([x.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(dims)])


@torch_op("Flatten")
def flatten(ctx, x, axis=1):
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), -1)


@torch_op("Transpose")
def transpose(ctx, x, perm=None):
    return x.permute(perm if perm is not None else list(reversed(range(x.dim()))))


@torch_op("Squeeze")
def squeeze(ctx, x, axes_in=None, axes=None):
    axes = _ints(axes_in) if axes_in is not None else axes
    if axes is None:
        return x.reshape([d for d in x.shape if d != 1])
    return x.squeeze(tuple(a % x.dim() for a in axes))


@torch_op("Unsqueeze")
def unsqueeze(ctx, x, axes_in=None, axes=None):
    axes = _ints(axes_in) if axes_in is not None else axes
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


@torch_op("Tile")
def tile(ctx, x, repeats):
    return x.repeat(_ints(repeats))


@torch_op("Range")
def range_(ctx, start, limit, delta):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


@torch_op("Concat")
def concat(ctx, *xs, axis):
    return torch.cat(xs, axis)


@torch_op("Split")
def split(ctx, x, split_in=None, axis=0, num_outputs=None, split=None):
    sizes = _ints(split_in) if split_in is not None else split
    if sizes is None:
        parts = num_outputs or ctx.outputs
        chunk = math.ceil(x.shape[axis] / parts)
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(parts)]
    return tuple(torch.split(x, list(sizes), axis))


@torch_op("Slice")
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


@torch_op("Pad")
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


@torch_op("Gather")
def gather(ctx, x, index, axis=0):
    axis %= x.dim()
    index = torch.where(index < 0, index + x.shape[axis], index)
    out = x.index_select(axis, index.reshape(-1))
    return out.reshape(list(x.shape[:axis]) + list(index.shape) + list(x.shape[axis + 1:]))


@torch_op("OneHot")
def one_hot(ctx, indices, depth, values, axis=-1):
    depth = int(depth.reshape(-1)[0])
    indices = indices.long()
    indices = torch.where(indices < 0, indices + depth, indices)
    hot = indices.unsqueeze(-1) == torch.arange(depth, device=indices.device)
    out = torch.where(hot, values[1], values[0])
    return out.movedim(-1, axis % out.dim())


@torch_op("ScatterElements")
def scatter_elements(ctx, data, indices, updates, axis=0, reduction="none"):
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    if reduction == "none":
        return data.scatter(axis, indices, updates)
    if reduction == "add":
        return data.scatter_add(axis, indices, updates)
    how = {"mul": "prod", "max": "amax", "min": "amin"}[reduction]
    return data.scatter_reduce(axis, indices, updates, how, include_self=True)

"""Pooling. MaxPool: winner-take-all (all of R_j to the arg-max of window j; windows that overlap add up,
through MaxPool's Indices and ScatterElements(reduction='add'), or, for WebGPU, through an unfold by a grouped Conv
and a ConvTranspose). Average pools (AveragePool,
GlobalAveragePool, ReduceMean): the norm rule R_i = x_i * A^T(R / stab(z)), with A^T the adjoint of the
pooling (its gradient), as zennit's Norm; gradient rule sets use A^T alone."""

from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import onnx

from lrpgraph.catalog import Context
from lrpgraph.converters.registry import converts
from lrpgraph.errors import UnsupportedModelError
from lrpgraph.rules import Rule
from lrpgraph.windows import explicit_pads, pool_output_size

if TYPE_CHECKING:
    from lrpgraph.catalog import Unit


@converts("MaxPool")
def max_pool(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """Primitives: route (each window's message to its arg-max)."""
    def route(r):
        b, x = ctx.b, unit.inputs[0]
        routed = _wta_unfold(ctx, unit, r) if b.webgpu else _wta_scatter(ctx, unit, r)
        b.routes[routed] = (r, unit.outputs[0], x)
        return routed

    return rule.emitter("maxpool", unit)(ctx, unit, rule, r_outs, SimpleNamespace(route=route))


def _wta_scatter(ctx, unit, r):
    """Winner-take-all through MaxPool's Indices and ScatterElements (reduction 'add')."""
    b, x = ctx.b, unit.inputs[0]
    attrs = {k: v for k, v in unit.attrs.items() if k != "storage_order"}
    _, indices = b.op("MaxPool", [x], "argmax", outputs=2, **attrs)
    flat = b.ints([-1])
    zeros = b.op("Reshape", [b.zeros_like(x), flat], "zeros_flat")
    scattered = b.op("ScatterElements", [zeros, b.op("Reshape", [indices, flat], "indices_flat"),
                                         b.op("Reshape", [r, flat], "r_flat")], "scatter", axis=0, reduction="add")
    return b.reshape_like(scattered, x)


def _wta_unfold(ctx, unit, r):
    """Winner-take-all with ops that onnxruntime-web's WebGPU backend runs: a Conv with one-hot kernels (each
    channel a separate image) unfolds the windows of x (padded with the lowest float32, so padding never wins),
    each window's first maximum in row-major order is marked (as MaxPool's Indices pick it; float ops only: Equal to the window's
    max, minus the hits before it through a MatMul with a triangular matrix), and a ConvTranspose with the same
    kernels adds each window's relevance back at its winner, overlapping windows summed."""
    b, x, attrs = ctx.b, unit.inputs[0], unit.attrs
    shape = ctx.shape(x, unit)
    channels, spatial, kernel = shape[1], shape[2:], list(attrs["kernel_shape"])
    n, size = len(kernel), int(np.prod(kernel))
    strides, dilations = list(attrs.get("strides", [1] * n)), list(attrs.get("dilations", [1] * n))
    pads = explicit_pads(attrs.get("auto_pad", b"NOTSET"), attrs.get("pads", [0] * 2 * n), spatial, kernel,
                          strides, dilations)
    reach = [(kernel[i] - 1) * dilations[i] + 1 for i in range(n)]
    out = [pool_output_size(spatial[i], reach[i], strides[i], pads[i], pads[i + n], bool(attrs.get("ceil_mode", 0)))
           for i in range(n)]
    end = [max((out[i] - 1) * strides[i] + reach[i] - spatial[i] - pads[i], 0) for i in range(n)]
    lowest = b.const(float(np.finfo(np.float32).min))
    padded = b.op("Pad", [x, b.ints([0, 0] + pads[:n] + [0, 0] + end), lowest], "pad_lowest")
    kernels = b.const(np.eye(size, dtype=np.float32).reshape([size, 1] + kernel))  # channels folded into the batch
    planes = b.op("Reshape", [padded, b.ints([-1, 1] + [spatial[i] + pads[i] + end[i] for i in range(n)])], "planes")
    windows = b.op("Conv", [planes, kernels], "unfold", strides=strides, dilations=dilations)
    windows = b.op("Reshape", [windows, b.ints([-1, channels, size, int(np.prod(out))])], "windows")
    top = b.op("Reshape", [unit.outputs[0], b.ints([-1, channels, 1, int(np.prod(out))])], "window_max")
    hit = b.op("Cast", [b.op("Equal", [windows, top], "is_max")], "hit", to=onnx.TensorProto.FLOAT)
    earlier = b.op("MatMul", [b.const(np.tril(np.ones((size, size), np.float32), -1)), hit], "hits_before")
    first = b.mul(hit, b.pos(b.sub(b.const(1.0), earlier)))  # the first maximum in row-major order
    spread = b.mul(first, b.op("Reshape", [r, b.ints([-1, channels, 1, int(np.prod(out))])], "r_windows"))
    spread = b.op("Reshape", [spread, b.ints([-1, size] + out)], "spread")
    folded = b.op("ConvTranspose", [spread, kernels], "fold", strides=strides, dilations=dilations)
    short = [max(pads[i] + spatial[i] - (out[i] - 1) * strides[i] - reach[i], 0) for i in range(n)]
    if any(short):  # windows that stop before the input's end: zeros there
        folded = b.op("Pad", [folded, b.ints([0] * (n + 2) + [0, 0] + short)], "pad_end")
    folded = b.op("Slice", [folded, b.ints(pads[:n]), b.ints([pads[i] + spatial[i] for i in range(n)]),
                            b.ints(range(2, n + 2))], "crop")
    return b.op("Reshape", [folded, b.ints([-1, channels] + spatial)], "relevance")


@converts("AveragePool", "GlobalAveragePool", "ReduceMean")
def average_pool(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """Primitives: gradient (the pooling's adjoint)."""
    adjoint = _average_pool_adjoint if unit.op == "AveragePool" else _mean_adjoint
    op = SimpleNamespace(place=lambda t: [t] + [None] * (len(unit.inputs) - 1),
                         gradient=lambda s: adjoint(ctx, unit, s))
    return rule.emitter("avgpool", unit)(ctx, unit, rule, r_outs, op)


def _mean_adjoint(ctx, unit, s):
    """Gradient of a mean over axes: s / count, broadcast back to the input's shape."""
    b, x = ctx.b, unit.inputs[0]
    shape = ctx.shape(x, unit)
    rank = len(shape)
    if unit.op == "GlobalAveragePool":
        axes, keep = list(range(2, rank)), True
    else:
        if len(unit.inputs) > 1 and unit.inputs[1]:
            axes = [int(a) for a in ctx.value(unit.inputs[1], unit, "axes")]
        else:
            axes = list(unit.attrs.get("axes", range(rank)))
        axes = sorted(a % rank for a in axes)
        keep = bool(unit.attrs.get("keepdims", 1))
    count = int(np.prod([shape[a] for a in axes]))
    if not keep:
        s = b.op("Unsqueeze", [s, b.ints(axes)], "unsqueeze")
    scaled = b.div(s, b.const(float(count)))
    return b.op("Expand", [scaled, b.op("Shape", [x], "shape")], "expand")


def _average_pool_adjoint(ctx, unit, s):
    """Gradient of AveragePool: ConvTranspose of s / divisor with a ones kernel, one group per channel.

    Spatial sizes are static, so the output size and the divisor of every window (count_include_pad,
    padding, ceil_mode: torch's and ONNX Runtime's conventions) are computed here in numpy."""
    b, x, attrs = ctx.b, unit.inputs[0], unit.attrs
    shape = ctx.shape(x, unit)
    spatial, channels = shape[2:], shape[1]
    kernel = list(attrs["kernel_shape"])
    n = len(kernel)
    strides = list(attrs.get("strides", [1] * n))
    pads = list(attrs.get("pads", [0] * 2 * n))
    pads = explicit_pads(attrs.get("auto_pad", "NOTSET"), pads, spatial, kernel, strides, [1] * n)
    ceil, include_pad = bool(attrs.get("ceil_mode", 0)), bool(attrs.get("count_include_pad", 0))
    out = [pool_output_size(spatial[i], kernel[i], strides[i], pads[i], pads[i + n], ceil) for i in range(n)]
    if unit.op == "AveragePool" and ceil and out != [-(-(spatial[i] + pads[i] + pads[i + n] - kernel[i]) // strides[i])
                                                      + 1 for i in range(n)]:
        raise UnsupportedModelError(
            f"node '{unit.name}' (AveragePool): with ceil_mode its last window starts in the padding, which onnx's "
            f"shape inference counts (ONNX Runtime would refuse the converted model); export with ceil_mode=False "
            f"or padding {pads[:n]} lowered so that every window starts inside the input")
    # end padding that makes a plain strided window cover every output (ceil_mode adds windows)
    end = [(out[i] - 1) * strides[i] + kernel[i] - spatial[i] - pads[i] for i in range(n)]
    full_pads = pads[:n] + [max(e, 0) for e in end]
    divisors = [_window_divisors(out[i], spatial[i], kernel[i], strides[i], pads[i], pads[i + n], include_pad)
                for i in range(n)]
    inverse = 1.0 / _outer(divisors)
    scaled = b.mul(s, b.const(inverse.reshape([1, 1] + out).astype(np.float32)))
    ones = b.const(np.ones([channels, 1] + kernel, np.float32))
    used = [(out[i] - 1) * strides[i] + kernel[i] - full_pads[i] - full_pads[i + n] for i in range(n)]
    return b.op("ConvTranspose", [scaled, ones], "pool_adjoint", strides=strides, pads=full_pads, group=channels,
                output_padding=[spatial[i] - used[i] for i in range(n)])


def _window_divisors(out, size, kernel, stride, begin, end, include_pad):
    divisors = []
    for o in range(out):
        start = o * stride - begin
        stop = min(start + kernel, size + end)
        padded = stop - start
        real = min(stop, size) - max(start, 0)
        divisors.append(padded if include_pad else real)
    return np.array(divisors, np.float64)


def _outer(vectors):
    result = vectors[0]
    for v in vectors[1:]:
        result = np.multiply.outer(result, v)
    return result


@converts("GatherND")
def gather_nd(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """Window selections with constant indices (the dynamo exporter's adaptive average pooling when the output
    size does not divide the input) or indices computed without the signal (a decoder classifier's last
    non-padding token): relevance and gradients go back to the positions read, and positions read by several
    (overlapping) windows add up (ScatterND with reduction 'add'); the indices get none."""
    data, indices = unit.inputs[:2]
    if indices in ctx.signal or int(unit.attrs.get("batch_dims", 0)) != 0:
        raise UnsupportedModelError(f"node '{unit.name}' (GatherND): only indices that do not carry the signal, "
                                    "with batch_dims 0, are supported")
    b = ctx.b
    return [b.op("ScatterND", [b.zeros_like(data), indices, r_outs[0]], "scatter", reduction="add"), None]

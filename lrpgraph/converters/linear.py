"""Linear layers: Conv, ConvTranspose, Gemm, MatMul (+ a bias Add, + a following BatchNormalization folded in).

Each linear op is one unit: its record in catalog/linear.py says how a node of it reads as a LinearLayer (its
attributes); here are its forward pass and its transposed (adjoint) pass, attached to that record by op type.
A BoundLayer binds a layer's data to its op's passes; the linear rules (rules/linear.py) are written in terms of these
(weights, forward, backward). A linear op the catalog does not know is added with `linear_op`: both halves
in one registration."""

from collections.abc import Callable

import numpy as np

from lrpgraph.catalog import RECORDS, Context, LinearLayer, LinearOp, Unit, add, record
from lrpgraph.converters.registry import EMITTERS, attach
from lrpgraph.graph import Builder
from lrpgraph.rules import Rule


class BoundLayer:
    """A LinearLayer bound to its op's emitters (catalog.layer.LayerEmitters): its folded weights, its forward
    and its transposed map, as the linear rules emit them."""

    def __init__(self, layer: LinearLayer):
        self.layer, self.x, self.out = layer, layer.x, layer.out
        self.emitters = EMITTERS[layer.op]

    def weights(self, b: Builder) -> tuple:
        """(W, bias) of the whole unit, emitted once: Conv layout [M, C/g, k...], dense layout [K, M]."""
        layer = self.layer
        if "w" not in layer._cache:
            w, bias = layer.weight, layer.bias
            if layer.bias_from_add:
                bias = b.op("Reshape", [bias, b.ints([-1])], "bias")
            if self.emitters.weight_layout is not None:
                w, bias = self.emitters.weight_layout(b, layer, w, bias)
            if layer.bn is not None:
                w, bias = _fold_bn(b, layer, w, bias)
            layer._cache["w"] = (w, bias)
        return layer._cache["w"]

    def forward(self, b: Builder, x: str, w: str, bias: "str | None") -> str:
        return self.emitters.forward(b, self.layer, x, w, bias)

    def backward(self, b: Builder, s: str, w: str) -> str:
        """The transposed map: the gradient of sum(s * layer(x, w)) with respect to x."""
        return self.emitters.adjoint(b, self.layer, s, w)

    def per_channel(self, b: Builder, value: "float | tuple") -> str:
        """A constant broadcastable over the input: one value, or one per input channel (axis 1)."""
        values = list(value) if isinstance(value, tuple) else [value]
        shape = [1, len(values)] + [1] * (len(self.layer.x_shape) - 2) if len(values) > 1 else [1]
        return b.const(np.array(values, np.float32).reshape(shape))


def _fold_bn(b, layer, w, bias):
    """A following BatchNormalization folded into (W, bias): its factor along the weight's output channels."""
    bn = layer.bn
    k = b.div(bn["scale"], b.op("Sqrt", [b.add(bn["var"], b.const(bn["epsilon"]))], "sqrt"))
    w = b.mul(w, b.op("Reshape", [k, b.ints(RECORDS[layer.op].linear.bn_shape(layer))], "bn_scale"))
    centred = b.op("Neg", [bn["mean"]], "neg") if bias is None else b.sub(bias, bn["mean"])
    return w, b.add(b.mul(centred, k), bn["B"])


def conv_forward(b: Builder, layer: LinearLayer, x: str, w: str, bias: "str | None") -> str:
    a = layer.attrs
    return b.op("Conv", [x, w] + ([bias] if bias else []), "conv", strides=a["strides"], pads=a["pads"],
                dilations=a["dilations"], group=a["group"])


def conv_adjoint(b: Builder, layer: LinearLayer, s: str, w: str) -> str:
    """A stride-1 Conv's adjoint is itself a Conv, with the kernel flipped and its channel axes swapped (see
    flipped_kernel): onnxruntime runs that in its blocked-layout Conv, which its ConvTranspose is not
    (about 1.2x slower, plus layout reorders between the two). Strided Convs keep ConvTranspose: its
    exact sub-pixel form (a stride-1 Conv to C_in x stride^2 phases, then DepthToSpace) measured 1.2x
    slower on resnet18's 7x7 first layer and 1.7-5.8x on its other strided Convs (benchmarks/subpixel.py).
    So do those with fewer than 12 input channels (the adjoint's outputs; a first layer on RGB):
    onnxruntime pads a Conv's output channels to its block size, and its ConvTranspose wins there
    (measured, one thread, 64 channels at 112 px: 3 outputs 1.0 vs 2.6 ms, 8: 2.0 vs 2.6, 12: 2.7 vs
    2.6, 16: 3.6 vs 2.7)."""
    a = layer.attrs
    pads = _adjoint_pads(layer)
    if pads is not None and layer.w_shape[1] * a["group"] >= 12:
        return b.op("Conv", [s, flipped_kernel(b, layer, w)], "convT", strides=a["strides"], pads=pads,
                    dilations=a["dilations"], group=a["group"])  # strides all 1, written out for WebGPU
    return b.op("ConvTranspose", [s, w], "convT", strides=a["strides"], pads=a["pads"],
                dilations=a["dilations"], group=a["group"], output_padding=a["output_padding"])


def _adjoint_pads(layer):
    """The pads of the stride-1 Conv that is this Conv's adjoint, or None where there is none (strides,
    unknown kernel, or more padding than the kernel spans: the adjoint would need negative pads)."""
    a, shape = layer.attrs, layer.w_shape
    if not shape or any(v is None for v in shape) or any(st != 1 for st in a["strides"]) \
            or any(a["output_padding"]):
        return None
    n = len(shape) - 2
    span = [(shape[2 + i] - 1) * a["dilations"][i] for i in range(n)]
    pads = [span[i % n] - p for i, p in enumerate(a["pads"])]
    return pads if min(pads) >= 0 else None


def flipped_kernel(b: Builder, layer: LinearLayer, w: str) -> str:
    """w [M, C/g, k...] -> [C, M/g, k...] reversed along every spatial axis, per group: the kernel of the
    adjoint. Nodes on the weight (onnxruntime folds them into a constant when the session loads; the
    importer recomputes them from the shared parameter, so training sees the dependency)."""
    group, (m, cg), n = layer.attrs["group"], layer.w_shape[:2], len(layer.w_shape) - 2
    kernel = list(layer.w_shape[2:])
    # flipped first: the importer's gradient then reaches the weight through a gather (a fresh tensor)
    w = b.op("Slice", [w, b.ints([-1] * n), b.ints([-2**63] * n), b.ints(range(2, n + 2)), b.ints([-1] * n)],
             "flip")
    if group == 1:
        return b.op("Transpose", [w], "kernel_t", perm=[1, 0] + list(range(2, n + 2)))
    if m // group > 1 and cg > 1:
        w = b.op("Reshape", [w, b.ints([group, m // group, cg] + kernel)], "kernel_groups")
        w = b.op("Transpose", [w], "kernel_t", perm=[0, 2, 1] + list(range(3, n + 3)))
    if m // group > 1 or cg > 1:  # with one of the two per-group axes 1, a plain reshape swaps them
        w = b.op("Reshape", [w, b.ints([group * cg, m // group] + kernel)], "kernel_t")
    return w


def conv_transpose_forward(b: Builder, layer: LinearLayer, x: str, w: str, bias: "str | None") -> str:
    a = layer.attrs
    return b.op("ConvTranspose", [x, w] + ([bias] if bias else []), "deconv", strides=a["strides"],
                pads=a["pads"], dilations=a["dilations"], group=a["group"], output_padding=a["output_padding"])


def conv_transpose_adjoint(b: Builder, layer: LinearLayer, s: str, w: str) -> str:
    """The transpose of a ConvTranspose is the Conv with the same weight and windows."""
    a = layer.attrs
    return b.op("Conv", [s, w], "deconvT", strides=a["strides"], pads=a["pads"], dilations=a["dilations"],
                group=a["group"])


def dense_weight_layout(b: Builder, layer: LinearLayer, w: str, bias: "str | None") -> tuple:
    """Gemm's stored weight to [K, M] (transB), alpha into the weight, beta into the bias."""
    if layer.transpose_weight:
        w = b.op("Transpose", [w], "weight_t", perm=[1, 0])
    if layer.alpha != 1.0:
        w = b.mul(w, b.const(layer.alpha))
    if bias is not None and layer.beta != 1.0:
        bias = b.mul(bias, b.const(layer.beta))
    return w, bias


def dense_forward(b: Builder, layer: LinearLayer, x: str, w: str, bias: "str | None") -> str:
    """x @ W + bias: a Gemm on [N, K], a MatMul (and an Add) on more axes."""
    if len(layer.x_shape) == 2:
        return b.op("Gemm", [x, w] + ([bias] if bias else []), "gemm")
    z = b.op("MatMul", [x, w], "matmul")
    return b.add(z, bias) if bias else z


def dense_adjoint(b: Builder, layer: LinearLayer, s: str, w: str) -> str:
    if len(layer.x_shape) == 2:
        return b.op("Gemm", [s, w], "gemmT", transB=1)
    return b.op("MatMul", [s, b.op("Transpose", [w], "weight_t", perm=[1, 0])], "matmulT")


def linear(ctx: Context, unit: Unit, rule: Rule, r_outs: list) -> list:
    """The rule's linear emitter, with the layer bound to its op's passes (forward, transposed map, weights)."""
    return rule.emitter("linear", unit)(ctx, unit, rule, r_outs, BoundLayer(unit.layer))


def linear_op(op_type: str, reads: LinearOp, forward: Callable, adjoint: Callable,
              weight_layout: Callable | None = None, **flags) -> None:
    """Add a linear op the catalog does not know, in one registration: its record (kind linear; flags: OpRecord
    fields such as keys), how a node of it reads as a LinearLayer (reads), and its passes: forward
    fn(b, layer, x, w, bias) -> y, adjoint fn(b, layer, s, w) -> the gradient of sum(s * y) with respect to x,
    and, if its stored weight needs it, weight_layout fn(b, layer, w, bias) -> (w, bias)."""
    add(record(op_type, "linear", linear=reads, **flags))
    attach(op_type, "linear", linear, forward=forward, adjoint=adjoint, weight_layout=weight_layout)


attach("Conv", "linear", linear, forward=conv_forward, adjoint=conv_adjoint)
attach("ConvTranspose", "linear", linear, forward=conv_transpose_forward, adjoint=conv_transpose_adjoint)
for _op in ("Gemm", "MatMul"):
    attach(_op, "linear", linear, forward=dense_forward, adjoint=dense_adjoint, weight_layout=dense_weight_layout)

"""Linear layers: Conv, Gemm, MatMul (+ a bias Add, + a following BatchNormalization folded in).

A LinearLayer knows how to emit its own forward (with any weights) and its transposed map (the
gradient with respect to its input); the linear rules (rules/linear.py) are written in terms of these two."""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lrpgraph.converters.registry import Context, register
from lrpgraph.rules import Rule

if TYPE_CHECKING:
    from lrpgraph.canonicalize import Unit
    from lrpgraph.graph import Builder


@dataclass
class LinearLayer:
    op: str  # Conv, ConvTranspose, Gemm or MatMul
    x: str  # input tensor
    out: str  # output of the whole unit (after bias Add / BatchNormalization)
    weight: str
    bias: str = None
    bias_from_add: bool = False  # a bias Add's constant may be shaped [1, M, 1, 1]: flattened to [M]
    x_shape: list = None
    attrs: dict = field(default_factory=dict)  # Conv(Transpose): strides, pads, dilations, group, output_padding
    transpose_weight: bool = False  # Gemm transB = 0 stores W as [K, M]; 1 as [M, K]
    alpha: float = 1.0
    beta: float = 1.0
    bn: dict = None  # {scale, B, mean, var, epsilon} tensor names / value of a folded BatchNormalization
    w_shape: list = None  # the weight's static shape (Conv: [M, C/group, k...]), when known
    _cache: dict = field(default_factory=dict)

    @property
    def convolutional(self) -> bool:
        """A Conv or ConvTranspose: channels on axis 1, windows over the axes after it."""
        return self.op in ("Conv", "ConvTranspose")

    def weights(self, b: "Builder") -> tuple:
        """(W, bias) of the whole unit, emitted once: Conv layout [M, C/g, k...], dense layout [K, M]."""
        if "w" not in self._cache:
            w, bias = self.weight, self.bias
            if self.bias_from_add:
                bias = b.op("Reshape", [bias, b.ints([-1])], "bias")
            if not self.convolutional:
                if self.transpose_weight:
                    w = b.op("Transpose", [w], "weight_t", perm=[1, 0])
                if self.alpha != 1.0:
                    w = b.mul(w, b.const(self.alpha))
                if bias is not None and self.beta != 1.0:
                    bias = b.mul(bias, b.const(self.beta))
            if self.bn is not None:
                w, bias = self._fold_bn(b, w, bias)
            self._cache["w"] = (w, bias)
        return self._cache["w"]

    def _fold_bn(self, b, w, bias):
        bn = self.bn
        k = b.div(bn["scale"], b.op("Sqrt", [b.add(bn["var"], b.const(bn["epsilon"]))], "sqrt"))
        shape = [-1] + [1] * (len(self.x_shape) - 1) if self.op == "Conv" else [1, -1]
        w = b.mul(w, b.op("Reshape", [k, b.ints(shape)], "bn_scale"))
        centred = b.op("Neg", [bn["mean"]], "neg") if bias is None else b.sub(bias, bn["mean"])
        return w, b.add(b.mul(centred, k), bn["B"])

    def forward(self, b: "Builder", x: str, w: str, bias: "str | None") -> str:
        if self.op == "Conv":
            a = self.attrs
            return b.op("Conv", [x, w] + ([bias] if bias else []), "conv", strides=a["strides"], pads=a["pads"],
                        dilations=a["dilations"], group=a["group"])
        if self.op == "ConvTranspose":
            a = self.attrs
            return b.op("ConvTranspose", [x, w] + ([bias] if bias else []), "deconv", strides=a["strides"],
                        pads=a["pads"], dilations=a["dilations"], group=a["group"], output_padding=a["output_padding"])
        if len(self.x_shape) == 2:
            return b.op("Gemm", [x, w] + ([bias] if bias else []), "gemm")
        z = b.op("MatMul", [x, w], "matmul")
        return b.add(z, bias) if bias else z

    def backward(self, b: "Builder", s: str, w: str) -> str:
        """The transposed map: the gradient of sum(s * layer(x, w)) with respect to x.

        A stride-1 Conv's is itself a Conv, with the kernel flipped and its channel axes swapped (see
        flipped_kernel): onnxruntime runs that in its blocked-layout Conv, which its ConvTranspose is not
        (about 1.2x slower, plus layout reorders between the two). Strided Convs keep ConvTranspose: its
        exact sub-pixel form (a stride-1 Conv to C_in x stride^2 phases, then DepthToSpace) measured 1.2x
        slower on resnet18's 7x7 first layer and 1.7-5.8x on its other strided Convs (benchmarks/subpixel.py).
        So do those with fewer than 12 input channels (the adjoint's outputs; a first layer on RGB):
        onnxruntime pads a Conv's output channels to its block size, and its ConvTranspose wins there
        (measured, one thread, 64 channels at 112 px: 3 outputs 1.0 vs 2.6 ms, 8: 2.0 vs 2.6, 12: 2.7 vs
        2.6, 16: 3.6 vs 2.7)."""
        if self.op == "Conv":
            a = self.attrs
            pads = self._adjoint_pads()
            if pads is not None and self.w_shape[1] * a["group"] >= 12:
                return b.op("Conv", [s, self.flipped_kernel(b, w)], "convT", strides=a["strides"], pads=pads,
                            dilations=a["dilations"], group=a["group"])  # strides all 1, written out for WebGPU
            return b.op("ConvTranspose", [s, w], "convT", strides=a["strides"], pads=a["pads"],
                        dilations=a["dilations"], group=a["group"], output_padding=a["output_padding"])
        if self.op == "ConvTranspose":  # its transpose is the Conv with the same weight and windows
            a = self.attrs
            return b.op("Conv", [s, w], "deconvT", strides=a["strides"], pads=a["pads"], dilations=a["dilations"],
                        group=a["group"])
        if len(self.x_shape) == 2:
            return b.op("Gemm", [s, w], "gemmT", transB=1)
        return b.op("MatMul", [s, b.op("Transpose", [w], "weight_t", perm=[1, 0])], "matmulT")

    def _adjoint_pads(self):
        """The pads of the stride-1 Conv that is this Conv's adjoint, or None where there is none (strides,
        unknown kernel, or more padding than the kernel spans: the adjoint would need negative pads)."""
        a, shape = self.attrs, self.w_shape
        if not shape or any(v is None for v in shape) or any(st != 1 for st in a["strides"]) \
                or any(a["output_padding"]):
            return None
        n = len(shape) - 2
        span = [(shape[2 + i] - 1) * a["dilations"][i] for i in range(n)]
        pads = [span[i % n] - p for i, p in enumerate(a["pads"])]
        return pads if min(pads) >= 0 else None

    def flipped_kernel(self, b: "Builder", w: str) -> str:
        """w [M, C/g, k...] -> [C, M/g, k...] reversed along every spatial axis, per group: the kernel of the
        adjoint. Nodes on the weight (onnxruntime folds them into a constant when the session loads; the
        importer recomputes them from the shared parameter, so training sees the dependency)."""
        group, (m, cg), n = self.attrs["group"], self.w_shape[:2], len(self.w_shape) - 2
        kernel = list(self.w_shape[2:])
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

    def per_channel(self, b: "Builder", value: str) -> str:
        """A constant broadcastable over the input: one value, or one per input channel (axis 1)."""
        values = list(value) if isinstance(value, tuple) else [value]
        shape = [1, len(values)] + [1] * (len(self.x_shape) - 2) if len(values) > 1 else [1]
        return b.const(np.array(values, np.float32).reshape(shape))


@register("Conv", "ConvTranspose", kind="linear", category="conv")
@register("Gemm", "MatMul", kind="linear", category="dense")
def linear(ctx: "Context", unit: "Unit", rule: Rule, r_outs: list) -> list:
    """The rule's linear emitter, with the layer (its forward, transposed map and weights) as primitives."""
    layer = unit.layer
    if layer.op == "Conv" and layer.w_shape is None:
        layer.w_shape = ctx.shapes.get(layer.weight)
    return rule.emitter("linear", unit)(ctx, unit, rule, r_outs, layer)

"""The linear ops: Conv, ConvTranspose and the dense layers (Gemm, MatMul; an Einsum that is x @ W arrives
here as MatMul, fusion.py). Each has a record whose LinearOp says how a node of it reads as a LinearLayer:
its own attributes, its output channels, and where a bias or a BatchNormalization folds in. Its forward and
transposed (adjoint) passes are emitted by converters/linear.py, attached by op type."""

from collections.abc import Callable

from onnx import NodeProto

from lrpgraph.catalog.layer import LinearLayer, LinearOp
from lrpgraph.catalog.ops import PRODUCT_RULES, product_or_linear
from lrpgraph.catalog.records import OpRecord, record
from lrpgraph.errors import UnsupportedModelError
from lrpgraph.windows import conv_output_padding, explicit_pads


def read_conv(node: NodeProto, attrs: dict, shapes: dict, name: str) -> dict:
    """Conv: explicit pads (auto_pad resolved), strides, dilations, group, and the output padding its adjoint
    (a ConvTranspose) needs to give back the input's size; needs static spatial sizes."""
    x_shape = shapes.get(node.input[0])
    w_shape = shapes.get(node.input[1])
    if not x_shape or any(d is None for d in x_shape[2:]) or not w_shape:
        raise UnsupportedModelError(f"node '{name}' (Conv): the spatial sizes of its input '{node.input[0]}' are not "
                                    "known (computed in the graph from values lrpgraph cannot resolve); export the "
                                    "model with a fixed image size")
    spatial = x_shape[2:]
    kernel = attrs.get("kernel_shape", w_shape[2:])
    n = len(kernel)
    strides = attrs.get("strides", [1] * n)
    dilations = attrs.get("dilations", [1] * n)
    pads = explicit_pads(attrs.get("auto_pad", "NOTSET"), attrs.get("pads", [0] * 2 * n), spatial, kernel,
                         strides, dilations)
    return {"w_shape": w_shape,
            "attrs": {"strides": strides, "pads": pads, "dilations": dilations, "group": attrs.get("group", 1),
                      "output_padding": [conv_output_padding(spatial[i], kernel[i], strides[i], dilations[i],
                                                             pads[i], pads[i + n]) for i in range(n)]}}


def read_conv_transpose(node: NodeProto, attrs: dict, shapes: dict, name: str) -> dict:
    """ConvTranspose with explicit pads (no output_shape, no SAME padding: their pads depend on sizes)."""
    if attrs.get("output_shape") or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
        raise UnsupportedModelError(f"node '{name}' (ConvTranspose): output_shape and SAME padding are not "
                                    "supported; export it with explicit pads")
    w_shape = shapes.get(node.input[1])
    n = len(w_shape) - 2 if w_shape else len(attrs.get("kernel_shape", []))
    return {"attrs": {"strides": attrs.get("strides", [1] * n), "pads": attrs.get("pads", [0] * 2 * n),
                      "dilations": attrs.get("dilations", [1] * n), "group": attrs.get("group", 1),
                      "output_padding": attrs.get("output_padding", [0] * n)}}


def read_gemm(node: NodeProto, attrs: dict, shapes: dict, name: str) -> dict:
    """Gemm: alpha A B' + beta C with B' = B or B^T (transB); a transposed data operand A is not supported."""
    if attrs.get("transA", 0):
        raise UnsupportedModelError(f"node '{name}' (Gemm): the data operand is transposed (transA = 1); only "
                                    "layers x @ W with constant weights are supported")
    return {"transpose_weight": bool(attrs.get("transB", 0)), "alpha": float(attrs.get("alpha", 1.0)),
            "beta": float(attrs.get("beta", 1.0))}


def read_matmul(node: NodeProto, attrs: dict, shapes: dict, name: str) -> dict:
    """MatMul x @ W: no attributes."""
    return {}


def conv_bn_shape(layer: LinearLayer) -> list:
    """A Conv weight [M, C/group, k...] holds its output channels on axis 0."""
    return [-1] + [1] * (len(layer.x_shape) - 1)


def dense_bn_shape(layer: LinearLayer) -> list | None:
    """A dense weight [K, M] holds its output channels on axis 1; BatchNormalization normalises axis 1, the
    channels of a dense layer's output on [N, K] only."""
    return [1, -1] if len(layer.x_shape) == 2 else None


CONV = LinearOp(read_conv, lambda layer, w_shape: w_shape[0], 1, conv_bn_shape)
CONV_TRANSPOSE = LinearOp(read_conv_transpose, lambda layer, w_shape: w_shape[1] * layer.attrs["group"], 1,
                          lambda layer: None)  # its weight is [C, M/group, k...]: a BatchNormalization stays apart


def dense(read: Callable) -> LinearOp:
    """A dense layer's LinearOp: the weight [K, M], or [M, K] when transposed."""
    return LinearOp(read, lambda layer, w_shape: w_shape[0] if layer.transpose_weight else w_shape[-1], -1,
                    dense_bn_shape)


LINEAR: list[OpRecord] = [
    record("Conv", "linear", keys=("conv",), linear=CONV),
    record("ConvTranspose", "linear", keys=("conv",), linear=CONV_TRANSPOSE),
    record("Gemm", "linear", keys=("dense",), linear=dense(read_gemm)),
    record("MatMul", "linear", kinds=("product",), rules={"product": PRODUCT_RULES}, classify=product_or_linear,
           keys=("dense",), linear=dense(read_matmul), recompute=True),
]

"""Resize (Upsample before opset 10 is upgraded to it), a linear map of its input applied axis by axis:
y = A_h x A_w^T. Relevance and gradients go back through its transpose, A_h^T r A_w (MatMul per axis), as
zennit's gradient carries them through F.interpolate. In 'nearest' mode every output value is a copy of one
input value, so A is a 0/1 matrix (relevance moves back as the values moved, summed over the copies); which
input index each output index copies depends on the coordinate transformation and rounding attributes and
is computed by running the node itself on an index ramp with onnx's reference evaluator. In 'linear' (and
'cubic') mode A holds the interpolation weights of every coordinate_transformation_mode (half_pixel,
pytorch_half_pixel, align_corners, asymmetric, ...), read the same way: the node run on one unit vector per
input index (they go as the batch, which Resize keeps).

The composites move relevance through the transpose (zennit's plain F.interpolate). `--rule Resize=epsilon:EPS`
takes the epsilon rule of the linear map instead: R_x = x * A_h^T (R_y / stab(y)) A_w, each input gets its share
of the output values it contributes to (in the gradient message form g_x = A_h^T (g_y y / stab(y)) A_w)."""

from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from lrpgraph.catalog import Context
from lrpgraph.converters.registry import converts
from lrpgraph.errors import UnsupportedModelError
from lrpgraph.rules import Rule
from lrpgraph.rules.base import MOVE, RULES

if TYPE_CHECKING:
    from lrpgraph.catalog import Unit


def _resize_graph(unit, inits_of, shape, batch=1):
    """A ReferenceEvaluator of the node alone on an input [batch, 1, *spatial]."""
    rank = len(shape)
    constants = []
    for i, what in ((1, "roi"), (2, "scales"), (3, "sizes")):
        if len(unit.inputs) > i and unit.inputs[i]:
            value = np.array(inits_of(unit.inputs[i], what))
            if what in ("scales", "sizes") and value.size == rank and not unit.attrs.get("axes"):
                value[:2] = 1  # batch and channels: kept (one channel; the batch, batch samples)
                value[0] = batch if what == "sizes" else 1
            constants.append(numpy_helper.from_array(value, what))
        else:
            constants.append(None)
    attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in unit.attrs.items()}
    if attrs.get("coordinate_transformation_mode") == "align_corners" and attrs.get("mode") != "nearest" \
            and constants[1] is not None and constants[2] is None and not attrs.get("axes"):
        # align_corners maps by the output length floor(length * scale), as onnxruntime does (onnx's reference
        # evaluator uses the unrounded product): given as sizes
        scales = numpy_helper.to_array(constants[1])
        sizes = [batch, 1] + [int(np.floor(d * s)) for d, s in zip(shape[2:], scales[2:])]
        constants[1:] = [None, numpy_helper.from_array(np.array(sizes, np.int64), "sizes")]
    names = ["x"] + [c.name if c is not None else "" for c in constants]
    node = helper.make_node("Resize", names, ["y"], **attrs)
    small = [batch, 1] + list(shape[2:])
    graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, small)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [c for c in constants if c is not None])
    return ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]))


def nearest_index_maps(unit: "Unit", inits_of: Callable, shape: list) -> list:
    """[map per spatial axis]: map[i] = the input index that output index i copies."""
    rank = len(shape)
    small = [1, 1] + list(shape[2:])
    evaluator = _resize_graph(unit, inits_of, shape)
    maps = []
    for axis in range(2, rank):
        ramp = np.arange(shape[axis], dtype=np.float32).reshape([-1 if a == axis else 1 for a in range(rank)])
        (y,) = evaluator.run(None, {"x": np.broadcast_to(ramp, small).astype(np.float32)})
        maps.append(np.moveaxis(y, axis, -1).reshape(-1, y.shape[axis])[0].astype(np.int64))
    return maps


def interpolation_matrices(unit: "Unit", inits_of: Callable, shape: list) -> list:
    """[A per spatial axis], A[out, in]: the weight of input index `in` in output index `out` (y = A x along the
    axis), read from the node run on the unit vectors of each axis."""
    rank, mats = len(shape), []
    for axis in range(2, rank):
        n = shape[axis]
        basis = np.zeros([n, 1] + list(shape[2:]), np.float32)
        index = [np.arange(n), 0] + [np.arange(n) if a == axis else slice(None) for a in range(2, rank)]
        basis[tuple(index)] = 1.0  # sample j: ones along the other axes, the unit vector e_j along this one
        (y,) = _resize_graph(unit, inits_of, shape, batch=n).run(None, {"x": basis})
        lines = np.moveaxis(y[:, 0], axis - 1, -1).reshape(n, -1, y.shape[axis])[:, 0]  # [in, out]
        mats.append(np.ascontiguousarray(lines.T, np.float32))
    return mats


def _constant(ctx, unit, name, what):
    """A constant input; sizes computed in the graph (from the batch, say) are the output's shape where known."""
    out = ctx.shapes.get(unit.outputs[0])
    if name not in ctx.inits and what == "sizes" and out and all(d is not None for d in out[1:]):
        return np.array([1] + list(out[1:]), np.int64)
    return ctx.value(name, unit, what)


@converts("Resize")
def resize(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    mode = unit.attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    shape = ctx.shape(unit.inputs[0], unit)
    if len(shape) not in (3, 4):
        raise UnsupportedModelError(f"node '{unit.name}' (Resize): only [N, C, W] and [N, C, H, W] inputs")
    if mode not in ("nearest", "linear", "cubic"):
        raise UnsupportedModelError(f"node '{unit.name}' (Resize): mode '{mode}' is not supported")
    b, r = ctx.b, r_outs[0]
    inits_of = lambda name, what: _constant(ctx, unit, name, what)  # noqa: E731
    if mode == "nearest":
        maps = nearest_index_maps(unit, inits_of, shape)
        mats = [np.eye(size, dtype=np.float32)[m] for size, m in zip(shape[2:], maps)]  # [out, in] per axis
    else:
        mats = interpolation_matrices(unit, inits_of, shape)
    def transpose(t):  # A_h^T t A_w
        t = b.op("MatMul", [t, b.const(mats[-1])], "move_w")  # [..., out_w] -> [..., in_w]
        if len(mats) == 2:
            t = b.op("MatMul", [b.const(mats[0].T.copy()), t], "move_h")  # [in_h, out_h] @ [N, C, out_h, W]
        return t

    if RULES[rule.name].emitters.get("structure") == MOVE:
        return [transpose(r)] + [None] * (len(unit.inputs) - 1)
    op = SimpleNamespace(x=unit.inputs[0], y=unit.outputs[0], transpose=transpose)
    return rule.emitter("structure", unit)(ctx, unit, rule, r_outs, op)

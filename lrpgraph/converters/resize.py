"""Resize in 'nearest' mode (Upsample before opset 10 is upgraded to it): every output value is a copy of
one input value, so relevance and gradients move back as the values moved, summed over the copies of each
input value. Which input index each output index copies (along each spatial axis) depends on the
coordinate transformation and rounding attributes; it is computed here by running the node itself on an
index ramp with onnx's reference evaluator, then applied as a 0/1 matrix per axis (MatMul)."""

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from lrpgraph.catalog import Context
from lrpgraph.converters.registry import converts
from lrpgraph.errors import UnsupportedModelError
from lrpgraph.rules import Rule

if TYPE_CHECKING:
    from lrpgraph.catalog import Unit


def nearest_index_maps(unit: "Unit", inits_of: Callable, shape: list) -> list:
    """[map per spatial axis]: map[i] = the input index that output index i copies."""
    rank = len(shape)
    constants = []
    for i, what in ((1, "roi"), (2, "scales"), (3, "sizes")):
        if len(unit.inputs) > i and unit.inputs[i]:
            value = np.array(inits_of(unit.inputs[i], what))
            if what in ("scales", "sizes") and value.size == rank and not unit.attrs.get("axes"):
                value[:2] = 1  # batch and channels: one sample, one channel
            constants.append(numpy_helper.from_array(value, what))
        else:
            constants.append(None)
    names = ["x"] + [c.name if c is not None else "" for c in constants]
    attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in unit.attrs.items()}
    node = helper.make_node("Resize", names, ["y"], **attrs)
    small = [1, 1] + list(shape[2:])
    graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, small)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [c for c in constants if c is not None])
    evaluator = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]))
    maps = []
    for axis in range(2, rank):
        ramp = np.arange(shape[axis], dtype=np.float32).reshape([-1 if a == axis else 1 for a in range(rank)])
        (y,) = evaluator.run(None, {"x": np.broadcast_to(ramp, small).astype(np.float32)})
        maps.append(np.moveaxis(y, axis, -1).reshape(-1, y.shape[axis])[0].astype(np.int64))
    return maps


@converts("Resize")
def resize(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    mode = unit.attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "nearest":
        raise UnsupportedModelError(f"node '{unit.name}' (Resize): mode '{mode}' is not supported (only nearest)")
    shape = ctx.shape(unit.inputs[0], unit)
    if len(shape) not in (3, 4):
        raise UnsupportedModelError(f"node '{unit.name}' (Resize): only [N, C, W] and [N, C, H, W] inputs")
    b, r = ctx.b, r_outs[0]
    maps = nearest_index_maps(unit, lambda name, what: ctx.value(name, unit, what), shape)
    one_hot = [np.eye(size, dtype=np.float32)[m] for size, m in zip(shape[2:], maps)]  # [out, in] per axis
    r = b.op("MatMul", [r, b.const(one_hot[-1])], "move_w")  # [..., out_w] -> [..., in_w]
    if len(one_hot) == 2:
        r = b.op("MatMul", [b.const(one_hot[0].T.copy()), r], "move_h")  # [in_h, out_h] @ [N, C, out_h, W]
    return [r] + [None] * (len(unit.inputs) - 1)

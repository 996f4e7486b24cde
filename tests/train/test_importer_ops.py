"""Single ONNX ops whose torch form in the importer (lrpgraph.train.onnx_ops) differs from ONNX's: asymmetric
and ceil-mode pooling, ConvTranspose with output padding, negative-step Slice, Split/Pad from inputs, ArgMax,
and the integer and sampling ops of the methods' in-graph noise, each against onnxruntime."""

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from test_importer import ort_outputs

from lrpgraph.train.importer import import_onnx


# ---- single ops whose torch form differs from ONNX's, against onnxruntime ---------------------------
def _ints(name, values):
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


OP_CASES = {
    "maxpool_indices_asymmetric": (helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[3, 3], strides=[2, 2],
                                                    pads=[0, 1, 2, 1]), [], [3, 2, 7, 6]),
    "maxpool_indices_ceil": (helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2], strides=[2, 2],
                                              ceil_mode=1), [], [2, 3, 5, 5]),
    "avgpool_pads_exclude": (helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                              pads=[1, 0, 1, 2]), [], [2, 2, 7, 6]),
    "avgpool_pads_include": (helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                              pads=[1, 1, 1, 1], count_include_pad=1), [], [2, 2, 7, 7]),
    "convT_asymmetric": (helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], pads=[1, 0, 0, 1],
                                          output_padding=[1, 1], group=2), ["w"], [2, 4, 5, 5]),
    "slice_negative_step": (helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"]), ["s", "e", "a", "st"],
                            [2, 3, 6, 6]),
    "split_sizes_pad": (helper.make_node("Split", ["x", "sz"], ["y", "z"], axis=1), ["sz"], [2, 5, 3, 3]),
    "pad_axes": (helper.make_node("Pad", ["x", "p"], ["y"]), ["p"], [2, 3, 4, 4]),
    "argmax": (helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0), [], [4, 7]),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_single_ops_match_onnxruntime(case):
    node, extra, shape = OP_CASES[case]
    rng = np.random.default_rng(0)
    inits = {"w": helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], rng.standard_normal(108).tolist()),
             "s": _ints("s", [-1, 1]), "e": _ints("e", [-100, 5]), "a": _ints("a", [2, 3]),
             "st": _ints("st", [-2, 2]), "sz": _ints("sz", [2, 3]), "p": _ints("p", [0, 1, 2, 0, 0, 3, 1, 2])}
    outputs = [helper.make_tensor_value_info(o, TensorProto.INT64 if o == "i" or case.startswith("argmax") else
                                             TensorProto.FLOAT, None) for o in node.output]
    graph = helper.make_graph([node], case, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], outputs,
                              [inits[k] for k in extra])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal(shape).astype(np.float32)
    expected = ort_outputs(model, {"x": x})
    with torch.no_grad():
        got = import_onnx(model).run({"x": x})
    for name, value in expected.items():
        assert got[name].shape == value.shape, f"{case} {name}"
        np.testing.assert_allclose(got[name].numpy(), value, rtol=1e-5, atol=1e-5, err_msg=f"{case} {name}")


def test_integer_and_sampling_ops_match_onnxruntime():
    """Ops of the gradient-family methods' in-graph noise: Shape, ReduceProd, Range, Mod, BitwiseXor, Tile, Cos."""
    n = helper.make_node
    nodes = [n("Shape", ["x"], ["shape"]), n("ReduceProd", ["shape"], ["count"], keepdims=0),
             n("Range", ["zero", "count", "one"], ["idx"]), n("Mod", ["idx", "three"], ["m"]),
             n("BitwiseXor", ["m", "idx"], ["h"]), n("Mod", ["h", "minus_five"], ["hm"]),
             n("Cast", ["hm"], ["hf"], to=TensorProto.FLOAT), n("Reshape", ["hf", "shape"], ["hr"]),
             n("Tile", ["x", "reps"], ["t"]), n("Cos", ["t"], ["c"]), n("Add", ["c", "hr2"], ["y"]),
             n("Tile", ["hr", "reps"], ["hr2"])]
    scalars = [helper.make_tensor(k, TensorProto.INT64, [], [v]) for k, v in
               {"zero": 0, "one": 1, "three": 3, "minus_five": -5}.items()]
    graph = helper.make_graph(nodes, "ints", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info(o, t, None) for o, t in
                               (("y", TensorProto.FLOAT), ("hm", TensorProto.INT64))],
                              scalars + [_ints("reps", [2, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    expected = ort_outputs(model, {"x": x})
    got = import_onnx(model).run({"x": x})
    np.testing.assert_array_equal(got["hm"].numpy(), expected["hm"])
    np.testing.assert_allclose(got["y"].numpy(), expected["y"], rtol=1e-6, atol=1e-6)

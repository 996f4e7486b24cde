"""lrpgraph/windows.py, the window arithmetic shared by the converters and the importer, against
onnxruntime (SAME padding as ONNX defines it) and torch (pooling output sizes with ceil mode)."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from lrpgraph.train.importer import import_onnx
from lrpgraph.windows import conv_output_padding, conv_output_size, explicit_pads, pool_output_size

CASES = [  # size, kernel, stride, dilation
    (7, 3, 2, 1), (8, 3, 2, 1), (6, 2, 3, 1), (9, 3, 1, 2), (5, 4, 2, 1), (10, 5, 3, 2)]


def ort_run(node, x, inits=(), reference=False):
    """(model, output) of one node in onnxruntime, or in onnx's reference evaluator (onnxruntime refuses
    SAME padding with dilations)."""
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if reference:
        return model, ReferenceEvaluator(model).run(None, {"x": x})[0]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return model, session.run(None, {"x": x})[0]


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("size, kernel, stride, dilation", CASES)
def test_explicit_pads_reproduce_auto_pad(auto_pad, size, kernel, stride, dilation):
    """A Conv with auto_pad in onnxruntime (onnx's reference evaluator where dilated) == the same Conv with
    windows.explicit_pads's pads, and the
    importer (which resolves auto_pad with the same function) matches both."""
    rng = np.random.default_rng(size * 100 + kernel)
    x = rng.standard_normal([1, 2, size, size + 1]).astype(np.float32)
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 2, kernel, kernel], rng.standard_normal(6 * kernel ** 2))
    conv = dict(kernel_shape=[kernel, kernel], strides=[stride, stride], dilations=[dilation, dilation])
    model, expected = ort_run(helper.make_node("Conv", ["x", "w"], ["y"], auto_pad=auto_pad, **conv), x, [w],
                              reference=dilation > 1 and auto_pad != "VALID")
    pads = explicit_pads(auto_pad.encode(), None, [size, size + 1], [kernel] * 2, [stride] * 2, [dilation] * 2)
    _, explicit = ort_run(helper.make_node("Conv", ["x", "w"], ["y"], pads=pads, **conv), x, [w])
    np.testing.assert_allclose(explicit, expected, rtol=1e-6, atol=1e-6)
    if auto_pad != "VALID":
        assert expected.shape[2:] == (-(-size // stride), -(-(size + 1) // stride))
    with torch.no_grad():
        got = import_onnx(model).run({"x": x})["y"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_explicit_pads_keeps_given_pads():
    assert explicit_pads("NOTSET", [1, 0, 2, 1], [5, 5], [3, 3], [1, 1], [1, 1]) == [1, 0, 2, 1]
    assert explicit_pads(b"", None, [5, 5], [3, 3], [1, 1], [1, 1]) == [0, 0, 0, 0]


@pytest.mark.parametrize("size, kernel, stride, dilation", CASES)
@pytest.mark.parametrize("begin, end", [(0, 0), (1, 1), (1, 0)])
def test_conv_output_size_and_padding_against_torch(size, kernel, stride, dilation, begin, end):
    """Output length of F.conv1d, and a conv_transpose1d with that output_padding gives the input length back."""
    x = torch.zeros(1, 1, size + begin + end)
    w = torch.zeros(1, 1, kernel)
    out = F.conv1d(x, w, stride=stride, dilation=dilation).shape[-1]
    assert conv_output_size(size, kernel, stride, dilation, begin, end) == out
    extra = conv_output_padding(size, kernel, stride, dilation, begin, end)
    back = F.conv_transpose1d(torch.zeros(1, 1, out), w, stride=stride, padding=0, output_padding=extra,
                              dilation=dilation).shape[-1]
    assert back - begin - end == size


@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("size, kernel, stride, pad", [(7, 3, 2, 0), (8, 3, 2, 1), (6, 2, 2, 0), (5, 3, 3, 1),
                                                       (9, 2, 2, 1), (10, 3, 2, 1)])
def test_pool_output_size_against_torch(ceil, size, kernel, stride, pad):
    out = F.max_pool1d(torch.zeros(1, 1, size), kernel, stride, pad, ceil_mode=ceil).shape[-1]
    assert pool_output_size(size, kernel, stride, pad, pad, ceil) == out

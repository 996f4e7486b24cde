"""The explained output (issue 10): a Softmax/LogSoftmax at the output at opset 11 (softmax over the axes
from `axis` on, flattened; onnx's upgrade writes it as Reshape(Softmax(Flatten(x)), Shape(x))) and 13
(one axis), on logits [N, C], [N, C, 1] and [N, C, 1, 1] (a Conv as the classifier, no Flatten). The
logits before the head are explained as [N, C]; the converted model's first output is [N, C]; relevance
keeps the image shape. Reference: numpy in float64, the epsilon rule of one dense layer written out."""

import numpy as np
import pytest
from onnx import TensorProto, helper
from ops_helpers import STAB, Net, assert_l1, inputs, run


def classifier(opset, final, rank):
    """x [3, 6, 6] -> Conv with a 6x6 kernel (5 classes) -> [N, 5, 1, 1], squeezed to rank 3 or flattened to 2."""
    net = Net([3, 6, 6], seed=70, opset=opset)
    y, _, w, b = net.conv("x", 3, 5, k=6)
    if rank == 3:
        y = net.op("Squeeze", [y], axes=[3]) if opset < 13 else net.op("Squeeze", [y, net.ints([3])])
    elif rank == 2:
        y = net.op("Flatten", [y], axis=1)
    if final:
        y = net.op(final, [y], axis=1)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])
    out = helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", 5] + [1] * (rank - 2))
    model = helper.make_model(helper.make_graph(net.nodes, "head", [x], [out], net.inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model, net.arrays[w].astype(np.float64), net.arrays[b].astype(np.float64)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("final", ["Softmax", "LogSoftmax", None])
@pytest.mark.parametrize("rank", [2, 3, 4])
def test_output_head_and_logit_shape(opset, final, rank):
    model, W, bias = classifier(opset, final, rank)
    x = inputs([3, 6, 6], seed=71)
    out, relevance = run(model, x)
    x64 = x.astype(np.float64)
    z = np.einsum("nchw,kchw->nk", x64, W) + bias
    expected = {"Softmax": np.exp(z) / np.exp(z).sum(1, keepdims=True), None: z}.get(final)
    expected = z - np.log(np.exp(z).sum(1, keepdims=True)) if final == "LogSoftmax" else expected
    assert out.shape == (2, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    top = z.argmax(1)
    zc = z[np.arange(2), top]
    stabilised = zc + STAB * np.where(zc >= 0, 1.0, -1.0)
    ref = x64 * W[top] * (zc / stabilised)[:, None, None, None]  # epsilon rule, seed y_c at the top class
    assert_l1(relevance, ref)

"""RMSNormalization (opset 23) in a tiny token model built node by node: attn-lrp holds rms constant (LXT's
RMSNorm patch, R = x * gradient with rms detached, here in float64 torch) and the gradient is the full one;
the torch importer runs the op as onnxruntime does."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import lrpgraph
from lrpgraph.train.importer import import_onnx

EPS = 1e-6


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    w1, scale = rng.standard_normal((16, 16)) / 4, 1 + 0.1 * rng.standard_normal(16)
    w2 = rng.standard_normal((16, 5)) / 4
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in ((w1, "w1"), (scale, "scale"), (w2, "w2"))]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("RMSNormalization", ["h", "scale"], ["n"], epsilon=EPS),
             helper.make_node("ReduceMean", ["n", "axis1"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w2"], ["logits"])]
    graph = helper.make_graph(nodes, "rms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    x = rng.standard_normal((3, 8, 16)).astype(np.float32)
    return model, x, [torch.tensor(a) for a in (w1, scale, w2)]


def torch_heatmap(x, weights, detach):
    w1, scale, w2 = weights
    x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    h = x @ w1
    rms = torch.sqrt(h.pow(2).mean(-1, keepdim=True) + EPS)
    y = ((h / (rms.detach() if detach else rms)) * scale).mean(1) @ w2
    (g,) = torch.autograd.grad(y, x, torch.nn.functional.one_hot(y.argmax(1), 5).double())
    return (x * g if detach else g).detach().numpy()


@pytest.mark.parametrize("spec, detach", [(dict(composite="attn-lrp"), True), (dict(method="gradient"), False)])
def test_rms_norm(case, spec, detach):
    model, x, weights = case
    converted = lrpgraph.convert(model, **spec)
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = session.run(["relevance"], {"x": x})[0]
    ref = torch_heatmap(x, weights, detach)
    assert np.abs(ours - ref).sum() / np.abs(ref).sum() <= 1e-5
    with torch.no_grad():
        again = import_onnx(converted).run({"x": x})["relevance"].numpy()
    assert np.abs(again - ours).sum() / np.abs(ours).sum() <= 1e-5

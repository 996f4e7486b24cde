"""walker.Walker on a small residual CNN (x -> Conv -> h; h + Relu(h) -> GlobalAveragePool -> Flatten -> Gemm):
with the gradient rules it emits the gradient of seed . logits, equal to torch autograd's, and a subclass
reaches the documented override points: each unit once from the logits back, the two parts arriving at the
Conv's output (read by the Relu and by the Add) combined there."""

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from lrpgraph import graph
from lrpgraph.canonicalize import canonicalize
from lrpgraph.methods.gradient import gradient_plan
from lrpgraph.walker import Walker


def residual_cnn():
    rng = np.random.default_rng(0)
    w, fc = rng.normal(size=(4, 2, 3, 3)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Add", ["h", "r"], ["s"], name="add"),
             helper.make_node("GlobalAveragePool", ["s"], ["pooled"], name="pool"),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc"], ["logits"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")])
    return graph.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])), w, fc


class Recording(Walker):
    def __init__(self, b):
        super().__init__(b)
        self.visited, self.combined = [], []

    def run_unit(self, unit, rule, r_outs):
        self.visited.append(unit.name)
        return super().run_unit(unit, rule, r_outs)

    def combine(self, parts):
        self.combined.append((self.b.scope, len(parts)))
        return super().combine(parts)


def test_walker_emits_the_gradient_and_reaches_its_override_points():
    model, w, fc = residual_cnn()
    canon = canonicalize(model)
    b = graph.Builder(model)
    walker = Recording(b)
    grad = walker(canon, gradient_plan(canon.units), "seed")
    assert walker.visited == [u.name for u in reversed(canon.units)]
    assert ("conv", 2) in walker.combined  # h feeds the Relu and the Add: two parts meet at the Conv
    model.graph.node.extend(b.nodes)
    model.graph.initializer.extend(b.initializers)
    model.graph.input.append(helper.make_tensor_value_info("seed", TensorProto.FLOAT, ["N", 3]))
    model.graph.output.append(helper.make_tensor_value_info(grad, TensorProto.FLOAT, None))
    rng = np.random.default_rng(1)
    x, seed = rng.normal(size=(2, 2, 6, 6)).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    heat = session.run([grad], {"x": x, "seed": seed})[0]
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    h = torch.nn.functional.conv2d(xt, torch.from_numpy(w.astype(np.float64)), padding=1)
    logits = (h + h.relu()).mean(dim=(2, 3)) @ torch.from_numpy(fc.astype(np.float64)).T
    (expected,) = torch.autograd.grad((logits * torch.from_numpy(seed.astype(np.float64))).sum(), xt)
    np.testing.assert_allclose(heat, expected.numpy(), rtol=1e-4, atol=1e-5)

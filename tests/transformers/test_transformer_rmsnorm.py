"""RMSNormalization (opset 23) in a tiny token model built node by node: attn-lrp holds rms constant (LXT's
RMSNorm patch, R = x * gradient with rms detached, here in float64 torch) and the gradient is the full one;
the torch importer runs the op as onnxruntime does. Below: norms over other axes than the last (channel norms
on [N, C, H, W], written out or RMSNormalization(axis=1)) against torch autograd in float64."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import lrpgraph
from lrpgraph.train.importer import import_onnx
from transformer_models import export_either

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


# Norms over other axes than the last: a channel norm on [N, C, H, W] (axis 1, as ConvNeXt's original
# channels_first LayerNorm writes it, and an RMSNorm the same way), written out over (1,) or (2, 3), and the
# opset-23 RMSNormalization with axis=1, which normalises axes 1 to the last (C, H, W) as ONNX defines it.

class ChannelNorm(torch.nn.Module):
    """Conv, a norm written out over `dims` (rms or layer), times a per-channel scale (+ shift), ReLU, mean over
    the pixels, Linear. identity: the norm's sigma held constant (LXT's LayerNorm / RMSNorm patches)."""

    def __init__(self, kind, dims):
        super().__init__()
        gen = torch.Generator().manual_seed(2)
        self.kind, self.dims, self.identity = kind, dims, False
        self.conv, self.head = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Linear(8, 5)
        self.w = torch.nn.Parameter(1 + 0.1 * torch.randn(8, generator=gen))
        self.b = torch.nn.Parameter(0.1 * torch.randn(8, generator=gen))

    def forward(self, x):
        h = self.conv(x)
        if self.kind == "layer":
            h = h - h.mean(self.dims, keepdim=True)
        sigma = torch.sqrt(h.pow(2).mean(self.dims, keepdim=True) + EPS)
        n = h / (sigma.detach() if self.identity else sigma) * self.w[:, None, None]
        if self.kind == "layer":
            n = n + self.b[:, None, None]
        return self.head(torch.relu(n).mean((2, 3)))


def heatmap(model, x, identity):
    """attn-lrp (identity: x * gradient with sigma constant) or the gradient, in float64."""
    import copy

    double = copy.deepcopy(model).double()
    double.identity = identity
    x = x.double().requires_grad_(True)
    y = double(x)
    (g,) = torch.autograd.grad(y, x, torch.nn.functional.one_hot(y.argmax(1), 5).double())
    return (x * g if identity else g).detach().numpy()


def l1(a, b):
    return float(np.abs(a - b).sum() / np.abs(b).sum())


@pytest.mark.parametrize("dynamo", [True, False])
@pytest.mark.parametrize("kind, dims", [("rms", (1,)), ("layer", (1,)), ("rms", (2, 3)), ("layer", (2, 3))])
def test_written_out_norm_over_other_axes(kind, dims, dynamo):
    """Fused as one norm over exactly those axes: attn-lrp and the gradient equal torch in float64, and the
    importer runs the converted model as onnxruntime does. (Before, a LayerNorm over axis 1 of [N, C, H, W]
    was explained as one over C, H, W: gradient L1 0.35 off; an RMSNorm over axis 1 was refused.)"""
    model = ChannelNorm(kind, dims).eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    exported = export_either(model, x, dynamo)
    assert "Sqrt" in {n.op_type for n in exported.graph.node}  # written out, not a fused op
    for spec, identity in ((dict(composite="attn-lrp"), True), (dict(method="gradient"), False)):
        converted = lrpgraph.convert(exported, **spec)
        session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
        ours = session.run(["relevance"], {session.get_inputs()[0].name: x.numpy()})[0]
        assert l1(ours, heatmap(model, x, identity)) <= 1e-5, spec
        with torch.no_grad():
            again = import_onnx(converted).run({session.get_inputs()[0].name: x.numpy()})["relevance"].numpy()
        assert l1(again, ours) <= 1e-5


@pytest.mark.parametrize("spec, identity", [(dict(composite="attn-lrp"), True), (dict(method="gradient"), False)])
def test_rms_normalization_axis_1(spec, identity):
    """RMSNormalization(axis=1) on a Conv's [N, C, H, W] output, scale [C, 1, 1]: rms over C, H, W per image."""
    model = ChannelNorm("rms", (1, 2, 3)).eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    p = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    inits = [numpy_helper.from_array(v, k) for k, v in (("cw", p["conv.weight"]), ("cb", p["conv.bias"]),
                                                         ("scale", p["w"].reshape(8, 1, 1)), ("hw", p["head.weight"]),
                                                         ("hb", p["head.bias"]))]
    inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "pixels"))
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("RMSNormalization", ["h", "scale"], ["n"], axis=1, epsilon=EPS),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("ReduceMean", ["r", "pixels"], ["pooled"], keepdims=0),
             helper.make_node("Gemm", ["pooled", "hw", "hb"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "rms1", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    converted = lrpgraph.convert(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), **spec)
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, ours = session.run(["logits", "relevance"], {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(x).numpy(), rtol=1e-4, atol=1e-5)
        again = import_onnx(converted).run({"x": x.numpy()})["relevance"].numpy()
    assert l1(ours, heatmap(model, x, identity)) <= 1e-5
    assert l1(again, ours) <= 1e-5


def test_mean_without_kept_axes_is_no_norm():
    """x / sqrt(mean(x^2, -1, keepdims=0) + eps) on [N, 4, 4] broadcasts the row means along the other axis: no
    RMSNorm, so it is not explained as one (its Pow and Sqrt are refused, naming them)."""
    from lrpgraph.errors import UnsupportedModelError

    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for v, n in ((2.0, "two"), (EPS, "eps"))]
    inits += [numpy_helper.from_array(np.array([-1], np.int64), "last"),
              numpy_helper.from_array(np.ones((16, 3), np.float32), "w")]
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"]),
             helper.make_node("ReduceMean", ["sq", "last"], ["ms"], keepdims=0),
             helper.make_node("Add", ["ms", "eps"], ["mse"]),
             helper.make_node("Sqrt", ["mse"], ["rms"]),
             helper.make_node("Div", ["x", "rms"], ["n"]),
             helper.make_node("Flatten", ["n"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "not_rms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    with pytest.raises(UnsupportedModelError, match="Pow.*Sqrt"):
        lrpgraph.convert(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), method="gradient")

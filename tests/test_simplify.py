"""The relevance path's denominators (lrpgraph/simplify.py): (a * g) / stab(z) with a = relu(z) written as
g * a / (a + eps), (z * g) / stab(z) as g * |z| / (|z| + eps), and a MaxPool route divided on the pooled
tensor. Checked against zennit in float64 on nets whose pre-activations are exactly zero on part of the
image (a zero region and zero biases) and negative elsewhere, with tied maxima, and for the ops removed."""

import numpy as np
import pytest
import torch

from zennit.layer import Sum
from zennit_ref import convert_bytes, export, l1, run_onnx, zennit_composite, zennit_relevance

BOUND = 1e-5  # float32 against a float64 reference


def small_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))
    return net.eval()


def image():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) - 0.3
    x[:, :, :, :12] = 0.0  # conv1 (no bias) is exactly 0 there
    return x


def ops(model, op):
    return sum(n.op_type == op for n in model.graph.node)


def assert_matches_zennit(model, reference, x, label):
    """The converted model's heatmap against zennit's epsilon 1e-3 on the torch reference, in float64."""
    _, relevance = run_onnx(model, x.numpy())
    _, ref = zennit_relevance(reference, x, zennit_composite("epsilon", 1e-3, 1e-3), dtype=torch.float64)
    error = l1(relevance, ref)
    print(f"{label}, epsilon 1e-3: L1 {error:.1e} vs zennit float64")
    assert error < BOUND
    return relevance


@pytest.fixture(scope="module")
def net_bytes():
    return export(small_net(), image())


def test_relu_denominators_match_zennit(net_bytes):
    x = image()
    model = convert_bytes(net_bytes, composite="epsilon", epsilon=1e-3, stabilizer=1e-3)
    # both Conv layers feed a ReLU, the Linear's relevance is logit * seed (the |z| form): only the pooling's
    # stabilizer keeps its sign test
    assert ops(model, "Where") == 1 and ops(model, "GreaterOrEqual") == 1 and ops(model, "Abs") == 1
    relevance = assert_matches_zennit(model, small_net(), x, "a / (a + eps) denominators")
    assert np.isfinite(relevance).all() and not relevance[:, :, :, :10].any()  # zero inputs, zero relevance


def test_zero_epsilon_keeps_the_sign_test(net_bytes):
    """With eps = 0, a / (a + 0) would be 0/0 where z <= 0: the rewrite is left out."""
    model = convert_bytes(net_bytes, composite="epsilon", epsilon=0.0, stabilizer=1e-6)
    assert ops(model, "Where") >= 3


class Residual(torch.nn.Module):
    """relu(conv0(x)) read by conv1 and by the residual sum (zennit's Sum module for the reference)."""

    def __init__(self, zennit_sum=False):
        super().__init__()
        torch.manual_seed(2)
        self.conv0, self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.relu, self.sum = torch.nn.ReLU(), Sum() if zennit_sum else None
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))

    def forward(self, x):
        a = self.relu(self.conv0(x))
        y = self.sum(torch.stack([a, self.conv1(a)], -1)) if self.sum is not None else a + self.conv1(a)
        return self.head(y)


def test_several_relevance_products_are_summed():
    """A ReLU output read by two layers (a residual): its relevance is a sum of products a * g_i."""
    x = image()
    model = convert_bytes(export(Residual().eval(), x), composite="epsilon", epsilon=1e-3, stabilizer=1e-3)
    assert any(n.op_type == "Sum" and n.name.endswith("/signal") for n in model.graph.node)
    assert_matches_zennit(model, Residual(zennit_sum=True).eval(), x, "residual")


class Pooled(torch.nn.Module):
    """conv0 -> relu -> MaxPool(3, stride 2, padding 1: overlapping windows) read by conv1 and a residual sum,
    then conv2 whose output (no ReLU) is read by a second residual sum: the routed and the |z| forms."""

    def __init__(self, zennit_sum=False):
        super().__init__()
        torch.manual_seed(3)
        self.conv0 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv1, self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.relus = torch.nn.ModuleList(torch.nn.ReLU() for _ in range(4))  # one module per use (zennit's hooks)
        self.pool = torch.nn.MaxPool2d(3, 2, 1)
        self.sums = torch.nn.ModuleList([Sum(), Sum()]) if zennit_sum else None
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))

    def add(self, k, a, b):
        return self.sums[k](torch.stack([a, b], -1)) if self.sums is not None else a + b

    def forward(self, x):
        relu = self.relus
        m = self.pool(relu[0](self.conv0(x)))
        h = relu[2](self.add(0, m, relu[1](self.conv1(m))))
        return self.head(relu[3](self.add(1, h, self.conv2(h))))


def tied_image():
    x = image()
    x[:, :, 8:24, 16:] = 0.5  # a constant patch: equal conv0 outputs, so tied maxima in the pool's windows
    return x


def test_maxpool_route_and_abs_forms_match_zennit():
    x = tied_image()
    model = convert_bytes(export(Pooled().eval(), x), composite="epsilon", epsilon=1e-3, stabilizer=1e-3)
    # conv0 (through the pool), conv1 (ReLU), both sums (ReLU), conv2 and the Linear (|z|): only the
    # average pool keeps its sign test; the routed division acts on the pooled tensor
    assert ops(model, "Where") == 1 and ops(model, "Abs") == 2
    assert any(o.endswith("/routed") for n in model.graph.node for o in n.output)
    relevance = assert_matches_zennit(model, Pooled(zennit_sum=True).eval(), x, "max pool route and |z| forms")
    assert np.isfinite(relevance).all()


def test_maxpool_route_without_relu_keeps_the_division():
    """A MaxPool of a signed tensor (no ReLU before it): m can be negative, so the route is not rewritten."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.MaxPool2d(3, 2, 1),
                              torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    x = tied_image()
    model = convert_bytes(export(net, x), composite="epsilon", epsilon=1e-3, stabilizer=1e-3)
    assert not any(o.endswith("/routed") for n in model.graph.node for o in n.output)
    assert_matches_zennit(model, net, x, "MaxPool of a signed tensor")


def test_relu6_denominators_match_zennit():
    """Clip(z, 0, 6) (ReLU6, MobileNet's): g * a / (max(z, 0) + eps), with pre-activations above 6, exactly 0
    and negative in the image."""
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.ReLU6(),
                              torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.ReLU6(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    x = image() * 40.0  # conv0 above 6 on part of the image, exactly 0 on the zero region
    with torch.no_grad():
        z = net[0](x)
    assert (z > 6).any() and (z == 0).any() and (z < 0).any()
    model = convert_bytes(export(net, x), composite="epsilon", epsilon=1e-3, stabilizer=1e-3)
    assert ops(model, "Where") == 1  # the average pool's
    assert_matches_zennit(model, net, x, "ReLU6")


def test_relu6_denominators_for_webgpu_use_relu():
    """--webgpu: the ReLU6 form reads Relu(z), which onnxruntime-web's WebGPU backend runs (it has no Min
    kernel; Max was not measured there), and the heatmap is zennit's."""
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU6(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    x = image() * 40.0
    web = convert_bytes(export(net, x), composite="epsilon", epsilon=1e-3, stabilizer=1e-3, webgpu=True)
    lrp = [n for n in web.graph.node if n.name.startswith("lrp/")]
    assert not {n.op_type for n in lrp} & {"Min", "Max", "Sum"} and any(n.name.endswith("/pos") for n in lrp)
    assert_matches_zennit(web, net, x, "ReLU6 for WebGPU")

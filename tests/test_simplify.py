"""The relevance path's ReLU denominators (lrpgraph/simplify.py): (a * g) / stab(z) with a = relu(z) written
as g * a / (a + eps). Checked against zennit in float64 on a net whose pre-activations are exactly zero
on part of the image (a zero region and zero biases) and negative elsewhere, and for the ops it removes."""

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


@pytest.fixture(scope="module")
def net_bytes():
    return export(small_net(), image())


def test_relu_denominators_match_zennit(net_bytes):
    x = image()
    model = convert_bytes(net_bytes, composite="epsilon", epsilon=1e-3, stabilizer=1e-3)
    # both Conv layers feed a ReLU: only the pooling's and the Linear's stabilisers keep their sign test
    assert ops(model, "Where") == 2 and ops(model, "GreaterOrEqual") == 2
    _, relevance = run_onnx(model, x.numpy())
    _, ref = zennit_relevance(small_net(), x, zennit_composite("epsilon", 1e-3, 1e-3), dtype=torch.float64)
    error = l1(relevance, ref)
    print(f"epsilon 1e-3 with a / (a + eps) denominators: L1 {error:.1e} vs zennit float64")
    assert error < BOUND
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
    _, relevance = run_onnx(model, x.numpy())
    reference = Residual(zennit_sum=True).eval()
    _, ref = zennit_relevance(reference, x, zennit_composite("epsilon", 1e-3, 1e-3), dtype=torch.float64)
    error = l1(relevance, ref)
    print(f"residual, epsilon 1e-3: L1 {error:.1e} vs zennit float64")
    assert error < BOUND

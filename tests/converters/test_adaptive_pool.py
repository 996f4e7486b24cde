"""Adaptive average pooling whose output size does not divide its input (torchvision's AlexNet and VGG below
224 px): the dynamo exporter writes it as GatherND window selections with constant indices, a Where mask,
scalar Gathers, Adds and a Div. Relevance moves back through the selections, and overlapping windows add
up. Reference (float64 torch, ops_helpers): the epsilon rule of the Linear head, the norm rule of
F.adaptive_avg_pool2d (eps_rule with the stabilizer), ReLU passes, the Conv with epsilon 0.01; and the plain
gradient by autograd."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ops_helpers import assert_l1, eps_rule

import lrpgraph
from zennit_ref import export, run_onnx


@pytest.mark.parametrize("side, out", [(5, 3), (4, 3), (2, 3)])
def test_adaptive_average_pool_not_dividing(side, out):
    torch.manual_seed(95)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d((out, out)), torch.nn.Flatten(),
                                torch.nn.Linear(4 * out * out, 5)).eval()
    x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(96))
    onnx_bytes = export(model, x)
    model64 = model.double()
    x64 = x.double()
    conv, head = model64[0], model64[4]
    a = torch.relu(conv(x64)).detach()
    pool = lambda t: F.adaptive_avg_pool2d(t, (out, out))  # noqa: E731
    z = head(pool(a).flatten(1))
    top = z.argmax(1)
    seed = torch.zeros_like(z)
    seed[torch.arange(2), top] = z[torch.arange(2), top]
    r_pool = eps_rule(lambda t: head(t.flatten(1)), pool(a), seed.detach()).reshape(2, 4, out, out)
    reference = eps_rule(conv, x64, eps_rule(pool, a, r_pool), 0.01).numpy()

    converted = lrpgraph.convert(onnx_bytes, composite="epsilon", rules=["Conv=epsilon:0.01"])
    y, relevance = run_onnx(converted, x.numpy())
    assert np.array_equal(y.argmax(1), top.numpy())
    assert_l1(relevance, reference, 1e-4)

    x_grad = x64.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model64(x_grad)[torch.arange(2), top].sum(), x_grad)
    _, grad = run_onnx(lrpgraph.convert(onnx_bytes, method="gradient"), x.numpy())
    assert_l1(grad, gradient.numpy(), 1e-5)


@pytest.mark.parametrize("name", ["alexnet", pytest.param("vgg11", marks=pytest.mark.slow)])
def test_torchvision_below_224_matches_zennit(name):
    """AlexNet and VGG at 64 px (adaptive pooling 1x1 -> 6x6 and 2x2 -> 7x7: overlapping windows), dynamo
    export, epsilon-plus against zennit in float64 (test_parity_zennit.check_parity, bound 1e-4)."""
    import torchvision
    from test_parity_zennit import check_parity

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    check_parity(model, [], x, export(model, x), "epsilon-plus", 1e-6, f"{name} 64 px", index=False)

"""ConvTranspose on the explained path as a linear layer (issue 10): its forward with modified weights and
its transpose (the Conv with the same weight and windows) carry the rules of docs/rules.md (rules for linear layers).
x -> Conv -> Relu -> ConvTranspose (stride 2, padding, output_padding, groups) -> Relu -> head; the
reference is torch's conv_transpose2d in float64: the epsilon rule and z+ through autograd (ops_helpers)."""

import pytest
import torch
import torch.nn.functional as F
from ops_helpers import Net, check_network, eps_rule, inputs, run, t64, zplus_rule


@pytest.mark.parametrize("rule", ["epsilon", "zplus"])
@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_layer(rule, group):
    net = Net([3, 5, 5], seed=93)
    h, conv, _, _ = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
    a = net.op("Relu", [h])
    weight = net.randn(4, 6 // group, 3, 3, scale=0.3)
    bias = net.randn(6, scale=0.1)
    up = net.op("ConvTranspose", [a, weight, bias], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                output_padding=[1, 1], group=group)
    out = net.op("Relu", [up])
    logits, head = net.head(out, 6 * 10 * 10)
    W, B = net.t(weight), net.t(bias)

    def deconv(t, w=W, b=B):
        return F.conv_transpose2d(t, w, b, stride=2, padding=1, output_padding=1, groups=group)

    x = inputs([3, 5, 5], seed=94)
    x64 = t64(x)
    y, relevance = run(net.model(logits), x, rules=["Conv=epsilon:0.01", f"ConvTranspose={rule}"])
    a64 = torch.relu(conv(x64))

    def backward(r):
        r_a = eps_rule(deconv, a64, r) if rule == "epsilon" else zplus_rule(deconv, a64, W, B, r)
        return eps_rule(conv, x64, r_a, 0.01)

    check_network(x, y, relevance, lambda t: torch.relu(deconv(torch.relu(conv(t)))), backward, head)

"""Per-op parity for lrpgraph/converters/norm.py: a BatchNormalization that is not folded into a linear layer
passes relevance unchanged (folding is tested in test_linear.py). References and helpers: ops_helpers."""

import numpy as np
import pytest
import torch
from ops_helpers import Net, bn_fn, bn_params, check_network, eps_rule, inputs, run, t64


@pytest.mark.parametrize("where", ["before_conv", "on_input"])
def test_batchnorm_standalone_passes(where):
    """A BatchNormalization that follows no linear layer (BN -> Relu -> Conv as in DenseNet, or on the image)
    passes relevance unchanged; the Conv after it explains its own input, the BN output."""
    net = Net([3, 8, 8], seed=44)
    if where == "before_conv":
        h1, conv1, _, _ = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
        a1 = net.op("Relu", [h1])
        names = bn_params(net, 4)
        n = net.op("BatchNormalization", [a1] + names)
        c_in = 4
    else:
        names = bn_params(net, 3)
        n = net.op("BatchNormalization", ["x"] + names)
        c_in = 3
    a2 = net.op("Relu", [n])
    h2, conv2, _, _ = net.conv(a2, c_in, 5, pads=[1, 1, 1, 1])
    logits, head = net.head(net.op("Relu", [h2]), 5 * 64)
    x = inputs([3, 8, 8], seed=45)
    y, relevance = run(net.model(logits), x)
    bn, _, _ = bn_fn(net, names, 1e-5)
    x64 = t64(x)
    first = (lambda t: torch.relu(conv1(t))) if where == "before_conv" else (lambda t: t)
    bn_out = bn(first(x64))
    conv2_in = torch.relu(bn_out)

    def backward(r):
        r = eps_rule(conv2, conv2_in, r)  # pass through Relu and BN
        return eps_rule(conv1, x64, r) if where == "before_conv" else r

    check_network(x, y, relevance, lambda t: torch.relu(conv2(torch.relu(bn(first(t))))), backward, head)


def test_batchnorm_after_rank3_matmul_is_not_folded():
    """x [N, 4, 6] -> MatMul -> BatchNormalization: BN normalises axis 1 (4), not the MatMul's output
    features (the last axis), so it cannot be folded; it is a standalone BN (pass) after the MatMul."""
    net = Net([4, 6], seed=132)
    W = net.rng.standard_normal((6, 5)) / np.sqrt(6)
    mm = net.op("MatMul", ["x", net.const(W)])
    names = bn_params(net, 4)
    n = net.op("BatchNormalization", [mm] + names)
    logits, head = net.head(net.op("Relu", [n]), 20)
    x = inputs([4, 6], seed=133)
    y, relevance = run(net.model(logits), x)
    bn, _, _ = bn_fn(net, names, 1e-5, rank=3)
    Wt = t64(W)
    check_network(x, y, relevance, lambda t: torch.relu(bn(t @ Wt)),
                  lambda r: eps_rule(lambda t: t @ Wt, t64(x), r), head)

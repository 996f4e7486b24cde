"""Linear layers that are more than one node: a MatMul or Gemm with its bias Add fused, a BatchNormalization
folded into the Conv or Gemm before it, weights held in Constant nodes; each against the numpy/torch float64
transcription of the folded layer's rule (ops_helpers). The single-node rules: test_linear.py."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ops_helpers import (CLASSES, Net, bn_fn, bn_params, check_network, dense, eps_rule, inputs, run, t64,
                         zplus_rule)

import lrpgraph
from lrpgraph import metadata


@pytest.mark.parametrize("rank3", [False, True], ids=["rank2", "rank3"])
@pytest.mark.parametrize("rule", ["epsilon", "zplus"])
def test_matmul_bias_add_fused(rank3, rule):
    """x -> MatMul -> Add(bias) -> Relu -> head: the Add is the layer's bias (in z of the epsilon rule and in
    b+ of zplus), for a rank-2 and a rank-3 input."""
    shape = [4, 6] if rank3 else [6]
    net = Net(shape, seed=34)
    W, B = net.rng.standard_normal((6, 5)) / np.sqrt(6), net.rng.standard_normal(5) * 0.5
    mm = net.op("MatMul", ["x", net.const(W)])
    h = net.op("Add", [mm, net.const(B)])
    a = net.op("Relu", [h])
    logits, head = net.head(a, 20 if rank3 else 5)
    x = inputs(shape, seed=35)
    model = net.model(logits)
    y, relevance = run(model, x, rules=[f"MatMul={rule}"])
    Wt, Bt = t64(W), t64(B)

    def backward(r):
        if rule == "epsilon":
            return eps_rule(lambda t: dense(t, Wt, Bt), t64(x), r)
        return zplus_rule(dense, t64(x), Wt, Bt, r)

    check_network(x, y, relevance, lambda t: torch.relu(dense(t, Wt, Bt)), backward, head)
    config = metadata.read(lrpgraph.convert(model, composite="epsilon"))[metadata.CONFIG]
    assert set(config["rules"]) == {n.name for n in model.graph.node} - {net.nodes[1].name}  # Add fused


# ================================================================================== BatchNormalization folded in
@pytest.mark.parametrize("bias", ["conv_bias", "no_bias", "add_bias"])
@pytest.mark.parametrize("rule", ["epsilon", "zplus"])
def test_batchnorm_folded_after_conv(bias, rule):
    """x -> Conv (bias / none / bias as a following Add [1, M, 1, 1]) -> BatchNormalization -> Relu -> head:
    one linear layer with W' = W g / sqrt(var + e), b' = (b - mean) g / sqrt(var + e) + beta."""
    net = Net([3, 8, 8], seed=40)
    h, conv, w, b = net.conv("x", 3, 4, bias=bias == "conv_bias", pads=[1, 1, 1, 1])
    B = None if b is None else net.t(b)
    if bias == "add_bias":
        add_b = net.rng.standard_normal((1, 4, 1, 1)) * 0.3
        h = net.op("Add", [h, net.const(add_b)])
        B = t64(add_b.reshape(-1))
    names = bn_params(net, 4)
    n = net.op("BatchNormalization", [h] + names, epsilon=1e-3)
    a = net.op("Relu", [n])
    logits, head = net.head(a, 4 * 64)
    x = inputs([3, 8, 8], seed=41)
    y, relevance = run(net.model(logits), x, rules=[f"Conv={rule}"])
    _, k, shift = bn_fn(net, names, 1e-3)
    W_f = net.t(w) * k.reshape(-1, 1, 1, 1)
    B_f = (B if B is not None else 0) * k + shift

    def folded(t, weight, bias_):
        return F.conv2d(t, weight, bias_, padding=1)

    def backward(r):
        x64 = t64(x)
        if rule == "epsilon":
            return eps_rule(lambda t: folded(t, W_f, B_f), x64, r)
        return zplus_rule(folded, x64, W_f, B_f, r)

    check_network(x, y, relevance, lambda t: torch.relu(folded(t, W_f, B_f)), backward, head)


def test_batchnorm_folded_after_gemm():
    """Gemm -> BatchNormalization on [N, M]: folded per output feature (zplus sees the folded weights)."""
    net = Net([6], seed=42)
    W = net.rng.standard_normal((6, 5)) / np.sqrt(6)
    g = net.op("Gemm", ["x", net.const(W)])
    names = bn_params(net, 5)
    n = net.op("BatchNormalization", [g] + names)
    logits, head = net.head(net.op("Relu", [n]), 5)
    x = inputs([6], seed=43, batch=3)
    y, relevance = run(net.model(logits), x, rules=[f"{net.nodes[0].name}=zplus"])
    _, k, shift = bn_fn(net, names, 1e-5, rank=2)
    W_f = t64(W) * k

    check_network(x, y, relevance, lambda t: torch.relu(dense(t, W_f, shift)),
                  lambda r: zplus_rule(dense, t64(x), W_f, shift, r), head)


# ================================================================================== weights in Constant nodes
def test_constant_nodes_hold_weights():
    """Conv weight and bias, and the dense weight, stored in Constant nodes rather than initializers
    (epsilon-plus: zplus on the Conv, epsilon on the dense layer)."""
    net = Net([3, 8, 8], seed=110)
    h, conv, w, b = net.conv("x", 3, 4, pads=[1, 1, 1, 1], const_nodes=True)
    flat = net.op("Flatten", [net.op("Relu", [h])], axis=1)
    W = net.constant_node(net.rng.standard_normal((256, CLASSES)) / 16)
    B = net.constant_node(net.rng.standard_normal(CLASSES) * 0.1)
    logits = net.op("Add", [net.op("MatMul", [flat, W]), B])
    model = net.model(logits)
    assert {n.op_type for n in model.graph.node} >= {"Constant"} and not model.graph.initializer
    x = inputs([3, 8, 8], seed=111)
    y, relevance = run(model, x, composite="epsilon-plus")
    Wt, Bt = net.t(W), net.t(B)
    head = lambda t: t.reshape(len(t), -1) @ Wt + Bt  # noqa: E731

    def conv_with(t, weight, bias):
        return F.conv2d(t, weight, bias, padding=1)

    check_network(x, y, relevance, lambda t: torch.relu(conv(t)),
                  lambda r: zplus_rule(conv_with, t64(x), net.t(w), net.t(b), r), head)


# ================================================================================== fusion edge cases
def test_gemm_without_c_then_bias_add():
    """Gemm(beta = 0.5, no C) -> Add(bias): the Add is fused as the bias, and beta (which scales C only)
    does not scale it (zplus: b+ is in the denominator)."""
    net = Net([6], seed=130)
    W, B = net.rng.standard_normal((6, 5)) / np.sqrt(6), net.rng.standard_normal(5)
    g = net.op("Gemm", ["x", net.const(W)], beta=0.5, alpha=1.5)
    h = net.op("Add", [g, net.const(B)])
    logits, head = net.head(net.op("Relu", [h]), 5)
    x = inputs([6], seed=131, batch=3)
    y, relevance = run(net.model(logits), x, rules=[f"{net.nodes[0].name}=zplus"])
    Wt, Bt = 1.5 * t64(W), t64(B)

    check_network(x, y, relevance, lambda t: torch.relu(dense(t, Wt, Bt)),
                  lambda r: zplus_rule(dense, t64(x), Wt, Bt, r), head)

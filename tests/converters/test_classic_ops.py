"""Ops of older exporters and older architectures (issue 10's coverage): Sum with n inputs (opset <= 7
residuals), LRN (AlexNet, GoogLeNet), and the activations Elu, Selu, Softplus, Mish. Each in a tiny graph
built with onnx.helper at an opset where the op occurs, against float64 torch references written from the
ONNX operator definitions (no lrpgraph code): LRP ('epsilon' composite) and the plain gradient (method
'gradient'), converted models run in onnxruntime. Helpers: ops_helpers."""

import numpy as np
import pytest
import torch
from ops_helpers import Net, assert_l1, check_network, eps_rule, inputs, norm_rule_multi, run, t64

SELU = (1.67326319217681884765625, 1.05070102214813232421875)
ACTIVATIONS = {  # op, attributes, opset, float64 torch function from the ONNX definition
    "Elu": ({"alpha": 0.7}, 6, lambda t: torch.where(t > 0, t, 0.7 * (torch.exp(t) - 1))),
    "Selu": ({}, 6, lambda t: SELU[1] * torch.where(t > 0, t, SELU[0] * (torch.exp(t) - 1))),
    "Softplus": ({}, 1, lambda t: torch.log(torch.exp(t) + 1)),
    "Mish": ({}, 18, lambda t: t * torch.tanh(torch.log(torch.exp(t) + 1))),
}


def lrn_reference(t, size, alpha, beta, bias):
    """ONNX LRN: x_c / (bias + alpha / size * sum_{j = c - floor((size-1)/2)}^{c + ceil((size-1)/2)} x_j^2)^beta."""
    channels = t.shape[1]
    out = []
    for c in range(channels):
        lo, hi = max(0, c - (size - 1) // 2), min(channels - 1, c + size // 2)
        square_sum = (t[:, lo:hi + 1] ** 2).sum(1)
        out.append(t[:, c] / (bias + alpha / size * square_sum) ** beta)
    return torch.stack(out, 1)


def gradient_of(f, x, y_onnx):
    """d y_c / dx for c the top class in ORT's logits (the 'top' target of method 'gradient')."""
    x = x.detach().clone().requires_grad_(True)
    y = f(x)
    onehot = torch.zeros_like(y)
    onehot[torch.arange(len(y)), torch.as_tensor(np.asarray(y_onnx).argmax(1))] = 1.0
    (g,) = torch.autograd.grad(y, x, onehot)
    return g.numpy()


def conv_op_head(op, opset, seed, **attrs):
    """x [3, 6, 6] -> Conv (pad 1, 4 channels) -> op -> Flatten -> Gemm."""
    net = Net([3, 6, 6], seed=seed, opset=opset)
    h, conv, _, _ = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
    a = net.op(op, [h], **attrs)
    logits, head = net.head(a, 4 * 36)
    return net.model(logits), conv, head


def check_pass_and_gradient(model, conv, op, head, x):
    """LRP: the op passes relevance; gradient: torch autograd of the chain. The Conv takes epsilon 0.01, not
    1e-6: relevance that passes an op unchanged does not vanish where the Conv's z does, and R / (z + 1e-6)
    at z ~ 1e-5 magnifies float32 rounding of z (as in test_activations.py)."""
    y, relevance = run(model, x, rules=["Conv=epsilon:0.01"])
    check_network(x, y, relevance, lambda t: op(conv(t)), lambda r: eps_rule(conv, t64(x), r, 0.01), head)
    y, grad = run(model, x, method="gradient")
    assert_l1(grad, gradient_of(lambda t: head(op(conv(t))), t64(x), y))


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation(name):
    attrs, opset, fn = ACTIVATIONS[name]
    model, conv, head = conv_op_head(name, opset, seed=60, **attrs)
    check_pass_and_gradient(model, conv, fn, head, inputs([3, 6, 6], seed=61))


@pytest.mark.parametrize("size", [3, 5])  # onnxruntime runs odd sizes only
def test_lrn(size):
    """LRN passes relevance (its normaliser a constant); the gradient is LRN's full derivative."""
    attrs = dict(size=size, alpha=0.5, beta=0.75, bias=1.5)  # large alpha: the normaliser's derivative matters
    model, conv, head = conv_op_head("LRN", 1, seed=62, **attrs)
    check_pass_and_gradient(model, conv, lambda t: lrn_reference(t, **attrs), head, inputs([3, 6, 6], seed=63))


@pytest.mark.parametrize("n", [2, 3])
def test_sum(n):
    """Sum of n conv branches (an opset-6 residual): the norm rule, each branch epsilon; gradient to each."""
    net = Net([3, 6, 6], seed=64, opset=6)
    branches = [net.conv("x", 3, 4, pads=[1, 1, 1, 1]) for _ in range(n)]
    s = net.op("Sum", [h for h, *_ in branches])
    logits, head = net.head(s, 4 * 36)
    model, x = net.model(logits), inputs([3, 6, 6], seed=65)
    convs = [fn for _, fn, _, _ in branches]
    x64 = t64(x)

    def forward(t):
        return sum(f(t) for f in convs)

    def backward(r):
        shares = norm_rule_multi(lambda *hs: sum(hs), [f(x64) for f in convs], r)
        return sum(eps_rule(f, x64, share) for f, share in zip(convs, shares))

    y, relevance = run(model, x)
    check_network(x, y, relevance, forward, backward, head)
    y, grad = run(model, x, method="gradient")
    assert_l1(grad, gradient_of(lambda t: head(forward(t)), x64, y))


def test_sum_with_constant_is_affine():
    """Sum of a signal and a constant (one signal): relevance passes to the signal."""
    net = Net([3, 6, 6], seed=66, opset=6)
    h, conv, _, _ = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
    shift = net.randn(4, 1, 1)
    s = net.op("Sum", [h, shift])
    logits, head = net.head(s, 4 * 36)
    x = inputs([3, 6, 6], seed=67)
    y, relevance = run(net.model(logits), x, rules=["Conv=epsilon:0.01"])  # 0.01: see check_pass_and_gradient
    c = net.t(shift)
    check_network(x, y, relevance, lambda t: conv(t) + c, lambda r: eps_rule(conv, t64(x), r, 0.01), head)


@pytest.mark.parametrize("op, attrs, opset", [("LRN", dict(size=5, alpha=0.5, beta=0.75, bias=1.5), 17),
                                              ("Elu", dict(alpha=0.7), 17), ("Selu", {}, 17),
                                              ("Softplus", {}, 17), ("Mish", {}, 18)])
def test_importer_op_matches_onnxruntime(op, attrs, opset):
    """The importer's torch op (train/onnx_ops.py) computes what onnxruntime computes."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from lrpgraph.train.onnx_ops import OPS, TorchContext

    x = inputs([6, 3, 3], seed=68) * 2
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(x.shape)) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "one", info[:1], info[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    (expected,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    fn = OPS[op]
    kwargs = {"_op": op} if "_op" in fn.__code__.co_varnames else {}
    got = fn(TorchContext(torch.float32, "cpu", opset), torch.as_tensor(x), **attrs, **kwargs)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)

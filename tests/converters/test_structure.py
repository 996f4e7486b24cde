"""Per-op parity for lrpgraph/converters/structure.py: gates (x * s(x)), residual Add/Sub (norm rule),
Add/Sub/Mul/Div by constants (pass), and the shape ops and Concat (relevance moves as the values move).
References and helpers: ops_helpers."""

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from ops_helpers import (CLASSES, Net, check_network, check_op_after_conv_relu, conv_relu, eps_rule, inputs, move,
                         norm_rule_multi, run, t64, zplus_rule)


# ================================================================================== gates
@pytest.mark.parametrize("kind", ["squeeze_excitation", "silu", "hardswish_clip", "hardsigmoid_gate_first"])
def test_mul_gate(kind):
    """y = x * s(x): the gate s is a constant, all relevance goes to the signal x."""
    net = Net([3, 8, 8], seed=60)
    h, conv, _, _ = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
    if kind == "squeeze_excitation":
        a = net.op("Relu", [h])
        pooled = net.op("GlobalAveragePool", [a])
        s1, se1, _, _ = net.conv(pooled, 4, 2, k=1)
        s2, se2, _, _ = net.conv(net.op("Relu", [s1]), 2, 4, k=1)
        gate = net.op("Sigmoid", [s2])
        out = net.op("Mul", [a, gate])
        signal = lambda t: torch.relu(conv(t))  # noqa: E731
        gate_fn = lambda v: torch.sigmoid(se2(torch.relu(se1(v.mean((2, 3), keepdim=True)))))  # noqa: E731
    elif kind == "silu":
        out = net.op("Mul", [h, net.op("Sigmoid", [h])])
        signal, gate_fn = conv, torch.sigmoid
    elif kind == "hardswish_clip":
        clipped = net.op("Clip", [net.op("Add", [h, net.const(3.0)]), net.const(0.0), net.const(6.0)])
        out = net.op("Mul", [h, net.op("Div", [clipped, net.const(6.0)])])
        signal, gate_fn = conv, lambda v: (v + 3).clamp(0, 6) / 6
    else:
        out = net.op("Mul", [net.op("HardSigmoid", [h]), h])
        signal, gate_fn = conv, lambda v: (0.2 * v + 0.5).clamp(0, 1)
    logits, head = net.head(out, 4 * 64)
    x = inputs([3, 8, 8], seed=61)
    y, relevance = run(net.model(logits), x)
    x64 = t64(x)

    def forward(t):
        v = signal(t)
        return v * gate_fn(v)

    def backward(r):  # the gate is constant: R passes to the signal, then through Relu (pass) to the Conv
        return eps_rule(conv, x64, r)

    check_network(x, y, relevance, forward, backward, head)


def test_squeeze_excitation_exported_from_torch():
    """The same gate, from a torch module exported by the TorchScript exporter (fast; dynamo when absent)."""

    class SE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc1, self.fc2 = torch.nn.Conv2d(4, 2, 1), torch.nn.Conv2d(2, 4, 1)
            self.head = torch.nn.Linear(4 * 64, CLASSES)

        def forward(self, x):
            a = torch.relu(self.conv(x))
            s = torch.sigmoid(self.fc2(torch.relu(self.fc1(a.mean((2, 3), keepdim=True)))))
            return self.head(torch.flatten(a * s, 1))

    torch.manual_seed(0)
    module = SE().eval()
    x = inputs([3, 8, 8], seed=62)
    model = export_torch(module, torch.as_tensor(x[:1]))
    y, relevance = run(model, x)
    m64 = module.double()
    head = lambda t: m64.head(t.reshape(len(t), -1))  # noqa: E731

    def forward(t):
        a = torch.relu(m64.conv(t))
        return a * torch.sigmoid(m64.fc2(torch.relu(m64.fc1(a.mean((2, 3), keepdim=True)))))

    check_network(x, y, relevance, forward, lambda r: eps_rule(m64.conv, t64(x), r), head)


def export_torch(module, example):
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=17, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
        return onnx.load_from_string(buffer.getvalue())
    except Exception:  # pragma: no cover - the TorchScript exporter is gone in this torch
        from zennit_ref import export

        return onnx.load_from_string(export(module, example))


# ================================================================================== Add / Sub / Mul / Div
@pytest.mark.parametrize("kind", ["Add", "Sub", "Add_broadcast"])
def test_residual_sum_norm_rule(kind):
    """h1 = Relu(Conv1 x), h2 = Relu(Conv2 h1), s = h1 + h2 (or h1 - h2, or h1 + GAP(h2) broadcast) -> head:
    norm rule R_k = x_k R / stab(s) (with the sign of a subtrahend); h1's relevance from both paths adds."""
    net = Net([3, 8, 8], seed=90)
    h1, forward1, conv1 = conv_relu(net)
    c2, conv2, _, _ = net.conv(h1, 4, 4, pads=[1, 1, 1, 1])
    h2 = net.op("Relu", [c2])
    if kind == "Add_broadcast":
        h2 = net.op("GlobalAveragePool", [h2])
    s = net.op(kind.split("_")[0], [h1, h2])
    logits, head = net.head(s, 4 * 64)
    x = inputs([3, 8, 8], seed=91)
    y, relevance = run(net.model(logits), x)
    x64 = t64(x)
    sign = -1.0 if kind == "Sub" else 1.0
    second = ((lambda t: torch.relu(conv2(t)).mean((2, 3), keepdim=True)) if kind == "Add_broadcast"
              else (lambda t: torch.relu(conv2(t))))

    def backward(r):
        a1 = forward1(x64)
        r1, r2 = norm_rule_multi(lambda u, v: u + sign * v, [a1, second(a1)], r)
        if kind == "Add_broadcast":  # the mean of GAP: norm rule
            r2 = eps_rule(lambda t: t.mean((2, 3), keepdim=True), torch.relu(conv2(a1)), r2)
        r1 = r1 + eps_rule(conv2, a1, r2)
        return eps_rule(conv1, x64, r1)

    check_network(x, y, relevance, lambda t: (lambda a: a + sign * second(a))(forward1(t)), backward, head)


@pytest.mark.parametrize("kind", ["after_relu", "after_biased_conv", "fused_into_conv"])
def test_add_constant(kind):
    """A constant added to a signal: passes relevance (after a Relu, or after a Conv that has its own bias),
    except right after a bias-free Conv, where it is that Conv's bias (in z of the epsilon rule).
    Conv epsilon 0.01: the passed relevance does not vanish where the Conv's own z does (see
    test_activation_passes)."""
    net = Net([3, 8, 8], seed=92)
    h, conv, _, _ = net.conv("x", 3, 4, bias=kind != "fused_into_conv", pads=[1, 1, 1, 1])
    const = net.rng.standard_normal((1, 4, 1, 1) if kind != "after_relu" else (4, 8, 8)) * 0.3
    if kind == "after_relu":
        h = net.op("Relu", [h])
    out = net.op("Add", [h, net.const(const)])
    if kind != "after_relu":
        out = net.op("Relu", [out])
    logits, head = net.head(out, 4 * 64)
    x = inputs([3, 8, 8], seed=93)
    y, relevance = run(net.model(logits), x, rules=["Conv=epsilon:0.01"])
    x64, c = t64(x), t64(const)
    if kind == "after_relu":
        forward = lambda t: torch.relu(conv(t)) + c  # noqa: E731
        backward = lambda r: eps_rule(conv, x64, r, 0.01)  # noqa: E731
    elif kind == "after_biased_conv":
        forward = lambda t: torch.relu(conv(t) + c)  # noqa: E731
        backward = lambda r: eps_rule(conv, x64, r, 0.01)  # noqa: E731  (z of the Conv alone)
    else:
        forward = lambda t: torch.relu(conv(t) + c)  # noqa: E731
        backward = lambda r: eps_rule(lambda t: conv(t) + c, x64, r, 0.01)  # noqa: E731
    check_network(x, y, relevance, forward, backward, head)


def test_constant_affine_maps_pass():
    """Input normalisation in the graph: (x - mean) / std * scale + shift, (c - x), x / c: every constant
    affine map passes relevance unchanged to its signal input."""
    net = Net([3, 8, 8], seed=94)
    mean, std = np.array([0.4, 0.5, 0.6]).reshape(1, 3, 1, 1), np.array([0.2, 0.25, 0.3]).reshape(3, 1, 1)
    t1 = net.op("Sub", ["x", net.const(mean)])
    t2 = net.op("Div", [t1, net.const(std)])
    t3 = net.op("Mul", [net.const(1.5), t2])
    t4 = net.op("Add", [net.const(np.full((8,), 0.1)), t3])
    t5 = net.op("Sub", [net.const(0.2), t4])
    t6 = net.op("Div", [t5, net.const(-2.0)])
    h, conv, _, _ = net.conv(t6, 3, 4, pads=[1, 1, 1, 1])
    logits, head = net.head(net.op("Relu", [h]), 4 * 64)
    x = inputs([3, 8, 8], seed=95, low=0.0, high=1.0)
    y, relevance = run(net.model(logits), x)
    m, s = t64(mean), t64(std)
    normalise = lambda t: (0.2 - (0.1 + 1.5 * ((t - m) / s))) / -2.0  # noqa: E731
    x64 = t64(x)
    check_network(x, y, relevance, lambda t: torch.relu(conv(normalise(t))),
                  lambda r: eps_rule(conv, normalise(x64), r), head)


# ================================================================================== shape ops
STRUCTURE = {
    # name: (build(net, a) -> output name, torch op on a, head features)
    "Split_swap": (lambda net, a: net.op("Concat", list(reversed(
        net.op("Split", [a, net.ints([1, 3])], outputs=2, axis=1))), axis=1),
        lambda t: torch.cat([t[:, 1:], t[:, :1]], 1), 256),
    "Split_unused_output": (lambda net, a: net.op("Split", [a, net.ints([2, 2])], outputs=2, axis=1)[0],
                            lambda t: t[:, :2], 128),
    "Split_negative_axis": (lambda net, a: net.op("Split", [a, net.ints([3, 5])], outputs=2, axis=-1)[1],
                            lambda t: t[..., 3:], 4 * 8 * 5),
    "Slice": (lambda net, a: net.op("Slice", [a, net.ints([1, -6]), net.ints([7, 100]), net.ints([2, 3])]),
              lambda t: t[:, :, 1:7, 2:], 4 * 6 * 6),
    "Slice_negative_axis": (lambda net, a: net.op("Slice", [a, net.ints([1]), net.ints([3]), net.ints([-3]),
                                                            net.ints([1])]),
                            lambda t: t[:, 1:3], 128),
    "Flatten": (lambda net, a: net.op("Flatten", [a], axis=1), lambda t: t.reshape(len(t), -1), 256),
    "Reshape": (lambda net, a: net.op("Reshape", [a, net.ints([0, 8, -1])]), lambda t: t.reshape(len(t), 8, -1), 256),
    "Transpose": (lambda net, a: net.op("Transpose", [a], perm=[0, 2, 3, 1]), lambda t: t.permute(0, 2, 3, 1), 256),
    "Unsqueeze_Squeeze": (lambda net, a: net.op("Squeeze", [net.op("Unsqueeze", [a, net.ints([2])]), net.ints([2])]),
                          lambda t: t, 256),
    "Squeeze_after_pool": (lambda net, a: net.op("Squeeze", [net.op("MaxPool", [a], kernel_shape=[8, 8]),
                                                             net.ints([2, 3])]),
                           lambda t: t.amax((2, 3)), 4),
    "Pad": (lambda net, a: net.op("Pad", [a, net.ints([0, 0, 1, 2, 0, 0, 2, 1]), net.const(0.5)]),
            lambda t: F.pad(t, (2, 1, 1, 2), value=0.5), 4 * 11 * 11),
    "Identity": (lambda net, a: net.op("Identity", [a]), lambda t: t, 256),
    "Dropout": (lambda net, a: net.op("Dropout", [a], seed=1), lambda t: t, 256),
}


@pytest.mark.parametrize("name", list(STRUCTURE))
def test_shape_op_moves_relevance(name):
    """x -> Conv -> Relu -> shape op -> head: relevance moves exactly as the values move (the op's gradient)."""
    build, op, features = STRUCTURE[name]
    net = Net([3, 8, 8], seed=100)
    a, forward, conv = conv_relu(net)
    check_op_after_conv_relu(net, build(net, a), features, forward, conv, op, move, x_seed=101)


def test_concat_two_branches():
    """Concat of two Conv branches from the image: each branch gets its part; the image relevance sums."""
    net = Net([3, 8, 8], seed=102)
    a1, f1, c1 = conv_relu(net)
    a2, f2, c2 = conv_relu(net, cout=2)
    cat = net.op("Concat", [a1, a2], axis=1)
    logits, head = net.head(cat, 6 * 64)
    x = inputs([3, 8, 8], seed=103)
    y, relevance = run(net.model(logits), x)
    x64 = t64(x)
    check_network(x, y, relevance, lambda t: torch.cat([f1(t), f2(t)], 1),
                  lambda r: eps_rule(c1, x64, r[:, :4]) + eps_rule(c2, x64, r[:, 4:]), head)


def test_concat_with_negative_constant_then_zplus():
    """Concat(Relu output, a constant with negative values) -> Conv (zplus): the constant gets no relevance,
    and the Conv's input is not non-negative, so zplus keeps its x- w- terms (denominator included)."""
    net = Net([3, 8, 8], seed=104)
    h1, conv1, w1, b1 = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
    a = net.op("Relu", [h1])
    const = net.rng.standard_normal((1, 2, 8, 8))
    cat = net.op("Concat", [a, net.const(const)], axis=1)
    h2, conv2, w2, b2 = net.conv(cat, 6, 4, pads=[1, 1, 1, 1])
    logits, head = net.head(net.op("Relu", [h2]), 4 * 64)
    x = inputs([3, 8, 8], seed=105, batch=1)
    y, relevance = run(net.model(logits, batch=1), x, composite="epsilon-plus")
    x64, c = t64(x), t64(const)

    def conv_with(t, weight, bias):
        return F.conv2d(t, weight, bias, padding=1)

    def backward(r):
        r_cat = zplus_rule(conv_with, torch.cat([torch.relu(conv1(x64)), c], 1), net.t(w2), net.t(b2), r)
        return zplus_rule(conv_with, x64, net.t(w1), net.t(b1), r_cat[:, :4])

    check_network(x, y, relevance, lambda t: torch.relu(conv2(torch.cat([torch.relu(conv1(t)), c], 1))),
                  backward, head)

"""How other exporters and older opsets write the same network (issue 10): weights listed as graph inputs
(IR 3), weights in Constant nodes, Flatten at any axis followed by Reshape with 0 and -1, Dropout with its
ratio as an input (opset 12+), Pad in its opset-2 attribute form. Each graph is x -> [Pad] -> Conv ->
idiom -> Flatten -> Gemm, built with onnx.helper at the opset the idiom occurs in; the idioms only move
values, so the reference is the epsilon rule of the Conv and the head in float64 (ops_helpers), the
Conv with epsilon 0.01 (see test_classic_ops.check_pass_and_gradient)."""

import numpy as np
import pytest
import torch.nn.functional as F
from onnx import helper
from ops_helpers import Net, check_network, eps_rule, inputs, move, run, t64

SHAPE = [3, 6, 6]
FEATURES = 4 * 36


def check(net, h, conv, x_seed=80, model=None):
    logits, head = net.head(h, FEATURES)
    model = model or net.model(logits)
    x = inputs(SHAPE, seed=x_seed)
    y, relevance = run(model, x, rules=["Conv=epsilon:0.01"])
    check_network(x, y, relevance, conv, lambda r: eps_rule(conv, t64(x), r.reshape(len(x), 4, 6, 6), 0.01), head)


def test_weights_as_graph_inputs_ir3():
    """IR 3 (opset 8): every initializer is also a graph input; the image stays the one input fed."""
    net = Net(SHAPE, seed=81, opset=8)
    h, conv, _, _ = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
    logits, head = net.head(h, FEATURES)
    model = net.model(logits)
    model.ir_version = 3
    model.graph.input.extend(helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
                             for i in model.graph.initializer)
    x = inputs(SHAPE, seed=82)
    y, relevance = run(model, x, rules=["Conv=epsilon:0.01"])
    check_network(x, y, relevance, conv, lambda r: eps_rule(conv, t64(x), r, 0.01), head)


def test_weights_in_constant_nodes():
    net = Net(SHAPE, seed=83)
    h, conv, _, _ = net.conv("x", 3, 4, pads=[1, 1, 1, 1], const_nodes=True)
    check(net, h, conv)


@pytest.mark.parametrize("axis, shape", [(0, [-1, FEATURES]), (1, [0, -1]), (2, [-1, FEATURES]),
                                         (3, [-1, FEATURES]), (4, [0, -1])])
def test_flatten_any_axis_then_reshape(axis, shape):
    """Flatten at axis 0..4 (the batch folded in or not), then Reshape with 0 (copy) and -1 (infer)."""
    net = Net(SHAPE, seed=84)
    h, conv, _, _ = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
    flat = net.op("Flatten", [h], axis=axis)
    if axis == 4:  # [N * 4 * 6 * 6, 1]: 0 keeps the first axis, so reshape to [N, ...] needs -1 first
        shape = [-1, FEATURES]
    check(net, net.op("Reshape", [flat, net.ints(shape)]), conv)


@pytest.mark.parametrize("opset", [12, 13])
def test_dropout_with_ratio_input(opset):
    """Dropout(x, ratio, training_mode=False) with its mask output: an identity at inference."""
    net = Net(SHAPE, seed=85, opset=opset)
    h, conv, _, _ = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
    out, _mask = net.op("Dropout", [h, net.const(0.3), net.const(False, np.bool_)], outputs=2)
    check(net, out, conv)


def test_pad_attribute_form_opset2():
    """Pad with its pads as an attribute (opset 2..10): relevance of the padding is dropped."""
    net = Net(SHAPE, seed=86, opset=2)
    padded = net.op("Pad", ["x"], pads=[0, 0, 1, 2, 0, 0, 2, 1])
    h, conv, _, _ = net.conv(padded, 3, 4, pads=[0, 0, 0, 0])
    logits, head = net.head(h, 4 * 7 * 7)  # 6 + 3 padded, 9 - 2 after the 3x3 Conv
    x = inputs(SHAPE, seed=87)
    y, relevance = run(net.model(logits), x, rules=["Conv=epsilon:0.01"])
    padded_conv = lambda t: conv(F.pad(t, (2, 1, 1, 2)))  # noqa: E731  (left, right, top, bottom)
    check_network(x, y, relevance, padded_conv, lambda r: eps_rule(padded_conv, t64(x), r, 0.01), head)


def test_shape_computations_of_the_legacy_exporter():
    """A channel shuffle and a flatten written as the TorchScript exporter writes x.view(...) without
    constant folding: Shape -> Gather -> Div/Mul -> Unsqueeze -> Concat -> Reshape. onnx's shape inference
    (with data propagation) resolves them, so the spatial sizes stay known behind the Reshapes; the shuffle
    moves relevance as it moves values (reference: its torch gradient)."""
    net = Net([4, 6, 6], seed=88, opset=13)
    h, conv1, _, _ = net.conv("x", 4, 4, pads=[1, 1, 1, 1])

    def dims(t):
        shape = net.op("Shape", [t])
        return [net.op("Gather", [shape, net.ints(i)], axis=0) for i in range(4)]

    def row(*scalars):
        return net.op("Concat", [net.op("Unsqueeze", [s, net.ints([0])]) for s in scalars], axis=0)

    n, c, height, width = dims(h)
    groups = net.ints(2)
    split = net.op("Reshape", [h, row(n, groups, net.op("Div", [c, groups]), height, width)])
    swapped = net.op("Transpose", [split], perm=[0, 2, 1, 3, 4])
    shuffled = net.op("Reshape", [swapped, row(n, c, height, width)])
    h2, conv2, _, _ = net.conv(shuffled, 4, 4, pads=[1, 1, 1, 1])
    n, c, height, width = dims(h2)
    flat = net.op("Reshape", [h2, row(n, net.op("Mul", [net.op("Mul", [c, height]), width]))])
    logits, head = net.head(flat, FEATURES)

    def shuffle(t):
        return t.reshape(len(t), 2, 2, 6, 6).transpose(1, 2).reshape(len(t), 4, 6, 6)

    x = inputs([4, 6, 6], seed=89)
    x64 = t64(x)
    y, relevance = run(net.model(logits), x, rules=["Conv=epsilon:0.01"])
    check_network(x, y, relevance, lambda t: conv2(shuffle(conv1(t))),
                  lambda r: eps_rule(conv1, x64, move(shuffle, conv1(x64), eps_rule(conv2, shuffle(conv1(x64)), r,
                                                                                     0.01)), 0.01), head)

"""A linear op is one unit, added in one registration (converters.linear.linear_op): how a node of it reads as
a layer (its own attributes), its forward pass and its transposed (adjoint) pass. For these tests ConvTranspose
is taken out of the catalog and the converters and registered again from this file, with its reader and
passes written here; the bias Add that follows it is folded in by the code every linear op shares.

The references are float64 torch, sharing no code with lrpgraph: F.conv_transpose2d with the epsilon rule
(R_x = x * the gradient of z applied to R / stab(z)) and the z+ rule (the forward with positive weights)
through autograd (ops_helpers), and torch autograd's gradient for the gradient method."""

import pytest
import torch
import torch.nn.functional as F
from ops_helpers import Net, assert_l1, check_network, eps_rule, inputs, run, t64, zplus_rule

import lrpgraph
from lrpgraph import graph
from lrpgraph.canonicalize import canonicalize
from lrpgraph.catalog import RECORDS, LinearOp
from lrpgraph.converters import registry
from lrpgraph.converters.linear import linear_op
from lrpgraph.errors import UnsupportedModelError

TOL = 1e-5


def read(node, attrs, shapes, name):
    """A ConvTranspose node's windows (explicit pads only), as the passes below take them."""
    n = len(shapes[node.input[1]]) - 2
    return {"attrs": {"strides": attrs.get("strides", [1] * n), "pads": attrs.get("pads", [0] * 2 * n),
                      "dilations": attrs.get("dilations", [1] * n), "group": attrs.get("group", 1),
                      "output_padding": attrs.get("output_padding", [0] * n)}}


def out_channels(layer, w_shape):
    """The weight is [C_in, M / group, k...]: M output channels."""
    return w_shape[1] * layer.attrs["group"]


def forward(b, layer, x, w, bias):
    return b.op("ConvTranspose", [x, w] + ([bias] if bias else []), "up", **layer.attrs)


def adjoint(b, layer, s, w):
    """The gradient of sum(s * conv_transpose(x, w)) with respect to x: the Conv with the same weight and
    windows (no output padding: it only adds rows the Conv does not read back)."""
    windows = {k: v for k, v in layer.attrs.items() if k != "output_padding"}
    return b.op("Conv", [s, w], "up_adjoint", **windows)


@pytest.fixture
def conv_transpose_from_here():
    """ConvTranspose registered by this file: one call, the record and the passes."""
    removed = registry.remove("ConvTranspose")
    linear_op("ConvTranspose", LinearOp(read, out_channels, channel_axis=1, bn_shape=lambda layer: None),
              forward, adjoint, keys=("conv",))
    yield RECORDS["ConvTranspose"]
    registry.restore(removed)


@pytest.fixture
def without_conv_transpose():
    removed = registry.remove("ConvTranspose")
    yield
    registry.restore(removed)


def upsampling_model(group):
    """x [4, 5, 5] -> ConvTranspose (stride 2, pads 1, output padding 1, no bias input) -> Add of a per-channel
    bias [1, 6, 1, 1] -> Relu -> Flatten -> Gemm; with the float64 torch function of the layer (bias included)."""
    net = Net([4, 5, 5], seed=95)
    weight = net.randn(4, 6 // group, 3, 3, scale=0.3)
    bias = net.randn(1, 6, 1, 1, scale=0.1)
    up = net.op("ConvTranspose", ["x", weight], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                output_padding=[1, 1], group=group)
    out = net.op("Relu", [net.op("Add", [up, bias])])
    logits, head = net.head(out, 6 * 10 * 10)
    W, B = net.t(weight), net.t(bias).reshape(-1)

    def layer(t, w=W, b=B):
        return F.conv_transpose2d(t, w, b, stride=2, padding=1, output_padding=1, groups=group)

    return net.model(logits), layer, head, (W, B)


def test_without_its_registration_the_op_is_refused(without_conv_transpose):
    with pytest.raises(UnsupportedModelError, match="ConvTranspose"):
        lrpgraph.convert(upsampling_model(1)[0])


def test_the_unit_reads_its_node_and_folds_the_bias_add(conv_transpose_from_here):
    model = upsampling_model(2)[0]
    unit = next(u for u in canonicalize(graph.load(model)).units if u.op == "ConvTranspose")
    assert (unit.kind, unit.keys, len(unit.fused)) == ("linear", ("conv",), 1)
    assert unit.layer.attrs["group"] == 2 and unit.layer.bias_from_add
    converted = lrpgraph.convert(model, composite="epsilon")
    assert any(node.name.endswith("up_adjoint") for node in converted.graph.node)


@pytest.mark.parametrize("rule", ["epsilon", "zplus"])
@pytest.mark.parametrize("group", [1, 2])
def test_a_rule_through_the_registered_op(conv_transpose_from_here, group, rule):
    """epsilon reads the layer's output as its denominator and goes back through the adjoint; z+ runs the
    forward with the positive weights and bias too."""
    model, layer, head, (W, B) = upsampling_model(group)
    x = inputs([4, 5, 5], seed=96)
    y, relevance = run(model, x, rules=[f"ConvTranspose={rule}" + (":0.01" if rule == "epsilon" else "")])

    def backward(r):
        return eps_rule(layer, t64(x), r, 0.01) if rule == "epsilon" else zplus_rule(layer, t64(x), W, B, r)

    check_network(x, y, relevance, lambda t: torch.relu(layer(t)), backward, head)


def test_the_gradient_through_the_registered_op(conv_transpose_from_here):
    """The gradient method: the adjoint alone, against torch autograd of the logit explained."""
    model, layer, head, _ = upsampling_model(2)
    x = inputs([4, 5, 5], seed=97)
    y, relevance = run(model, x, method="gradient")
    x64 = t64(x).requires_grad_(True)
    logits = head(torch.relu(layer(x64)))
    onehot = torch.zeros_like(logits)
    onehot[torch.arange(len(x)), torch.as_tensor(y.argmax(1))] = 1.0
    (grad,) = torch.autograd.grad(logits, x64, onehot)
    assert_l1(relevance, grad.numpy(), TOL)

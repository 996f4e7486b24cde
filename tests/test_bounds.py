"""zbox bounds follow normalisation inside the graph: a model exported with (x - mean) / std in front gets, at
its first layer, the bounds zennit needs on the normalised input ((0 - mean) / std, (1 - mean) / std)."""

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

import lrpgraph
from lrpgraph import metadata
from zennit_ref import (assert_within, convert_bytes, digit_model, export, l1, real_digits, run_onnx,
                        torchvision_model, zennit_composite, zennit_relevance)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Normalised(torch.nn.Module):
    """The preprocessing inside the model: what `torch.onnx.export` writes as Sub and Div by constants."""

    def __init__(self, model, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1))

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def normalised_bounds(mean, std):
    mean, std = torch.tensor(mean).reshape(1, -1, 1, 1), torch.tensor(std).reshape(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def test_per_channel_normalisation_inside_resnet18():
    composite = "epsilon-gamma-box"
    model, canonizers = torchvision_model("resnet18")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    onnx_bytes = export(Normalised(model, IMAGENET_MEAN, IMAGENET_STD), x)
    converted = convert_bytes(onnx_bytes, composite=composite, target="top")
    y, relevance = run_onnx(converted, x.numpy())
    low, high = normalised_bounds(IMAGENET_MEAN, IMAGENET_STD)
    comp = zennit_composite(composite, low=low, high=high, canonizers=canonizers)
    x_normalised = (x - torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    y_ref, ref = zennit_relevance(model, x_normalised, comp)
    assert np.allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    assert l1(relevance, ref) <= 1e-5, l1(relevance, ref)
    first = [rule for rule in metadata.read(converted)[metadata.CONFIG]["rules"].values() if "zbox" in rule]
    numbers = [float(v) for part in first[0].split(":")[1:] for v in part.split(",")]
    assert len(first) == 1 and np.allclose(numbers, [*low.flatten().tolist(), *high.flatten().tolist()], rtol=1e-5)


def test_scalar_normalisation_inside_the_pretrained_digit_model():
    model = digit_model()
    x, _ = real_digits(8, jitter=0.02)
    raw = x * 0.3081 + 0.1307  # pixels in [0, 1]
    converted = convert_bytes(export(Normalised(model, (0.1307,), (0.3081,)), raw), composite="epsilon-gamma-box")
    _, relevance = run_onnx(converted, raw.numpy())
    low, high = (0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081
    x_normalised = (raw - 0.1307) / 0.3081  # what the graph computes
    comp = zennit_composite("epsilon-gamma-box", low=low, high=high)
    ref = zennit_relevance(model, x_normalised, comp, dtype=torch.float64)[1]
    assert_within({"top": l1(relevance, ref)}, 1e-5, "digits in-graph")


def small_graph(before):
    """image -> [before nodes] -> Conv 3x3; `before`: (op, constant[, "first"]) applied in order ("first": the
    constant is the first operand, e.g. c - x)."""
    nodes, inits, tensor = [], [], "x"
    for i, (op, const, *const_first) in enumerate(before):
        inits.append(numpy_helper.from_array(np.asarray(const, np.float32), f"c{i}"))
        operands = [f"c{i}", tensor] if const_first else [tensor, f"c{i}"]
        nodes.append(helper.make_node(op, operands, [f"t{i}"], name=f"pre{i}"))
        tensor = f"t{i}"
    w = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    inits.append(numpy_helper.from_array(w, "w"))
    nodes += [helper.make_node("Conv", [tensor, "w"], ["c"], name="conv"),
              helper.make_node("ReduceMean", ["c"], ["y"], name="pool", axes=[2, 3], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_rule(model, **options):
    converted = lrpgraph.convert(model, composite="epsilon-gamma-box", **options)
    return metadata.read(converted)[metadata.CONFIG]["rules"]["conv"]


def test_bounds_through_each_affine_op_against_numpy():
    scale = np.array([2.0, -0.5, 4.0]).reshape(3, 1, 1)
    chain = [("Sub", [[[0.5]], [[0.25]], [[0.0]]]), ("Mul", scale), ("Add", 1.0), ("Div", 2.0), ("Sub", 3.0, "first")]

    def numpy_chain(pixel):  # the same ops on one pixel per channel
        return 3.0 - (((pixel - [0.5, 0.25, 0.0]) * scale.ravel()) + 1.0) / 2.0

    ends = [numpy_chain(np.full(3, 0.2)), numpy_chain(np.full(3, 0.9))]
    expected_low, expected_high = np.minimum(*ends), np.maximum(*ends)  # each op is monotone per channel
    rule = conv_rule(small_graph(chain), low=0.2, high=0.9)
    numbers = [float(v) for part in rule.split(":")[1:] for v in part.split(",")]
    assert rule.startswith("zbox:") and np.allclose(numbers, [*expected_low, *expected_high], rtol=1e-6), rule


def test_bounds_unchanged_without_normalisation_or_behind_other_ops():
    assert conv_rule(small_graph([]), low=-1.0, high=2.0) == "zbox:-1:2"
    spatial = np.linspace(0.1, 1.0, 8, dtype=np.float32)  # varies along the width: not per channel
    assert conv_rule(small_graph([("Sub", spatial)]), low=0.0, high=1.0) == "zbox:0:1"


def test_explicit_rule_for_the_layer_is_taken_as_written():
    model = small_graph([("Sub", 0.5), ("Div", 0.25)])
    assert conv_rule(model) == "zbox:-2:2"
    assert conv_rule(model, rules=["conv=zbox:-3:3"]) == "zbox:-3:3"


def test_flex_first_layer_bounds_follow_normalisation():
    converted = lrpgraph.convert(small_graph([("Sub", 0.5), ("Div", 0.25)]), composite="flex")
    assert metadata.read(converted)[metadata.CONFIG]["rules"]["conv"] == "flex-zbox:-2:2"

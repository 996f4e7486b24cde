"""Small hand-built 'converted' models for the runtime tests (the converter is tested elsewhere).

The model is linear: logits = Flatten(x) @ W + b, and relevance = x * W[:, t] (reshaped to the image),
which is exactly LRP-0 / gradient x input for the explained class t. t is the `target` input (mode
'index'), seed @ W^T (mode 'seed', relevance = x * (W @ seed)), argmax(logits) (mode 'top'), or every
class summed (mode 'all').
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lrpgraph import metadata


def build_model(mode="top", channels=3, height=6, width=5, classes=4, preprocess=None, labels=None,
                converted=True, seed=0, probabilities=False, composite="epsilon"):
    """(onnx.ModelProto, W [C*H*W, classes], b [classes]) for a tiny converted classifier."""
    rng = np.random.default_rng(seed)
    features = channels * height * width
    weight = rng.normal(size=(features, classes)).astype(np.float32)
    bias = rng.normal(size=classes).astype(np.float32) * 0.1
    inits = [
        numpy_helper.from_array(weight, "W"),
        numpy_helper.from_array(bias, "b"),
        numpy_helper.from_array(np.array([-1, channels, height, width], dtype=np.int64), "image_shape"),
    ]
    if mode != "all":
        inits.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), "WT"))
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "b"], ["raw_logits"]),
    ]
    logits = "raw_logits"
    if probabilities:
        nodes.append(helper.make_node("Softmax", ["raw_logits"], ["probabilities"], axis=1))
        logits = "probabilities"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, height, width])]
    if mode == "index":
        inputs.append(helper.make_tensor_value_info("target", TensorProto.INT64, ["N"]))
        nodes.append(helper.make_node("Gather", ["WT", "target"], ["weights"], axis=0))
    elif mode == "seed":
        inputs.append(helper.make_tensor_value_info("relevance_seed", TensorProto.FLOAT, ["N", classes]))
        nodes.append(helper.make_node("MatMul", ["relevance_seed", "WT"], ["weights"]))
    elif mode == "top":
        nodes.append(helper.make_node("ArgMax", ["raw_logits"], ["top"], axis=1, keepdims=0))
        nodes.append(helper.make_node("Gather", ["WT", "top"], ["weights"], axis=0))
    elif mode == "all":
        inits.append(numpy_helper.from_array(weight.sum(axis=1)[None, :], "weights"))
    nodes += [
        helper.make_node("Reshape", ["weights", "image_shape"], ["weights_image"]),
        helper.make_node("Mul", ["x", "weights_image"], ["relevance"]),
    ]
    outputs = [
        helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["N", classes]),
        helper.make_tensor_value_info("relevance", TensorProto.FLOAT, ["N", channels, height, width]),
    ]
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    if converted:
        metadata.write(model, metadata.VERSION, "0.1.0")
        # as lrpgraph.convert writes it: "logits" is the pre-softmax tensor, "logits_output" the graph output
        config = {"composite": composite, "target": mode, "image_input": "x", "logits": "raw_logits",
                  "logits_output": logits,
                  "outputs_probabilities": probabilities, "relevance_outputs": ["relevance"],
                  "options": {}, "rules": {}, "gradient_seed": {"relevance": composite == "flex"}}
        metadata.write(model, metadata.CONFIG, config)
        if preprocess is not None:
            metadata.write(model, metadata.PREPROCESS, preprocess)
        if labels is not None:
            metadata.write(model, metadata.LABELS, labels)
    return model, weight, bias


def reference_relevance(x, weight, classes):
    """x * W[:, t] per row, in float32 as the graph computes it."""
    per_row = weight.T[np.asarray(classes)].reshape(x.shape)
    return (x * per_row).astype(np.float32)


@pytest.fixture
def make_model():
    return build_model


@pytest.fixture
def save_model(tmp_path):
    def save(model, name="model.lrp.onnx"):
        path = tmp_path / name
        onnx.save(model, str(path))
        return path

    return save

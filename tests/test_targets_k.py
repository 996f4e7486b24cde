"""K targets per sample in one call equal K separate calls (<= 1e-6 relative), on ultralytics YOLOv8n's class
scores and on a classifier's logits named with from_tensor; a classifier's K-target layout also equals its
classic one-target layout. Inner-tensor cuts: a TopK or NonMaxSuppression after the head is refused with
the op and the --from option named, and explained at the tensor before it with from_tensor."""

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import lrpgraph
from lrpgraph import ExplainSession, LrpgraphError
from yolo_ref import class_scores, yolov8n
from zennit_ref import export


def session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run(sess, x, target):
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x, "target": target})))
    return out["relevance"]


def assert_k_equals_separate(sess, x, targets):
    """relevance [N, K, ...] of one call against K calls with one target each."""
    together = run(sess, x, targets)
    assert together.shape[:2] == targets.shape[:2]
    scale = np.abs(together).max()
    assert scale > 0
    for k in range(targets.shape[1]):
        alone = run(sess, x, np.ascontiguousarray(targets[:, k:k + 1]))[:, 0]
        assert np.abs(together[:, k] - alone).max() <= 1e-6 * scale, k


@pytest.mark.parametrize("composite", ["epsilon-plus-flat", "epsilon"])
def test_yolov8n_k_targets_in_one_call(composite):
    _, path = yolov8n()
    scores = class_scores(path)
    model = lrpgraph.convert(path, composite=composite, target="index", from_tensor=scores)
    sess = session(model)
    shape = sess.get_outputs()[0].shape
    assert shape == [1, 84, 525]
    x = np.random.default_rng(0).random((1, 3, 160, 160), dtype=np.float32)
    targets = np.array([[[0, 3], [5, 200], [79, 524], [0, 410]]], np.int64)
    assert_k_equals_separate(sess, x, targets)


@functools.cache
def _classifier_bytes():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 5))
    return export(net, torch.rand(2, 3, 16, 16))


def small_classifier():
    return onnx.load_from_string(_classifier_bytes())


def test_classifier_k_targets_equal_classic_layout():
    proto = small_classifier()
    logits = proto.graph.output[0].name
    k_model = lrpgraph.convert(proto, target="index", from_tensor=logits)
    classic = lrpgraph.convert(small_classifier(), target="index")
    x = np.random.default_rng(1).random((3, 3, 16, 16), dtype=np.float32)
    targets = np.array([[[0], [4], [2]], [[1], [1], [3]], [[4], [0], [2]]], np.int64)
    k_sess = ort.InferenceSession(k_model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {k_sess.get_inputs()[0].name: x, "target": targets}
    together = dict(zip([o.name for o in k_sess.get_outputs()], k_sess.run(None, feeds)))["relevance"]
    c_sess = ort.InferenceSession(classic.SerializeToString(), providers=["CPUExecutionProvider"])
    scale = np.abs(together).max()
    for k in range(3):
        feeds = {c_sess.get_inputs()[0].name: x, "target": np.ascontiguousarray(targets[:, k, 0])}
        alone = dict(zip([o.name for o in c_sess.get_outputs()], c_sess.run(None, feeds)))["relevance"]
        assert np.abs(together[:, k] - alone).max() <= 1e-6 * scale
    # the session: [N, K] classes, index tuples and None (the largest logit) on the K-target model
    explainer = ExplainSession(k_model)
    y, r, explained = explainer.explain(x, target=targets[:, :, 0], return_targets=True)
    assert r.shape == (3, 3, 3, 16, 16) and np.abs(r - together).max() <= 1e-6 * scale
    assert np.array_equal(explained, targets)
    _, r_top, top = explainer.explain(x, return_targets=True)
    assert np.array_equal(top[:, 0, 0], y.argmax(1)) and r_top.shape == (3, 1, 3, 16, 16)
    with pytest.raises(LrpgraphError, match="out of range"):
        explainer.explain(x, target=[5, 0, 1])


def head_then(op_type):
    """A conv detector-like head (boxes [1, A, 4], scores [1, C, A]) followed by TopK or NonMaxSuppression."""
    proto = small_classifier()
    g = proto.graph
    logits = g.output[0].name  # [N, 5]
    del g.output[:]
    g.node.append(helper.make_node("Unsqueeze", [logits, "axes0"], ["scores"]))  # [N, 1, 5]
    g.initializer.append(onnx.numpy_helper.from_array(np.array([1], np.int64), "axes0"))
    if op_type == "TopK":
        g.initializer.append(onnx.numpy_helper.from_array(np.array([2], np.int64), "k"))
        g.node.append(helper.make_node("TopK", ["scores", "k"], ["values", "indices"], name="topk", axis=-1))
        g.output.append(helper.make_tensor_value_info("values", TensorProto.FLOAT, None))
    else:
        g.node.append(helper.make_node("Tile", ["scores", "reps"], ["spread"]))  # boxes from the scores: [N, 5, 4]
        g.initializer.append(onnx.numpy_helper.from_array(np.array([1, 4, 1], np.int64), "reps"))
        g.node.append(helper.make_node("Transpose", ["spread"], ["boxes"], perm=[0, 2, 1]))
        g.node.append(helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["selected"], name="nms"))
        g.output.append(helper.make_tensor_value_info("selected", TensorProto.INT64, None))
    return onnx.shape_inference.infer_shapes(proto)


@pytest.mark.parametrize("op_type", ["TopK", "NonMaxSuppression"])
def test_cut_before_an_unexplainable_tail(op_type):
    proto = head_then(op_type)
    with pytest.raises(LrpgraphError, match=rf"{op_type}.*--from scores"):
        lrpgraph.convert(proto)
    model = lrpgraph.convert(head_then(op_type), target="index", from_tensor="scores")
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    assert names[0] in ("values", "selected") and "scores" in names  # the tail still computes the outputs
    x = np.random.default_rng(2).random((2, 3, 16, 16), dtype=np.float32)
    feeds = {sess.get_inputs()[0].name: x, "target": np.array([[[0, 3]], [[0, 1]]], np.int64)}
    relevance = dict(zip(names, sess.run(None, feeds)))["relevance"]
    classic = lrpgraph.convert(small_classifier(), target="index")
    c_sess = session(classic)
    ref = dict(zip([o.name for o in c_sess.get_outputs()],
                   c_sess.run(None, {c_sess.get_inputs()[0].name: x, "target": np.array([3, 1])})))["relevance"]
    assert np.abs(relevance[:, 0] - ref).max() <= 1e-6 * np.abs(ref).max()


def test_from_names_a_tensor_that_exists():
    with pytest.raises(LrpgraphError, match="--from 'nope'"):
        lrpgraph.convert(small_classifier(), from_tensor="nope")


def _ratios(model, prefix):
    return {n.name[len(prefix):] for n in model.graph.node if n.op_type == "Div" and n.name.endswith("/ratio")}


def test_k_targets_share_the_simplified_denominators():
    """The K-target walk reads the forward tensors tiled K times; simplify.denominators rewrites its divisions by
    stab(z) behind a ReLU as it does the classic walk's (a / (a + eps) instead of a sign test) and the heatmaps
    stay equal to K classic calls. (The classic walk's seed y * onehot is a product too; the K-target seed is not.)"""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))
    proto = onnx.load_from_string(export(net, torch.rand(2, 3, 16, 16)))
    classic = lrpgraph.convert(proto, composite="epsilon", target="index")
    k_model = lrpgraph.convert(proto, composite="epsilon", target="index", from_tensor=proto.graph.output[0].name)
    behind_relu = {"node_conv2d/div/ratio", "node_conv2d_1/div/ratio"}
    assert behind_relu <= _ratios(classic, "lrp/") and behind_relu <= _ratios(k_model, "lrp/k/")
    x = np.random.default_rng(3).random((2, 3, 16, 16), dtype=np.float32)
    targets = np.array([[[0], [4]], [[1], [3]]], np.int64)
    k_heat = ExplainSession(k_model).explain(x, target=targets)[1]
    c_sess = ExplainSession(classic)
    for k in range(2):
        alone = c_sess.explain(x, target=targets[:, k, 0])[1]
        assert np.abs(k_heat[:, k] - alone).max() <= 1e-6 * np.abs(alone).max()

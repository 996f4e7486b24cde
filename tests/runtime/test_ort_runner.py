"""lrpgraph.ort.Runner: the one onnxruntime wrapper that ExplainSession, evaluate's HeatmapModel and metrics'
Classifier share; how it feeds target indices and seeds, and its one-line errors."""

import numpy as np
import pytest

from lrpgraph.errors import LrpgraphError
from lrpgraph.metrics import Classifier
from lrpgraph.ort import Runner
from lrpgraph.runtime.evaluate import HeatmapModel
from lrpgraph.runtime.session import ExplainSession


@pytest.mark.parametrize("mode", ["index", "seed", "top"])
def test_session_heatmaps_and_classifier_share_one_runner(make_model, mode):
    model, weight, bias = make_model(mode)
    x = np.random.default_rng(1).random((3, 3, 6, 5), dtype=np.float32)
    classes = np.array([2, 0, 3])
    session, heatmaps, classifier = ExplainSession(model), HeatmapModel(model), Classifier(model)
    assert all(isinstance(r, Runner) for r in (session.runner, heatmaps.runner, classifier.runner))
    logits = classifier.logits(x)
    np.testing.assert_allclose(logits, x.reshape(3, -1) @ weight + bias, rtol=1e-5, atol=1e-5)
    explained = classes if mode != "top" else logits.argmax(1)
    want = x * weight.T[explained].reshape(x.shape)  # LRP-0 of the linear model: x * W[:, t]
    if mode == "seed":  # an LRP composite: the seed is logit x one-hot, linear in the relevance
        want = want * logits[np.arange(3), explained][:, None, None, None]
    np.testing.assert_allclose(heatmaps.heatmaps(x, explained, logits)["relevance"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(session.explain(x, None if mode == "top" else classes)[1], want, rtol=1e-5, atol=1e-5)


def test_target_feeds(make_model):
    index, seed = (Runner(make_model(m)[0], ["CPUExecutionProvider"]) for m in ("index", "seed"))
    classes, logits = np.array([1, 3]), np.array([[0.5, 2.0, 1.0, -1.0], [1.0, 0.0, 3.0, 4.0]], np.float32)
    assert index.target_feed(classes, 4).dtype == np.int64 and index.target_feed(classes, 4).tolist() == [1, 3]
    np.testing.assert_array_equal(seed.target_feed(classes, 4), np.eye(4, dtype=np.float32)[classes])
    np.testing.assert_array_equal(seed.target_feed(classes, 4, logits), [[0, 2.0, 0, 0], [0, 0, 0, 4.0]])
    with pytest.raises(LrpgraphError, match="number of classes is not static"):
        seed.target_feed(classes, None)


def test_one_line_errors(make_model, tmp_path):
    model = make_model("top")[0]
    with pytest.raises(LrpgraphError, match="onnxruntime failed running"):
        Classifier(model).logits(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(LrpgraphError, match="onnxruntime cannot load the given model bytes"):
        Runner(b"not a model", ["CPUExecutionProvider"])
    with pytest.raises(LrpgraphError, match="does not exist"):
        Runner(tmp_path / "missing.onnx", ["CPUExecutionProvider"])

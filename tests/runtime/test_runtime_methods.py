"""ExplainSession with gradient-method models: SmoothGrad's noise seed input, and gradient seeds."""

import numpy as np
import onnxruntime as ort

import lrpgraph
from lrpgraph.runtime.session import ExplainSession
from test_cli import small_cnn


def test_smoothgrad_model_runs_with_the_default_noise_seed():
    converted = lrpgraph.convert(small_cnn(), method="smoothgrad", samples=4)
    x = np.random.default_rng(0).random((3, 2, 6, 6), dtype=np.float32)
    _, relevance = ExplainSession(converted, provider="cpu").explain(x)
    plain = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = plain.run(["relevance"], {"x": x, "noise_seed": np.array([0], np.int64)})[0]
    assert np.array_equal(relevance, expected)


def test_class_index_on_a_gradient_seed_model_is_a_one_hot_gradient():
    x = np.random.default_rng(1).random((3, 2, 6, 6), dtype=np.float32)
    target = np.array([2, 0, 1])
    by_seed = ExplainSession(lrpgraph.convert(small_cnn(), method="gradient", target="seed"), provider="cpu")
    by_index = ExplainSession(lrpgraph.convert(small_cnn(), method="gradient", target="index"), provider="cpu")
    np.testing.assert_allclose(by_seed.explain(x, target=target)[1], by_index.explain(x, target=target)[1],
                               rtol=1e-6, atol=1e-7)

"""A model whose weights are external data (an LLM, as `lrpgraph convert` saves one) is opened with one copy of
each weight (lrpgraph.ort.one_copy_of_weights: no constant folding, no prepacking) after its weight file has been
read through once; what it computes is what onnxruntime's defaults compute."""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lrpgraph import ort as lrp_ort
from lrpgraph.errors import LrpgraphError


def _model(folder, external=True):
    """y = x @ W and y @ Transpose(W), W 64 x 64 (external data in weights.bin when asked)."""
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Transpose", ["W"], ["wt"]),
             helper.make_node("MatMul", ["y", "wt"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 64])],
                              initializer=[numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = str(folder / "model.onnx")
    onnx.save(model, path, save_as_external_data=external, location="weights.bin", size_threshold=0)
    return path


def test_external_weights_are_held_once_and_compute_the_same(tmp_path):
    path = _model(tmp_path)
    options = ort.SessionOptions()
    assert lrp_ort.one_copy_of_weights(path, options) == ["ConstantFolding"]
    assert options.get_session_config_entry("session.disable_prepacking") == "1"
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    runner = lrp_ort.Runner(path, ["CPUExecutionProvider"])
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(runner.run(None, {"x": x})[0], ref, rtol=1e-5, atol=1e-4)


def test_weights_inside_the_model_keep_onnxruntime_defaults(tmp_path):
    assert lrp_ort.one_copy_of_weights(_model(tmp_path, external=False), ort.SessionOptions()) is None


def test_the_weight_file_is_read_through(tmp_path, monkeypatch):
    path = _model(tmp_path)
    read = {}

    def counting_open(name, *args, **kwargs):
        f = open(name, *args, **kwargs)
        inner = f.readinto

        def readinto(block):
            n = inner(block)
            read[name] = read.get(name, 0) + n
            return n

        f.readinto = readinto
        return f

    monkeypatch.setattr(lrp_ort, "open", counting_open, raising=False)
    lrp_ort.one_copy_of_weights(path, ort.SessionOptions())
    weights = str(tmp_path / "weights.bin")
    assert read == {weights: os.path.getsize(weights)}  # every byte of it, once


def test_a_missing_weight_file_is_one_line(tmp_path):
    path = _model(tmp_path)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(LrpgraphError) as error:
        lrp_ort.Runner(path, ["CPUExecutionProvider"])
    assert "\n" not in str(error.value) and "model.onnx" in str(error.value)

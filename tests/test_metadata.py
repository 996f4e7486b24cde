"""lrpgraph.metadata.Record: what convert writes, and models written by lrpgraph 0.1.0 (no "format" key; the
first releases also without explanations, gradient_seed, method_options, webgpu) read the same way by the
runtime session, evaluate, the importer and the trainer."""

import json

import numpy as np
import onnx
import pytest
import torch
from train.fashion_data import tiny_cnn

import lrpgraph
from lrpgraph import metadata
from lrpgraph.pipeline import converted_by
from lrpgraph.errors import LrpgraphError
from lrpgraph.metadata import Record
from lrpgraph.runtime.evaluate import HeatmapModel
from lrpgraph.runtime.session import ExplainSession
from lrpgraph.train import isnet
from lrpgraph.train.importer import import_onnx

PREPROCESS = {"mean": [0.5], "std": [0.25]}
LABELS = ["a", "b", "c", "d"]
# the lrpgraph.config keys convert wrote in 0.1.0 (before the record had a format), and in its first commits
HEAD_KEYS = ["composite", "explanations", "target", "image_input", "logits", "logits_output", "outputs_probabilities",
             "relevance_outputs", "options", "method_options", "webgpu", "overrides", "rules", "gradient_seed"]
FIRST_KEYS = ["composite", "target", "image_input", "logits", "logits_output", "outputs_probabilities",
              "relevance_outputs", "options", "overrides", "rules"]


@pytest.fixture(scope="module")
def converted():
    return lrpgraph.convert(tiny_cnn(), composite="flex", target="seed", flex_epsilon=0.05, preprocess=PREPROCESS,
                            labels=LABELS)


def old_layout(model, keys):
    """A copy of model whose metadata_props are written key by key as lrpgraph 0.1.0 did (no "format")."""
    old = onnx.ModelProto()
    old.CopyFrom(model)
    config = json.loads(next(p.value for p in model.metadata_props if p.key == "lrpgraph.config"))
    del old.metadata_props[:]
    for key, value in (("lrpgraph.version", "0.1.0"),
                       ("lrpgraph.config", json.dumps({k: config[k] for k in keys}, sort_keys=True)),
                       ("lrpgraph.preprocess", json.dumps(PREPROCESS)), ("lrpgraph.labels", json.dumps(LABELS))):
        old.metadata_props.add(key=key, value=value)
    return old


def test_convert_writes_one_versioned_record(converted):
    record = Record.from_model(converted)
    assert record.format == metadata.FORMAT == 1 and record.version == lrpgraph.__version__
    assert record.composite == "flex" and record.target == "seed" and record.explanations == {"relevance": "flex"}
    assert record.options["flex_epsilon"] == 0.05 and record.gradient_seed == {"relevance": True}
    assert record.preprocess == PREPROCESS and record.labels == LABELS
    assert record.rules["relu1"] == "flex-relu:0.05" and record.relevance_outputs == ["relevance"]
    config = metadata.read(converted)[metadata.CONFIG]
    assert sorted(config) == sorted(HEAD_KEYS + ["format"])
    assert Record.from_props(record.to_props()) == record  # the props are the record, nothing more
    assert Record.from_model(tiny_cnn()) is None


@pytest.mark.parametrize("keys", [HEAD_KEYS, FIRST_KEYS], ids=["0.1.0", "first"])
def test_models_written_by_0_1_0_load(converted, keys):
    old = old_layout(converted, keys)
    new_record, old_record = Record.from_model(converted), Record.from_model(old)
    assert old_record.format == 0 and old_record.version == "0.1.0"
    for name in ("composite", "target", "image_input", "logits", "logits_output", "explanations", "gradient_seed",
                 "relevance_outputs", "rules", "options", "preprocess", "labels"):
        assert getattr(old_record, name) == getattr(new_record, name), name
    assert converted_by(old) == "converted by lrpgraph 0.1.0 with composite flex"
    x = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    target = np.array([0, 2, 3])
    # the session: an int target on a seed model is a one-hot gradient seed for flex (no logit scaling)
    logits, relevance = ExplainSession(old).explain(x, target)
    want_logits, want = ExplainSession(converted).explain(x, target)
    np.testing.assert_array_equal(logits, want_logits)
    np.testing.assert_array_equal(relevance, want)
    session = ExplainSession(old)
    assert session.preprocess == PREPROCESS and session.labels == LABELS and session.version == "0.1.0"
    # evaluate
    maps = HeatmapModel(old).heatmaps(x, target, logits)
    np.testing.assert_array_equal(maps["relevance"], want)
    # the importer and the trainer
    module = import_onnx(old)
    seed = torch.nn.functional.one_hot(torch.as_tensor(target), 4).float()
    torch_logits, torch_relevance = module(torch.from_numpy(x), seed=seed)
    np.testing.assert_allclose(torch_relevance.detach().numpy(), want, rtol=1e-4, atol=1e-6)
    assert isnet.resolve("selective", old_record) == isnet.resolve("selective", new_record)
    assert isnet.num_classes(old) == 4 and not any(p.key.startswith("lrpgraph.") for p in
                                                      isnet.strip_relevance(old).metadata_props)


def test_unreadable_metadata_is_one_clear_error(converted):
    broken = onnx.ModelProto()
    broken.CopyFrom(converted)
    metadata.write(broken, metadata.VERSION, "0.1.0")
    next(p for p in broken.metadata_props if p.key == metadata.CONFIG).value = "{not json"
    with pytest.raises(LrpgraphError, match="lrpgraph metadata is not valid JSON"):
        ExplainSession(broken)
    with pytest.raises(LrpgraphError, match="lrpgraph metadata is not valid JSON"):
        Record.from_model(broken)

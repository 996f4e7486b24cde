"""A causal LM's attention probabilities are computed again in the relevance pass (lrpgraph/recompute.py): no node
of the relevance pass reads a forward Softmax's output, onnxruntime runs the copies only once the relevance has
started (they wait for it), and the relevance equals the conversion without the rewrite. Exports by torch's
dynamo and TorchScript exporters and by optimum (its past_key_values fed empty)."""

import json
import os

import numpy as np
import onnxruntime as ort
import pytest

import lrpgraph
from lrpgraph import recompute

pytest.importorskip("transformers")
import llm_models  # noqa: E402

K_TUPLES = np.array([[[8, 5], [3, 17], [6, 2]], [[5, 9], [0, 40], [8, 63]]], np.int64)


def _softmax_readers(model):
    """The relevance nodes (not the copies) that read a forward Softmax's output."""
    forward = {o for n in model.graph.node if not n.name.startswith("lrp/") and n.op_type == "Softmax"
               for o in n.output}
    return [n.name for n in model.graph.node
            if n.name.startswith("lrp/") and "/recompute/" not in n.name and set(n.input) & forward]


def _run(model, feeds, profile_dir=None):
    options = ort.SessionOptions()
    if profile_dir:
        options.enable_profiling, options.profile_file_prefix = True, os.path.join(profile_dir, "p")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out = session.run(["relevance"], feeds)[0]
    if not profile_dir:
        return out, None
    with open(session.end_profiling()) as f:
        names = [e["name"][:-len("_kernel_time")] for e in json.load(f)
                 if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    return out, names


def _export(name, exporter, folder):
    model = llm_models.build(name)
    if exporter == "optimum":
        return llm_models.export_optimum(model, folder)
    return llm_models.export_legacy(model) if exporter == "legacy" else llm_models.export(model)


@pytest.mark.parametrize("name,exporter,composite,target", [
    ("llama", "dynamo", "attn-lrp", "top"), ("qwen2", "dynamo", "cp-lrp", "top"),
    ("gemma3", "dynamo", "attn-lrp", "top"), ("gpt2", "dynamo", "cp-lrp", "top"),
    ("qwen2", "dynamo", "attn-lrp", "index"), ("llama", "dynamo", "cp-lrp", "index"),
    ("gpt2", "legacy", "attn-lrp", "top"), ("gemma3", "optimum", "attn-lrp", "top")])
def test_recomputed_probabilities(name, exporter, composite, target, monkeypatch, tmp_path):
    exported = _export(name, exporter, str(tmp_path / "export"))
    ids, mask = (t.numpy() for t in llm_models.batch())
    feeds = {"input_ids": ids, "attention_mask": mask, **({"target": K_TUPLES} if target == "index" else {})}
    if exporter == "optimum":  # past_key_values fed empty: a prefill
        feeds = llm_models.prefill_feeds(ort.InferenceSession(exported, providers=["CPUExecutionProvider"]), ids,
                                         mask)
    converted = lrpgraph.convert(exported, composite=composite, target=target)
    softmaxes = [n for n in converted.graph.node if n.op_type == "Softmax" and not n.name.startswith("lrp/")]
    copies = [n for n in converted.graph.node if n.op_type == "Softmax" and "/recompute/" in n.name]
    assert len(softmaxes) == 2 and len(copies) == 2  # two layers
    assert _softmax_readers(converted) == []
    got, order = _run(converted, feeds, str(tmp_path))
    # the copies run in the relevance pass: after the forward pass's last Softmax (without the wait, at its side)
    assert min(order.index(c.name) for c in copies) > max(order.index(n.name) for n in softmaxes), order

    with monkeypatch.context() as m:
        m.setattr(recompute, "attention_probabilities", lambda *args: 0)
        kept = lrpgraph.convert(exported, composite=composite, target=target)
    assert len(_softmax_readers(kept)) > 0  # without the rewrite the relevance pass reads the forward's
    ref, _ = _run(kept, feeds)
    assert np.abs(got - ref).sum() <= 1e-6 * np.abs(ref).sum()

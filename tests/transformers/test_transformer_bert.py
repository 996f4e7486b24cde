"""transformers' BertForSequenceClassification (2 layers, hidden 32, 4 heads; random weights), exported with
input_ids, attention_mask and token_type_ids (dynamic batch and length) and a padded batch: relevance per
token [N, L] against LXT 2.1's BERT (float64, in a subprocess), zero on padding."""

import numpy as np
import onnxruntime as ort
import pytest

import lrpgraph

pytest.importorskip("lxt")
pytest.importorskip("transformers")
import lxt_ref  # noqa: E402
import transformer_models as tm  # noqa: E402
from zennit_ref import l1  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bert")
    model = tm.bert(seed=0)
    ids, mask, types = tm.text_batch()
    onnx_bytes = tm.export_text_model(model, ids[:2], mask[:2], types[:2])
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
    np.savez(tmp / "inputs.npz", **feeds)
    return dict(onnx=onnx_bytes, feeds=feeds, state=tm.save_for_reference(model, str(tmp / "bert.pt")), tmp=tmp)


def run(converted, feeds):
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[:2]


@pytest.mark.parametrize("composite", ["attn-lrp", "cp-lrp"])
def test_bert_token_relevance_matches_lxt(bert, composite):
    converted = lrpgraph.convert(bert["onnx"], composite=composite)
    logits, relevance = run(converted, bert["feeds"])
    ref = lxt_ref.run(dict(model="bert", state=bert["state"], inputs=str(bert["tmp"] / "inputs.npz"),
                           method=composite, out=str(bert["tmp"] / f"{composite}.npz")))
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-5)
    assert relevance.shape == bert["feeds"]["input_ids"].shape
    error = l1(relevance, ref["relevance"])
    print(f"BERT {composite}: L1 vs LXT {error:.1e}")
    assert error <= TOL
    # the tokens after the [CLS] position too (most relevance sits on [CLS] with random weights)
    assert l1(relevance[:, 1:], ref["relevance"][:, 1:]) <= TOL
    padding = bert["feeds"]["attention_mask"] == 0
    assert padding.any() and np.all(relevance[padding] == 0)


def test_bert_dynamic_length_and_padding(bert):
    """A shorter batch than the export's runs; padded positions get no relevance; its unpadded sample
    equals the same sample alone (no coupling through the batch)."""
    converted = lrpgraph.convert(bert["onnx"], composite="attn-lrp")
    feeds = {k: v[:, :7] for k, v in bert["feeds"].items()}
    _, relevance = run(converted, feeds)
    assert relevance.shape == (3, 7)
    padding = feeds["attention_mask"] == 0
    assert padding.any() and np.all(relevance[padding] == 0) and np.abs(relevance[~padding]).sum() > 0
    _, alone = run(converted, {k: v[:1] for k, v in feeds.items()})
    np.testing.assert_allclose(alone[0], relevance[0], rtol=1e-5, atol=1e-8)


def test_explain_session_and_cli_for_tokens(bert, tmp_path):
    """ExplainSession takes every input by name (defaults for the others), refuses unknown names and ids out
    of range in one line; `lrpgraph explain` reads ids from .npy and writes tokens.json and an HTML page of
    tokens (strings from a tokenizer.json) coloured by relevance."""
    import json

    from click.testing import CliRunner

    from lrpgraph.cli import main
    from lrpgraph.files import save
    from lrpgraph.errors import LrpgraphError
    from lrpgraph.runtime.session import ExplainSession

    path = tmp_path / "bert.lrp.onnx"
    save(lrpgraph.convert(bert["onnx"], composite="attn-lrp"), path)
    session = ExplainSession(str(path))
    feeds = bert["feeds"]
    logits, relevance = session.explain_inputs(feeds)
    ref_logits, ref_relevance = run(lrpgraph.convert(bert["onnx"], composite="attn-lrp"), feeds)
    np.testing.assert_allclose(relevance, ref_relevance, rtol=1e-6, atol=1e-9)
    ids = feeds["input_ids"][:1]
    _, default = session.explain_inputs({"input_ids": ids})  # mask of ones, segments zero
    _, given = session.explain_inputs({"input_ids": ids, "attention_mask": np.ones_like(ids),
                                       "token_type_ids": np.zeros_like(ids)})
    np.testing.assert_array_equal(default, given)
    with pytest.raises(LrpgraphError, match="no input 'pixel_values'"):
        session.explain_inputs({"input_ids": ids, "pixel_values": ids})
    with pytest.raises(LrpgraphError, match="token id 500 at row 0, position 2 is out of range"):
        session.explain_inputs({"input_ids": np.where(np.arange(12) == 2, 500, ids)})

    np.save(tmp_path / "ids.npy", ids)
    vocab = {"model": {"vocab": {f"w{i}": i for i in range(120)}}, "added_tokens": [{"id": 0, "content": "[PAD]"}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(vocab))
    out = tmp_path / "tok"
    result = CliRunner().invoke(main, ["explain", str(path), str(tmp_path / "ids.npy"), "--vocab",
                                       str(tmp_path / "tokenizer.json"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "tokens.json").read_text())
    assert records[0]["tokens"][1] == f"w{ids[0, 1]}"
    np.testing.assert_allclose(records[0]["relevance"], default[0], rtol=1e-6)
    page = (out / "index.html").read_text()
    assert page.count("<span") == ids.shape[1] and "background:rgba(" in page
    np.save(tmp_path / "bad.npy", np.full((1, 5), 999))
    bad = CliRunner().invoke(main, ["explain", str(path), str(tmp_path / "bad.npy"), "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1 and "out of range" in bad.output



@pytest.mark.parametrize("target", ["index", "seed"])
def test_explain_session_targets_for_tokens(bert, target):
    """A text model converted with a target input: ExplainSession's target loop (the one images use) explains
    the predicted class by default, as the model converted with target 'top' (its argmax in the graph), and a
    given class as the class index (index) or the seed (seed: one-hot, attn-lrp being gradient-seeded; logit x
    one-hot for an LRP-seeded composite) fed by hand to onnxruntime."""
    from lrpgraph.composites import GRADIENT_COMPOSITES
    from lrpgraph.runtime.session import ExplainSession

    feeds = bert["feeds"]
    top_logits, top = run(lrpgraph.convert(bert["onnx"], composite="attn-lrp"), feeds)
    converted = lrpgraph.convert(bert["onnx"], composite="attn-lrp", target=target)
    session = ExplainSession(converted.SerializeToString())
    logits, relevance = session.explain_inputs(feeds)
    np.testing.assert_allclose(logits, top_logits, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(relevance, top, rtol=1e-5, atol=1e-7)
    other = (top_logits.argmax(1) + 1) % top_logits.shape[1]
    _, given = session.explain_inputs(feeds, target=other)
    onehot = np.eye(top_logits.shape[1], dtype=np.float32)[other]
    seed = onehot if "attn-lrp" in GRADIENT_COMPOSITES else onehot * top_logits
    fed = {"target": other.astype(np.int64)} if target == "index" else {"relevance_seed": seed}
    _, expected = run(converted, {**feeds, **fed})
    np.testing.assert_allclose(given, expected, rtol=1e-5, atol=1e-7)
    assert np.abs(given - relevance).max() > 0  # another class, another heatmap

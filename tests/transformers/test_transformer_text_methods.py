"""The small BERT (transformers' BertForSequenceClassification, random weights, padded batch) beyond LXT
parity: the gradient-family methods act on the word embeddings e and equal torch autograd in float64
(gradient: its L2 norm per token; input x gradient, IG and guided IG from the zero embedding: sums over the
hidden axis; SmoothGrad with the graph's own noise, drawn again in numpy); the torch importer runs the
converted BERT as onnxruntime does."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import lrpgraph

pytest.importorskip("transformers")
import transformer_models as tm  # noqa: E402
from zennit_ref import l1  # noqa: E402

from lrpgraph.methods.smooth import SEED_INPUT, noise  # noqa: E402
from lrpgraph.train.importer import import_onnx  # noqa: E402

STEPS, SAMPLES, LEVEL = 4, 3, 0.1


@pytest.fixture(scope="module")
def bert():
    ids, mask, types = tm.text_batch()
    onnx_bytes = tm.export_text_model(tm.bert(seed=0), ids[:2], mask[:2], types[:2])
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
    return onnx_bytes, feeds


def run(converted, feeds):
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}}
    return dict(zip(names, session.run(None, feeds)))


def test_gradient_methods_on_embeddings_match_autograd(bert):
    onnx_bytes, feeds = bert
    model = tm.bert(seed=0).double()
    ids, mask, types = (torch.tensor(feeds[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    e = model.bert.embeddings.word_embeddings(ids).detach()
    classes = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.argmax(1)

    def grad_at(points):
        points = points.clone().requires_grad_(True)
        y = model(inputs_embeds=points, attention_mask=mask, token_type_ids=types).logits
        (g,) = torch.autograd.grad(y[torch.arange(len(points)), classes].sum(), points)
        return g

    g = grad_at(e)
    ig = (e * sum(grad_at(e * k / STEPS) for k in range(1, STEPS + 1)) / STEPS).sum(-1)
    spread = (e.amax((1, 2), keepdim=True) - e.amin((1, 2), keepdim=True)) * LEVEL
    eps = torch.tensor(noise(7, (SAMPLES,) + tuple(e.shape)), dtype=torch.float64)
    smooth = sum(grad_at(e + spread * eps[i]) for i in range(SAMPLES)) / SAMPLES
    expected = {"g": g.norm(dim=-1), "ixg": (g * e).sum(-1), "ig": ig, "gig": ig, "sg": smooth.norm(dim=-1)}

    converted = lrpgraph.convert(onnx_bytes, explain={"g": "gradient", "ixg": "input-x-gradient", "ig": "ig",
                                                      "gig": "guided-ig", "sg": "smoothgrad"},
                                 steps=STEPS, samples=SAMPLES, noise_level=LEVEL)
    out = run(converted, {**feeds, SEED_INPUT: np.array([7], np.int64)})
    padding = feeds["attention_mask"] == 0
    for name, ref in expected.items():
        ours, ref = out[f"relevance_{name}"], ref.numpy()
        assert ours.shape == feeds["input_ids"].shape
        print(f"BERT {name}: L1 vs autograd {l1(ours, ref):.1e}")
        assert l1(ours, ref) <= 1e-5, name
        assert l1(ours[:, 1:], ref[:, 1:]) <= 1e-5, name  # the tokens after [CLS] too
        assert np.all(np.abs(ours[padding]) <= 1e-6 * np.abs(ours).max()), name


def test_ig_refuses_a_baseline_other_than_zero_on_tokens(bert):
    with pytest.raises(lrpgraph.LrpgraphError, match="zero embedding"):
        lrpgraph.convert(bert[0], method="ig", baseline="blur")


@pytest.mark.parametrize("composite", ["attn-lrp", "cp-lrp"])
def test_importer_matches_onnxruntime_on_bert(bert, composite):
    onnx_bytes, feeds = bert
    converted = lrpgraph.convert(onnx_bytes, composite=composite)
    ref = run(converted, feeds)
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in import_onnx(converted).run(feeds).items()}
    for name, value in ref.items():
        assert l1(ours[name], value) <= 1e-5, name


def test_explain_reads_json_lines(bert, tmp_path):
    """`lrpgraph explain` reads token ids (and masks) from JSON lines, one sequence a line, any length; masked
    tokens get zero relevance and are left out of the page; a malformed line is refused in one line."""
    import json

    from click.testing import CliRunner

    from lrpgraph.cli import main
    from lrpgraph.files import save

    onnx_bytes, feeds = bert
    path = tmp_path / "bert.lrp.onnx"
    converted = lrpgraph.convert(onnx_bytes, composite="attn-lrp")
    save(converted, path)
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    rows = [{"input_ids": ids[1].tolist(), "attention_mask": mask[1].tolist()}, {"input_ids": ids[2, :5].tolist()}]
    (tmp_path / "ids.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = CliRunner().invoke(main, ["explain", str(path), str(tmp_path / "ids.jsonl"), "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "t" / "tokens.json").read_text())
    assert [len(r["relevance"]) for r in records] == [12, 5]
    one = {"input_ids": ids[1:2], "attention_mask": mask[1:2], "token_type_ids": np.zeros_like(ids[1:2])}
    np.testing.assert_allclose(records[0]["relevance"], run(converted, one)["relevance"][0], rtol=1e-5, atol=1e-9)
    assert all(v == 0 for v, m in zip(records[0]["relevance"], mask[1]) if not m)
    page = (tmp_path / "t" / "index.html").read_text()
    assert page.count("<span") == int(mask[1].sum()) + 5
    (tmp_path / "bad.jsonl").write_text('{"input_ids": [1, 2, 3]}\nnot json\n')
    bad = CliRunner().invoke(main, ["explain", str(path), str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1 and "line 2" in bad.output
    assert not (tmp_path / "b" / "tokens.json").exists()


def test_legacy_export_at_opset_17_explains_alike(bert):
    """The same BERT exported by the legacy exporter at opset 17 (GELU written out with Erf, Constant nodes,
    the axes of reductions as attributes): attn-lrp, cp-lrp, gradient and IG give the heatmaps of the dynamo
    export (opset 20), which the tests above check against LXT and autograd."""
    import io

    onnx_bytes, feeds = bert
    ids, mask, types = (torch.tensor(feeds[k][:2]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    f = io.BytesIO()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(tm._Logits(tm.bert(seed=0)), (ids, mask, types), f, dynamo=False, opset_version=17,
                      input_names=names, output_names=["logits"], dynamic_axes={k: {0: "N", 1: "L"} for k in names})
    explain = {"a": "attn-lrp", "c": "cp-lrp", "g": "gradient", "ig": "ig"}
    legacy = run(lrpgraph.convert(f.getvalue(), explain=explain, steps=STEPS), feeds)
    dynamo = run(lrpgraph.convert(onnx_bytes, explain=explain, steps=STEPS), feeds)
    for name in explain:
        assert l1(legacy[f"relevance_{name}"], dynamo[f"relevance_{name}"]) <= 1e-5, name

"""Causal LMs (transformers' Llama, Qwen2, Gemma 3, GPT-2 with random weights) exported with torch.onnx.export
(dynamo and the TorchScript exporter) and with optimum-onnx:
next-token relevance per input token [N, L] under attn-lrp and cp-lrp against LXT 2.1's efficient mode (float64,
one subprocess per method for all models) on a padded batch of two prompts; padding tokens exactly 0; K = 3
(position, token) targets per sample in one call equal to three calls and to LXT; decoder sequence
classifiers (the last non-padding token's logits) against LXT too."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import lrpgraph

pytest.importorskip("lxt")
pytest.importorskip("transformers")
import llm_models  # noqa: E402
import lxt_llm_ref  # noqa: E402

TOL = 1e-4
MODELS = list(llm_models.CONFIGS)
CLASSIFIERS = list(llm_models.CLASSIFIERS)
K_TUPLES = np.array([[[8, 5], [3, 17], [0, 40]], [[5, 9], [2, 33], [4, 1]]], np.int64)  # (position, token)


def l1(a, ref):
    return float(np.abs(a - ref).sum() / np.abs(ref).sum())


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    """{name: the exported model, its feeds and state} for every model, the feeds written for LXT."""
    tmp = tmp_path_factory.mktemp("llm")
    ids, mask = llm_models.batch()
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    np.savez(tmp / "inputs.npz", **feeds)
    out = {}
    for name in MODELS + CLASSIFIERS:
        model = llm_models.build(name)
        torch.save(model.state_dict(), tmp / f"{name}.pt")
        out[name] = dict(onnx=llm_models.export(model), feeds=feeds, state=str(tmp / f"{name}.pt"))
    return dict(models=out, tmp=tmp)


@pytest.fixture(scope="module")
def lxt(lms):
    """{method: {(model, 'top' or 'k'): LXT's logits and relevance}}: one subprocess per method."""
    tmp, refs = lms["tmp"], {}
    k_targets = [[n, int(p), int(t)] for n in range(2) for p, t in K_TUPLES[n]]
    for method in ("attn-lrp", "cp-lrp"):
        keys = [(name, tag) for name in MODELS for tag in (("top", "k") if method == "attn-lrp" else ("top",))]
        keys += [(name, "top") for name in CLASSIFIERS]
        cases = [dict(model=name, state=lms["models"][name]["state"], inputs=str(tmp / "inputs.npz"),
                      targets=k_targets if tag == "k" else None) for name, tag in keys]
        arrays = lxt_llm_ref.run(dict(method=method, cases=cases, out=str(tmp / f"{method}.npz")))
        refs[method] = {key: {"logits": arrays[f"{i}_logits"], "relevance": arrays[f"{i}_relevance"]}
                        for i, key in enumerate(keys)}
    return refs


def run(converted, feeds):
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits", "relevance"], feeds)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("composite", ["attn-lrp", "cp-lrp"])
def test_next_token_relevance_matches_lxt(lms, lxt, name, composite):
    lm, ref = lms["models"][name], lxt[composite][(name, "top")]
    converted = lrpgraph.convert(lm["onnx"], composite=composite)
    logits, relevance = run(converted, lm["feeds"])
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-5)
    assert relevance.shape == lm["feeds"]["input_ids"].shape
    error = l1(relevance, ref["relevance"])
    print(f"{name} {composite}: L1 vs LXT {error:.1e}")
    assert error <= TOL
    assert l1(relevance[:, :-1], ref["relevance"][:, :-1]) <= TOL  # the tokens before the last one too
    padding = lm["feeds"]["attention_mask"] == 0
    assert padding.any() and np.all(relevance[padding] == 0)
    if composite == "attn-lrp":  # the torch importer (ISNet training) runs the converted graph as onnxruntime does
        from lrpgraph.train.importer import import_onnx

        with torch.no_grad():
            again = import_onnx(converted).run(lm["feeds"])["relevance"].numpy()
        assert l1(again, relevance) <= 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_k_targets_in_one_call(lms, lxt, name):
    """target 'index': K = 3 (position, token) tuples per sample in one call give [N, 3, L], equal to three
    calls with one tuple each and to LXT's relevance of each of those logits."""
    lm = lms["models"][name]
    converted = lrpgraph.convert(lm["onnx"], composite="attn-lrp", target="index")
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = lm["feeds"]
    together = session.run(["relevance"], {**feeds, "target": K_TUPLES})[0]
    assert together.shape == (2, 3, feeds["input_ids"].shape[1])
    for k in range(3):
        alone = session.run(["relevance"], {**feeds, "target": K_TUPLES[:, k:k + 1]})[0]
        np.testing.assert_allclose(together[:, k], alone[:, 0], rtol=1e-5, atol=1e-8)
    error = l1(together, lxt["attn-lrp"][(name, "k")]["relevance"].reshape(2, 3, -1))
    print(f"{name} K=3 targets: L1 vs LXT {error:.1e}")
    assert error <= TOL
    padding = np.broadcast_to(feeds["attention_mask"][:, None] == 0, together.shape)
    assert np.all(together[padding] == 0)


@pytest.mark.parametrize("name", MODELS)
def test_legacy_exporter(lms, lxt, name):
    """The TorchScript exporter's graph (dynamo=False; the mask built without vmap while exporting,
    llm_models.export_legacy) gives LXT's next-token relevance too."""
    lm, ref = lms["models"][name], lxt["attn-lrp"][(name, "top")]
    model = llm_models.build(name)
    model.load_state_dict(torch.load(lm["state"]))
    converted = lrpgraph.convert(llm_models.export_legacy(model), composite="attn-lrp")
    logits, relevance = run(converted, lm["feeds"])
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-5)
    error = l1(relevance, ref["relevance"])
    print(f"{name} legacy export attn-lrp: L1 vs LXT {error:.1e}")
    assert error <= TOL and np.all(relevance[lm["feeds"]["attention_mask"] == 0] == 0)


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("composite", ["attn-lrp", "cp-lrp"])
def test_sequence_classifier_matches_lxt(lms, lxt, name, composite):
    """LlamaForSequenceClassification and GPT2ForSequenceClassification pool the last token that is not
    padding, found from the ids (Equal, Not, ArgMax, a GatherND with the computed index): relevance goes back
    through the GatherND to that token's position, the index gets none; the predicted class against LXT."""
    lm, ref = lms["models"][name], lxt[composite][(name, "top")]
    converted = lrpgraph.convert(lm["onnx"], composite=composite)
    logits, relevance = run(converted, lm["feeds"])
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-5)
    assert relevance.shape == lm["feeds"]["input_ids"].shape
    error = l1(relevance, ref["relevance"])
    print(f"{name} {composite}: L1 vs LXT {error:.1e}")
    assert error <= TOL and np.all(relevance[lm["feeds"]["attention_mask"] == 0] == 0)


@pytest.mark.parametrize("name", MODELS)
def test_optimum_export(lms, lxt, name, tmp_path):
    """optimum-onnx's text-generation-with-past graph, fed as a prefill (every past_key_values input empty):
    LXT's next-token relevance, and the logits and present.* outputs kept, bit-identical to the unconverted
    model's (both run without onnxruntime's fusions)."""
    pytest.importorskip("optimum.exporters.onnx")
    lm, ref = lms["models"][name], lxt["attn-lrp"][(name, "top")]
    model = llm_models.build(name)
    model.load_state_dict(torch.load(lm["state"]))
    exported = llm_models.export_optimum(model, str(tmp_path))
    plain = ort.SessionOptions()  # no fusions: they differ in rounding once the forward's tensors have more readers
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    original = ort.InferenceSession(exported, plain, providers=["CPUExecutionProvider"])
    feeds = llm_models.prefill_feeds(original, lm["feeds"]["input_ids"], lm["feeds"]["attention_mask"])
    session = ort.InferenceSession(lrpgraph.convert(exported, composite="attn-lrp").SerializeToString(), plain,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in original.get_outputs()]
    assert names[0] == "logits" and any(n.startswith("present.") for n in names)
    ours = dict(zip(names + ["relevance"], session.run(names + ["relevance"], feeds)))
    for key, value in zip(names, original.run(names, feeds)):
        np.testing.assert_array_equal(ours[key], value)
    np.testing.assert_allclose(ours["logits"], ref["logits"], rtol=1e-4, atol=1e-5)
    error = l1(ours["relevance"], ref["relevance"])
    print(f"{name} optimum export attn-lrp: L1 vs LXT {error:.1e}")
    assert error <= TOL and np.all(ours["relevance"][lm["feeds"]["attention_mask"] == 0] == 0)


def test_seed_and_all_targets_and_session(lms):
    """target 'seed' with one-hot seeds [N, K, L, V] equals 'index' at those tuples; 'all' equals the seed of
    ones; ExplainSession feeds K tuples per sample as onnxruntime does, explains the next token without a
    target, and refuses a position past the length in one line."""
    from lrpgraph.errors import LrpgraphError
    from lrpgraph.runtime.session import ExplainSession

    lm = lms["models"]["llama"]
    feeds, length = lm["feeds"], lm["feeds"]["input_ids"].shape[1]
    by_index = ort.InferenceSession(lrpgraph.convert(lm["onnx"], composite="attn-lrp", target="index")
                                    .SerializeToString(), providers=["CPUExecutionProvider"])
    by_seed = ort.InferenceSession(lrpgraph.convert(lm["onnx"], composite="attn-lrp", target="seed")
                                   .SerializeToString(), providers=["CPUExecutionProvider"])
    onehot = np.zeros((2, 3, length, llm_models.VOCAB), np.float32)
    for n in range(2):
        for k, (p, t) in enumerate(K_TUPLES[n]):
            onehot[n, k, p, t] = 1.0
    indexed = by_index.run(["relevance"], {**feeds, "target": K_TUPLES})[0]
    seeded = by_seed.run(["relevance"], {**feeds, "relevance_seed": onehot})[0]
    np.testing.assert_allclose(seeded, indexed, rtol=1e-5, atol=1e-8)
    everything = lrpgraph.convert(lm["onnx"], composite="attn-lrp", target="all")
    _, all_relevance = run(everything, feeds)
    ones = by_seed.run(["relevance"], {**feeds, "relevance_seed": np.ones_like(onehot[:, :1])})[0]
    np.testing.assert_allclose(all_relevance, ones[:, 0], rtol=1e-4, atol=1e-7)
    session = ExplainSession(lrpgraph.convert(lm["onnx"], composite="attn-lrp", target="index").SerializeToString())
    _, relevance = session.explain_inputs(feeds, target=K_TUPLES)
    np.testing.assert_allclose(relevance, indexed, rtol=1e-6, atol=1e-9)
    _, predicted = session.explain_inputs(feeds)  # no target: the next token, as target 'top' explains it
    _, top = run(lrpgraph.convert(lm["onnx"], composite="attn-lrp"), feeds)
    np.testing.assert_allclose(predicted[:, 0], top, rtol=1e-5, atol=1e-8)
    with pytest.raises(LrpgraphError, match="out of range") as error:
        session.explain_inputs(feeds, target=np.array([[length, 3]]))
    assert "\n" not in str(error.value)


def test_input_x_gradient_matches_autograd(lms):
    """method input-x-gradient on the next token (the baseline a causal LM's AttnLRP is compared with): the
    embedding times the plain gradient of that logit, summed over the hidden axis, as torch autograd gives it in
    float64; padding exactly 0."""
    lm = lms["models"]["llama"]
    converted = lrpgraph.convert(lm["onnx"], method="input-x-gradient")
    _, relevance = run(converted, lm["feeds"])
    model = llm_models.build("llama")
    model.load_state_dict(torch.load(lm["state"]))
    model = model.double()
    ids, mask = (torch.from_numpy(lm["feeds"][k]) for k in ("input_ids", "attention_mask"))
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, attention_mask=mask).logits
    last = (mask * torch.arange(1, mask.shape[1] + 1)).argmax(1)
    explained = sum(logits[n, p, logits[n, p].argmax()] for n, p in enumerate(last))
    (grad,) = torch.autograd.grad(explained, embeds)
    ref = (embeds * grad).sum(-1).detach().numpy()
    assert l1(relevance, ref) <= TOL
    assert np.all(relevance[lm["feeds"]["attention_mask"] == 0] == 0)

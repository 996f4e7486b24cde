"""Causal LMs (transformers, random weights) exported with torch.onnx.export: next-token relevance per input
token [N, L] under attn-lrp and cp-lrp against LXT 2.1's efficient mode (float64, in a subprocess) on a padded
batch of two prompts; padding tokens exactly 0; K (position, token) targets per sample in one call."""

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


def l1(a, ref):
    return float(np.abs(a - ref).sum() / np.abs(ref).sum())


@pytest.fixture(scope="module", params=MODELS)
def lm(request, tmp_path_factory):
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    model = llm_models.build(name)
    ids, mask = llm_models.batch()
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    np.savez(tmp / "inputs.npz", **feeds)
    torch.save(model.state_dict(), tmp / "state.pt")
    return dict(name=name, onnx=llm_models.export(model), feeds=feeds, state=str(tmp / "state.pt"), tmp=tmp)


def run(converted, feeds):
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits", "relevance"], feeds)


def reference(lm, method, targets=None):
    tag = "top" if targets is None else "k"
    return lxt_llm_ref.run(dict(model=lm["name"], state=lm["state"], inputs=str(lm["tmp"] / "inputs.npz"),
                                method=method, targets=targets, out=str(lm["tmp"] / f"{method}_{tag}.npz")))


@pytest.mark.parametrize("composite", ["attn-lrp", "cp-lrp"])
def test_next_token_relevance_matches_lxt(lm, composite):
    converted = lrpgraph.convert(lm["onnx"], composite=composite)
    logits, relevance = run(converted, lm["feeds"])
    ref = reference(lm, composite)
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-5)
    assert relevance.shape == lm["feeds"]["input_ids"].shape
    error = l1(relevance, ref["relevance"])
    print(f"{lm['name']} {composite}: L1 vs LXT {error:.1e}")
    assert error <= TOL
    assert l1(relevance[:, :-1], ref["relevance"][:, :-1]) <= TOL  # the tokens before the last one too
    padding = lm["feeds"]["attention_mask"] == 0
    assert padding.any() and np.all(relevance[padding] == 0)


def test_k_targets_in_one_call(lm):
    """target 'index': K = 3 (position, token) tuples per sample in one call give [N, 3, L], equal to three
    calls with one tuple each and to LXT's relevance of each of those logits."""
    converted = lrpgraph.convert(lm["onnx"], composite="attn-lrp", target="index")
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = lm["feeds"]
    tuples = np.array([[[8, 5], [3, 17], [0, 40]], [[5, 9], [2, 33], [4, 1]]], np.int64)
    together = session.run(["relevance"], {**feeds, "target": tuples})[0]
    assert together.shape == (2, 3, feeds["input_ids"].shape[1])
    for k in range(3):
        alone = session.run(["relevance"], {**feeds, "target": tuples[:, k:k + 1]})[0]
        np.testing.assert_allclose(together[:, k], alone[:, 0], rtol=1e-5, atol=1e-8)
    targets = [[n, int(p), int(t)] for n in range(2) for p, t in tuples[n]]
    ref = reference(lm, "attn-lrp", targets)["relevance"].reshape(2, 3, -1)
    error = l1(together, ref)
    print(f"{lm['name']} K=3 targets: L1 vs LXT {error:.1e}")
    assert error <= TOL
    padding = np.broadcast_to(feeds["attention_mask"][:, None] == 0, together.shape)
    assert np.all(together[padding] == 0)

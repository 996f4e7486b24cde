"""Phi-3 (transformers' Phi3ForCausalLM: one fused qkv projection split into q, k, v, and one fused gate_up
projection chunked into gate and up) exported with torch.onnx.export. LXT 2.1 has no Phi-3 patch map
(lxt.efficient.models: bert, gemma3, gpt2, llama, qwen2, qwen3, vit_torch), so its AttnLRP has no reference
here: the graph converts under attn-lrp and cp-lrp (finite relevance, padding exactly 0), and `--method
gradient` (the L2 norm of the gradient at each token's embedding) equals torch autograd in float64. GPT-2's
gradient too: its token ids reach the embedding table through a Reshape."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import lrpgraph

pytest.importorskip("transformers")
import llm_models  # noqa: E402

TOL = 1e-4


def phi3() -> torch.nn.Module:
    """A random Phi3ForCausalLM of llm_models' small size (norm scales 1 + N(0, 0.1), eager attention)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.Phi3Config(**llm_models.SMALL, pad_token_id=0, attn_implementation="eager",
                                     use_cache=False)
    model = transformers.Phi3ForCausalLM(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def gradient_norms(model, ids, mask) -> np.ndarray:
    """||d y / d e_t||_2 per token t, y the next token's logit (the argmax at the last real position), float64."""
    model = model.double()
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
    last = (mask * torch.arange(1, mask.shape[1] + 1)).argmax(1)
    explained = sum(logits[n, p, logits[n, p].argmax()] for n, p in enumerate(last))
    (grad,) = torch.autograd.grad(explained, embeds)
    return grad.norm(dim=-1).numpy()


@pytest.mark.parametrize("name", ["phi3", "gpt2"])
def test_gradient_matches_autograd(name):
    model = phi3() if name == "phi3" else llm_models.build(name)
    ids, mask = llm_models.batch()
    exported = llm_models.export(model)
    session = ort.InferenceSession(lrpgraph.convert(exported, method="gradient").SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    relevance = session.run(["relevance"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    ref = gradient_norms(model, ids, mask)
    error = float(np.abs(relevance - ref).sum() / np.abs(ref).sum())
    print(f"{name} gradient: L1 vs torch autograd {error:.1e}")
    assert error <= TOL
    assert np.all(relevance[mask.numpy() == 0] == 0)


def test_phi3_converts_under_the_transformer_composites():
    model = phi3()
    ids, mask = llm_models.batch()
    exported = llm_models.export(model)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    plain = ort.InferenceSession(exported, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    for composite in ("attn-lrp", "cp-lrp"):
        session = ort.InferenceSession(lrpgraph.convert(exported, composite=composite).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        logits, relevance = session.run(["logits", "relevance"], feeds)
        np.testing.assert_array_equal(logits, plain)
        assert relevance.shape == ids.shape and np.isfinite(relevance).all()
        assert np.all(relevance[mask.numpy() == 0] == 0) and np.abs(relevance).sum() > 0

"""onnxruntime-genai's own graphs (docs/llm_genai.md): small random Llama and Qwen2 built by the genai model
builder 0.12.2 (fp32 and int4), converted with attn-lrp and cp-lrp. Next-token relevance of a padded batch of
two prompts, K = 2 (position, token) targets per prompt in one call, against LXT 2.1 in float64 on the same
Hugging Face weights (a subprocess); the int4 graph against the same reference on its dequantized weights, its
logits and present.* outputs bit-identical to the unconverted int4 model's."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import lrpgraph
from lrpgraph.catalog.contrib import dequantize_nbits
from lrpgraph.errors import UnsupportedModelError

pytest.importorskip("onnxruntime_genai", reason="make setup installs onnxruntime-genai==0.12.2 (--no-deps)")
pytest.importorskip("lxt")
import genai_lxt_ref  # noqa: E402
import genai_models as gm  # noqa: E402

TOL = 1e-4
IDS = np.array([[5, 9, 3, 17, 2, 40], [7, 1, 22, 8, 0, 0]], np.int64)
MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], np.int64)  # right padding, as GroupQueryAttention takes it
TARGETS = [[[5, 11], [3, 4]], [[3, 20], [1, 2]]]  # (position, token) per prompt: the last real one and another


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """{arch: {"hf": dir, "fp32": model.onnx, "int4": model.onnx}}."""
    tmp = tmp_path_factory.mktemp("genai")
    jobs = [("llama", "fp32", "cpu"), ("llama", "int4", "cpu"), ("llama", "int4", "dml"), ("qwen2", "fp32", "cpu"),
            ("qwen2", "int4", "cpu")]
    out = {arch: {"hf": gm.save_hf(arch, str(tmp))} for arch in ("llama", "qwen2")}
    paths = gm.build_all([(out[arch]["hf"], str(tmp / f"{arch}_{p}_{ep}"), p, ep) for arch, p, ep in jobs])
    for (arch, p, ep), path in zip(jobs, paths):
        out[arch][p if ep == "cpu" else f"{p}_{ep}"] = path
    out["llama"]["rotary"] = gm.as_float32(out["llama"]["int4_dml"], str(tmp / "llama_rotary.onnx"),
                                             out["llama"]["int4"])
    return out


@pytest.fixture(scope="module")
def reference(built, tmp_path_factory):
    """LXT's relevance for IDS/MASK/TARGETS on the Hugging Face weights: reference(arch, method), computed once."""
    tmp, done = tmp_path_factory.mktemp("lxt"), {}

    def get(arch, method):
        if (arch, method) not in done:
            done[arch, method] = genai_lxt_ref.run({"arch": arch, "dir": built[arch]["hf"], "ids": IDS.tolist(),
                                                    "mask": MASK.tolist(), "targets": TARGETS, "method": method,
                                                    "out": str(tmp / f"{arch}_{method}.npz")})
        return done[arch, method]

    return get


def explain(path, composite):
    """(converted session, its outputs for IDS/MASK/TARGETS, the unconverted model's outputs)."""
    converted = lrpgraph.convert(gm.fixed_length(path, *IDS.shape), composite=composite, from_tensor="logits",
                                 target="index")
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = gm.feeds(session, IDS, MASK)
    original = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feed)
    return session, session.run(None, dict(feed, target=np.array(TARGETS, np.int64))), original, feed


def l1_errors(relevance, reference):
    return [float(np.abs(relevance[n, k] - reference[n, k]).sum() / np.abs(reference[n, k]).sum())
            for n in range(len(TARGETS)) for k in range(len(TARGETS[n]))]


def test_the_builder_writes_the_contrib_ops(built):
    kinds = {p: {(n.domain, n.op_type) for n in onnx.load(built["llama"][p], load_external_data=False).graph.node}
             for p in ("fp32", "int4")}
    for ops in kinds.values():  # (the -e dml graph: RotaryEmbedding beside GroupQueryAttention, in float16)
        assert {("com.microsoft", "GroupQueryAttention"), ("com.microsoft", "SkipSimplifiedLayerNormalization"),
                ("", "SimplifiedLayerNormalization")} <= ops
    assert ("com.microsoft", "MatMulNBits") in kinds["int4"] and ("com.microsoft", "MatMulNBits") not in kinds["fp32"]


@pytest.mark.parametrize("arch, composite", [("llama", "attn-lrp"), ("qwen2", "attn-lrp"), ("llama", "cp-lrp")])
def test_fp32_graph_matches_lxt(built, reference, arch, composite):
    """Against LXT's attnLRP and cp_LRP maps (cp_LRP: query and key detached in the attention, the gated MLP's
    activated gate held constant, as lrpgraph's cp-lrp does)."""
    _, outs, original, _ = explain(built[arch]["fp32"], composite)
    assert all(np.array_equal(a, b) for a, b in zip(outs[:len(original)], original)), "outputs changed"
    ref = reference(arch, composite)
    relevance = outs[-1]
    assert relevance.shape == (2, 2, IDS.shape[1])
    errors = l1_errors(relevance, ref["relevance"])
    print(arch, composite, "L1 relative to LXT:", ["%.1e" % e for e in errors])
    assert max(errors) <= TOL
    assert np.all(relevance[1, :, 4:] == 0.0), "padding tokens get no relevance"


@pytest.mark.parametrize("arch, graph", [("qwen2", "int4"), ("llama", "rotary")])
def test_int4_graph_matches_a_reference_on_its_dequantized_weights(built, arch, graph, tmp_path):
    """int4: Qwen2's CPU graph (rotary inside GroupQueryAttention, packed qkv, a bias Add after MatMulNBits);
    rotary: Llama's `-e dml` graph (a separate RotaryEmbedding for q and k, unpacked q, k, v, position_ids) made
    float32."""
    path = built[arch][graph]
    _, outs, original, feed = explain(path, "attn-lrp")
    assert all(np.array_equal(a, b) for a, b in zip(outs[:len(original)], original)), "int4 outputs changed"
    np.savez(tmp_path / "w.npz", **gm.dequantized_weights(path, built[arch]["hf"]))
    np.savez(tmp_path / "a.npz", **gm.linear_outputs(path, built[arch]["hf"], feed, str(tmp_path)))
    ref = genai_lxt_ref.run({"arch": arch, "dir": built[arch]["hf"], "ids": IDS.tolist(), "mask": MASK.tolist(),
                             "targets": TARGETS, "method": "attn-lrp", "out": str(tmp_path / "ref.npz"),
                             "weights": str(tmp_path / "w.npz"), "activations": str(tmp_path / "a.npz")})
    assert np.array_equal(ref["logits"].astype(np.float32), original[0])  # the reference ran the int4 forward
    errors = l1_errors(outs[-1], ref["relevance"])
    print(arch, graph, "L1 relative to the dequantized reference:", ["%.1e" % e for e in errors])
    assert max(errors) <= TOL


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fp32_graph_matches_the_torch_export(built, arch):
    """The genai builder's fp32 graph (GroupQueryAttention, SkipSimplifiedLayerNormalization, packed or fused
    projections) and torch.onnx.export's graph (dynamo) of the same Hugging Face weights, both converted with
    attn-lrp: the same relevance for the same K targets, and the same logits."""
    import torch
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(built[arch]["hf"], dtype=torch.float32,
                                                           attn_implementation="eager").eval()

    from llm_models import Logits

    dims = {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("length", min=2, max=32)}
    program = torch.onnx.export(Logits(hf), (torch.tensor(IDS), torch.tensor(MASK)), None, verbose=False,
                                input_names=["input_ids", "attention_mask"], output_names=["logits"],
                                dynamic_shapes=(dims, dims))
    exported = lrpgraph.convert(program.model_proto.SerializeToString(), composite="attn-lrp", target="index")
    session = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, relevance = session.run(["logits", "relevance"], {"input_ids": IDS, "attention_mask": MASK,
                                                               "target": np.array(TARGETS, np.int64)})
    _, outs, original, _ = explain(built[arch]["fp32"], "attn-lrp")
    real = MASK == 1
    np.testing.assert_allclose(original[0][real], logits[real], rtol=1e-4, atol=1e-5)
    errors = l1_errors(outs[-1], relevance)
    print(arch, "genai fp32 vs torch export, L1 relative:", ["%.1e" % e for e in errors])
    assert max(errors) <= TOL


def test_input_x_gradient_matches_torch_autograd(built):
    """The gradient through every contrib op (the attention's Softmax and rotary, the RMSNorms' full derivative,
    the residual sum) against torch autograd in float64 on the Hugging Face model."""
    import torch
    import transformers

    converted = lrpgraph.convert(gm.fixed_length(built["llama"]["fp32"], *IDS.shape), method="input-x-gradient",
                                 from_tensor="logits", target="index")
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    relevance = session.run(None, dict(gm.feeds(session, IDS, MASK), target=np.array(TARGETS, np.int64)))[-1]
    hf = transformers.AutoModelForCausalLM.from_pretrained(built["llama"]["hf"], dtype=torch.float64,
                                                           attn_implementation="eager").eval()
    embeds = hf.get_input_embeddings()(torch.tensor(IDS)).detach()
    reference = np.zeros(relevance.shape)
    for n, targets in enumerate(TARGETS):
        for k, (position, token) in enumerate(targets):
            x = embeds.clone().requires_grad_(True)
            hf(inputs_embeds=x, attention_mask=torch.tensor(MASK)).logits[n, position, token].backward()
            reference[n, k] = (x * x.grad)[n].sum(-1).detach().numpy()
    errors = l1_errors(relevance, reference)
    print("input x gradient L1 relative to autograd:", ["%.1e" % e for e in errors])
    assert max(errors) <= TOL


def test_a_filled_cache(built, reference):
    """The prompt's last 2 tokens fed after a cache of its first 4 (the unconverted graph's present.*): their
    relevance for the last position's target is LXT's for the whole prompt at those positions (the cached
    tokens get none here), and the logits are the whole prompt's."""
    path, past, new = built["llama"]["fp32"], 4, 2
    model = onnx.load(path)
    sizes = {"batch_size": 1, "sequence_length": new, "total_sequence_length": past + new,
             "past_sequence_length": past}
    for info in list(model.graph.input) + list(model.graph.output):
        for dim in info.type.tensor_type.shape.dim:
            dim.dim_value = sizes.get(dim.dim_param, dim.dim_value)
    converted = lrpgraph.convert(model, composite="attn-lrp", from_tensor="logits", target="index")
    plain = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    prefix = plain.run(None, gm.feeds(plain, IDS[:1, :past], MASK[:1, :past]))
    feed = {"input_ids": IDS[:1, past:], "attention_mask": MASK[:1]}
    feed.update((o.name.replace("present.", "past_key_values."), v) for o, v in zip(plain.get_outputs(), prefix)
                if o.name.startswith("present."))
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    (position, token), = TARGETS[0][:1]
    logits, relevance = (session.run(None, dict(feed, target=np.array([[[position - past, token]]])))[i]
                         for i in (0, -1))
    whole = plain.run(None, gm.feeds(plain, IDS[:1], MASK[:1]))[0]
    np.testing.assert_allclose(logits, whole[:, past:], rtol=0, atol=1e-5)
    ref = reference("llama", "attn-lrp")["relevance"][0, 0, past:]
    error = float(np.abs(relevance[0, 0] - ref).sum() / np.abs(ref).sum())
    print("after a cache: L1 relative to LXT:", "%.1e" % error)
    assert error <= TOL


def test_k_targets_in_one_call_equal_separate_calls(built):
    session, outs, _, feed = explain(built["qwen2"]["fp32"], "attn-lrp")
    for k in range(2):
        one = session.run(["relevance"], dict(feed, target=np.array([[t[k]] for t in TARGETS], np.int64)))[0]
        np.testing.assert_allclose(one[:, 0], outs[-1][:, k], rtol=0, atol=1e-6)


def test_unsupported_attention_is_one_line(built):
    model = gm.fixed_length(built["llama"]["fp32"], 1, 4)
    node = next(n for n in model.graph.node if n.op_type == "GroupQueryAttention")
    kept = [a for a in node.attribute if a.name != "softcap"]
    del node.attribute[:]
    node.attribute.extend(kept + [onnx.helper.make_attribute("softcap", 30.0)])
    with pytest.raises(UnsupportedModelError, match="softcap not supported") as err:
        lrpgraph.convert(model, composite="attn-lrp", from_tensor="logits", target="index")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("zero_points", [False, True])
def test_dequantized_weights_reproduce_matmul_nbits(zero_points):
    """x @ dequantize_nbits(...) against onnxruntime's own MatMulNBits (accuracy_level 0: float activations)."""
    rng = np.random.default_rng(0)
    k, n, block = 80, 24, 32  # K not a multiple of the block: the last block is padded
    blocks = -(-k // block)
    packed = rng.integers(0, 256, (n, blocks, block // 2), dtype=np.uint8)
    scales = rng.uniform(0.01, 0.1, (n * blocks,)).astype(np.float32)
    zeros = rng.integers(0, 256, (n * -(-blocks // 2),), dtype=np.uint8) if zero_points else None
    inits = [onnx.numpy_helper.from_array(packed, "B"), onnx.numpy_helper.from_array(scales, "scales")]
    if zero_points:
        inits.append(onnx.numpy_helper.from_array(zeros, "zp"))
    node = onnx.helper.make_node("MatMulNBits", ["x", "B", "scales"] + (["zp"] if zero_points else []), ["y"],
                                 domain="com.microsoft", K=k, N=n, bits=4, block_size=block, accuracy_level=0)
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", 1, [3, k])],
                                   [onnx.helper.make_tensor_value_info("y", 1, [3, n])], inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21),
                                                         onnx.helper.make_opsetid("com.microsoft", 1)])
    x = rng.normal(size=(3, k)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    attrs = {"K": k, "N": n, "bits": 4, "block_size": block}
    w = dequantize_nbits(attrs, packed, scales, zeros)
    assert w.shape == (k, n)
    np.testing.assert_allclose(x.astype(np.float64) @ w, y, rtol=0, atol=1e-5)

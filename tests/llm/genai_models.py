"""Small random Hugging Face causal LMs (Llama, Qwen2: hidden 64, 2 layers, 4 query heads over 2 key/value
heads) and onnxruntime-genai 0.12.2's model builder run on them (fp32 and int4), for tests/llm/test_genai.py.

The builder writes model.onnx and genai_config.json, then fails on the missing tokenizer; that failure is
accepted once model.onnx is there. Two builder constraints shape the configurations: GroupQueryAttention on
the CPU needs a head size that is a multiple of 16, and the builder takes any nn.Linear whose out_features
equal the vocabulary size for the lm_head (so the vocabulary, 100, is no layer's width)."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
from onnx import numpy_helper

CONFIG = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1)


def save_hf(arch: str, folder: str, seed: int = 0) -> str:
    """A random LlamaForCausalLM or Qwen2ForCausalLM (Qwen2 with random q/k/v biases) saved with
    save_pretrained into folder/arch; returns that folder."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                             "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[arch]
    model = model_cls(config_cls(**CONFIG))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    out = os.path.join(folder, arch)
    model.save_pretrained(out)
    return out


BUILD = """
import sys
from onnxruntime_genai.models.builder import create_model
for job in sys.argv[1:]:
    hf_dir, out, precision, provider = job.split("|")
    try:
        create_model(None, hf_dir, out, precision, provider, out + "/cache")
    except Exception as err:  # the missing tokenizer, after model.onnx is written
        print(out, type(err).__name__, err, file=sys.stderr)
"""


def build_all(jobs: list) -> list:
    """onnxruntime-genai's builder for each (hf_dir, out, precision, execution provider),
    in one child process (importing the builder takes most of its time); returns each out/model.onnx."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", BUILD] + ["|".join(job) for job in jobs], env=env,
                          capture_output=True, text=True, timeout=600)
    paths = [os.path.join(out, "model.onnx") for _, out, _, _ in jobs]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise RuntimeError(f"the builder wrote no {missing}:\n{done.stderr[-3000:]}")
    return paths


def fixed_length(path: str, batch: int, length: int) -> onnx.ModelProto:
    """The builder's graph with batch, sequence and total length fixed and an empty past: logits [N, L, V]
    then have a static shape, which lrpgraph's K targets per sample (from_tensor="logits", target="index":
    (position, token) pairs) need."""
    model = onnx.load(path)
    sizes = {"batch_size": batch, "sequence_length": length, "total_sequence_length": length,
             "past_sequence_length": 0}
    for info in list(model.graph.input) + list(model.graph.output):
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param in sizes:
                dim.dim_value = sizes[dim.dim_param]
    return model


def as_float32(path: str, out: str, floats_from: str) -> str:
    """The builder's float16 graph (`-p int4 -e dml`: a separate RotaryEmbedding, unpacked q, k, v) with every
    float16 initializer, input, output and value_info made float32 (the ops are the same), saved as out. The
    float weights both graphs have (the embedding table, the norms' scales, cos_cache and sin_cache) are taken
    from floats_from (the float32 graph the builder wrote from the same model): float16 rounding would move the
    heatmap away from the float64 reference by ~1e-4."""
    model = onnx.load(path)
    caches = {i.name: i for i in onnx.load(floats_from).graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    for init in model.graph.initializer:
        if init.name in caches:
            init.CopyFrom(caches[init.name])
        elif init.data_type == onnx.TensorProto.FLOAT16:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
    for info in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
            info.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    assert not any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for n in model.graph.node for a in n.attribute)
    onnx.save(model, out, save_as_external_data=True, location=os.path.basename(out) + ".data")
    return out


def feeds(session, ids: np.ndarray, mask: np.ndarray) -> dict:
    """input_ids, attention_mask, position_ids where the graph takes them, and empty past_key_values.* for a
    prompt (prefill)."""
    out = {"input_ids": ids, "attention_mask": mask}
    if "position_ids" in {i.name for i in session.get_inputs()}:
        out["position_ids"] = np.broadcast_to(np.arange(ids.shape[1]), ids.shape).astype(np.int64)
    for info in session.get_inputs():
        if info.name.startswith("past_key_values."):
            out[info.name] = np.zeros((len(ids), info.shape[1], 0, info.shape[3]), np.float32)
    return out


def _unpack(packed, scales, k, n, block):
    """4-bit weights as the MatMulNBits docs define them, in float64 (no zero points: 8): [N, K]."""
    raw = packed.reshape(n, -1)
    q = np.empty((n, raw.shape[1] * 2), np.float64)
    q[:, 0::2], q[:, 1::2] = raw & 15, raw >> 4
    per_block = scales.reshape(n, -1).astype(np.float64)
    w = (q[:, :per_block.shape[1] * block].reshape(n, -1, block) - 8) * per_block[:, :, None]
    return w.reshape(n, -1)[:, :k]


def _hf_names(onnx_weight: str, value: np.ndarray, heads: tuple) -> dict:
    """{HF Linear module name: value}, the fused qkv_proj split into q, k and v along its last axis."""
    name = onnx_weight.replace(".MatMul.weight_Q4", "")
    if name == "lm_head":
        return {"lm_head": value}
    base = f"model.layers.{name.split('.')[2]}."
    q, kv = heads
    if name.split(".")[-1] in ("q_proj", "k_proj", "v_proj"):
        return {base + "self_attn." + name.split(".")[-1]: value}
    if "qkv_proj" in name:
        return {base + "self_attn.q_proj": value[..., :q], base + "self_attn.k_proj": value[..., q:q + kv],
                base + "self_attn.v_proj": value[..., q + kv:]}
    if "o_proj" in name:
        return {base + "self_attn.o_proj": value}
    return {base + "mlp." + name.split(".")[-1]: value}


def _nbits_nodes(model):
    return [n for n in model.graph.node if n.op_type == "MatMulNBits"]


def _heads(hf_dir):
    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    d = cfg["hidden_size"] // cfg["num_attention_heads"]
    return cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d


def dequantized_weights(path: str, hf_dir: str) -> dict:
    """{HF state-dict key: float64 weight [out, in]} of every MatMulNBits of the int4 graph."""
    model = onnx.load(path)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for node in _nbits_nodes(model):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert len(node.input) < 4 or not node.input[3], "the builder's int4 weights are symmetric"
        w = _unpack(inits[node.input[1]], inits[node.input[2]], attrs["K"], attrs["N"], attrs["block_size"])
        # the split of the fused qkv weight [N, K] is along N: its rows
        parts = _hf_names(node.input[1], w.T, _heads(hf_dir))
        out.update({k + ".weight": np.ascontiguousarray(v.T) for k, v in parts.items()})
    return out


def linear_outputs(path: str, hf_dir: str, feed: dict, tmp: str) -> dict:
    """{HF Linear module name: the int4 graph's MatMulNBits output} for this feed (accuracy_level 4 computes
    them with int8 activations: the reference takes them as they are)."""
    import onnxruntime as ort

    model = onnx.load(path)
    nodes = _nbits_nodes(model)
    inits = {i.name for i in model.graph.initializer}
    bias_add = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "Add" and n.input[1] in inits}
    ends = [bias_add.get(n.output[0], n.output[0]) for n in nodes]  # Qwen2's q/k/v biases: the Linear's output
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in ends if t not in have)
    probe = os.path.join(tmp, "probe.onnx")
    onnx.save(model, probe, save_as_external_data=True, location="probe.onnx.data")
    session = ort.InferenceSession(probe, providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    out = {}
    for node, end in zip(nodes, ends):
        out.update(_hf_names(node.input[1], values[end], _heads(hf_dir)))
    return out

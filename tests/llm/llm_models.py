"""Small decoder LMs with random weights (transformers 4.57, eager attention), exported to ONNX as users do
(torch.onnx.export, dynamo, dynamic batch and length; inputs input_ids and attention_mask, output the logits
[N, L, V]), and the padded batch of the LLM tests. Norm scales are 1 + N(0, 0.1) so that no rule can hide
behind a one."""

import torch

VOCAB = 64
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
CONFIGS = {
    # grouped-query attention (2 key/value heads for 4 query heads), tied input and output embeddings
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(SMALL, tie_word_embeddings=True)),
    # biases on q, k, v; untied lm_head
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(SMALL, tie_word_embeddings=False)),
    # (1 + w) RMSNorm, embeddings scaled by sqrt(hidden), GELU-tanh gate, q/k norms, a sliding-window layer
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(SMALL, head_dim=8, sliding_window=4,
                                                              layer_types=["sliding_attention", "full_attention"])),
    # Conv1D layers, learned position embeddings, gelu_new, LayerNorm, tied lm_head
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
}
# decoder sequence classifiers: the logits of the last token that is not padding (pad id 0), found from the ids
CLASSIFIERS = {
    "llama-cls": ("LlamaConfig", "LlamaForSequenceClassification", dict(SMALL, num_labels=3, pad_token_id=0)),
    "gpt2-cls": ("GPT2Config", "GPT2ForSequenceClassification", dict(CONFIGS["gpt2"][2], num_labels=3,
                                                                     pad_token_id=0)),
}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """The model of CONFIGS or CLASSIFIERS [name] with random weights (eager attention, no cache)."""
    import transformers

    config_cls, model_cls, kwargs = {**CONFIGS, **CLASSIFIERS}[name]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**kwargs, attn_implementation="eager", use_cache=False)
    model = getattr(transformers, model_cls)(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1 and "norm" in pname:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif pname.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


class Logits(torch.nn.Module):
    """A causal LM returning the logits tensor [N, L, V] (what a deployed model without cache exports), or a
    sequence classifier its [N, C]."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def export(model: torch.nn.Module) -> bytes:
    """ONNX bytes: inputs input_ids, attention_mask [N, L] (dynamic), output logits [N, L, V]."""
    ids, mask = batch()
    dims = {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("length", min=2, max=SMALL["max_position_embeddings"])}
    program = torch.onnx.export(Logits(model).eval(), (ids, mask), None, external_data=False, verbose=False,
                                input_names=["input_ids", "attention_mask"], output_names=["logits"],
                                dynamic_shapes=(dims, dims))
    return program.model_proto.SerializeToString()


def export_legacy(model: torch.nn.Module) -> bytes:
    """The same with the TorchScript exporter (dynamo=False, opset 18: Gemma 3's sliding-window mask needs its
    BitwiseAnd). transformers 4.57 builds the 4-D mask
    with torch.vmap (masking_utils.sdpa_mask_recent_torch), which the TorchScript tracer cannot record
    (`RuntimeError: unordered_map::at`); its broadcasting version for older torch (sdpa_mask_older_torch) builds
    the same mask and traces, so it stands in while exporting."""
    import io

    from transformers import masking_utils

    ids, mask = batch()
    f, recent = io.BytesIO(), masking_utils.sdpa_mask
    masking_utils.sdpa_mask = masking_utils.sdpa_mask_older_torch
    try:
        torch.onnx.export(Logits(model).eval(), (ids, mask), f, dynamo=False, opset_version=18,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={t: {0: "N", 1: "L"} for t in ("input_ids", "attention_mask", "logits")})
    finally:
        masking_utils.sdpa_mask = recent
    return f.getvalue()


def export_optimum(model: torch.nn.Module, folder: str) -> bytes:
    """optimum-onnx's export (task text-generation-with-past): inputs input_ids, attention_mask, position_ids
    (where the model takes them) and past_key_values.<i>.key/value [N, heads, past length, head dim], outputs
    logits and present.<i>.key/value."""
    import os

    from optimum.exporters.onnx import main_export

    model.config.use_cache = True
    model.save_pretrained(os.path.join(folder, "hf"))
    model.config.use_cache = False
    main_export(os.path.join(folder, "hf"), output=os.path.join(folder, "onnx"), task="text-generation-with-past",
                no_post_process=True, do_validation=False)
    with open(os.path.join(folder, "onnx", "model.onnx"), "rb") as f:
        return f.read()


def prefill_feeds(session, ids, mask) -> dict:
    """The feeds of a prefill (no cache yet) for an optimum export: the ids and mask, positions 0 .. L-1, and
    every past_key_values input empty along its past length."""
    import numpy as np

    feeds = {"input_ids": ids, "attention_mask": mask}
    for info in session.get_inputs():
        if info.name == "position_ids":
            feeds[info.name] = np.broadcast_to(np.arange(ids.shape[1]), ids.shape).astype(np.int64)
        elif info.name.startswith("past_key_values"):
            feeds[info.name] = np.zeros((ids.shape[0], info.shape[1], 0, info.shape[3]), np.float32)
    return feeds


def batch(n: int = 2, length: int = 9, seed: int = 1) -> tuple:
    """Token ids [n, length] and their attention mask: sample 1 right-padded after 6 tokens (pad id 0)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    for i, end in enumerate([length, 6, 4][:n]):
        mask[i, end:] = 0
        ids[i, end:] = 0
    return ids, mask

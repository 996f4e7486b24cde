"""LXT 2.1 reference for onnxruntime-genai graphs: next-token relevance of a Hugging Face causal LM (Llama,
Qwen2) in float64, under LXT's efficient-mode patches (attn-lrp: `lxt.efficient.models.<arch>.attnLRP`, cp-lrp:
its cp_LRP map). Run in a child process (LXT patches transformers' classes globally):

    python genai_lxt_ref.py JOB.json   # {"arch", "dir", "ids", "mask", "targets", "method", "weights", "out"}

targets: per sample a list of (position, token); relevance[n, k] = sum over hidden of the input embedding times
the gradient of logits[n, position, token] (LXT's heatmap, whose total is that logit). weights: an optional .npz
of state-dict tensors loaded over the model's (the int4 model's dequantized weights); activations: an optional .npz
{Linear module name: its output} that the forward uses in place of its own (the int4 graph's), the gradient
still the Linear's."""

import json
import sys


def run(job: dict) -> dict:
    """Run one job in a child process; returns its arrays (logits [N, L, V], relevance [N, K, L])."""
    from child_run import run_child

    return run_child(__file__, job)


def _patch_map(patches, method):
    """LXT's map for the method: attnLRP, or cp_LRP (query and key detached, the gated MLP's activated gate held
    constant)."""
    return patches.attnLRP if method == "attn-lrp" else patches.cp_LRP


def _pin_linear_outputs(model, outputs):
    """Each named Linear's forward value replaced by the given one (the int4 graph's MatMulNBits output, computed
    with int8 activations at accuracy_level 4), its gradient kept: y + (given - y).detach()."""
    modules = dict(model.named_modules())
    for name, value in outputs.items():
        modules[name].register_forward_hook(lambda mod, args, out, value=value: out + (value - out).detach())


def main(spec: str) -> None:
    import importlib

    import numpy as np
    import torch
    import transformers

    from lxt.efficient import monkey_patch

    with open(spec) as f:
        job = json.load(f)
    torch.set_num_threads(1)
    arch = job["arch"]
    patches = importlib.import_module(f"lxt.efficient.models.{arch}")
    modeling = importlib.import_module(f"transformers.models.{arch}.modeling_{arch}")
    monkey_patch(modeling, _patch_map(patches, job["method"]))
    model = transformers.AutoModelForCausalLM.from_pretrained(job["dir"], torch_dtype=torch.float64,
                                                              attn_implementation="eager").eval()
    if job.get("weights"):
        state = {k: torch.from_numpy(v).double() for k, v in np.load(job["weights"]).items()}
        model.load_state_dict(state, strict=False)
    if job.get("activations"):
        _pin_linear_outputs(model, {k: torch.from_numpy(v).double() for k, v in np.load(job["activations"]).items()})
    ids = torch.tensor(job["ids"])
    mask = torch.tensor(job["mask"])
    embeds = model.get_input_embeddings()(ids).detach()
    relevance = []
    for n, targets in enumerate(job["targets"]):
        rows = []
        for position, token in targets:
            x = embeds.clone().requires_grad_(True)
            logits = model(inputs_embeds=x, attention_mask=mask, use_cache=False).logits
            logits[n, position, token].backward()
            rows.append((x * x.grad)[n].sum(-1).detach().numpy())
        relevance.append(rows)
    np.savez(job["out"], logits=logits.detach().numpy(), relevance=np.array(relevance))


if __name__ == "__main__":
    main(sys.argv[1])

"""LXT 2.1 reference relevance for the causal LMs of llm_models, in float64 in a subprocess (LXT patches
transformers' classes globally; a child process keeps that away from every other test).

    python lxt_llm_ref.py JOB.json     # {"method", "out", "cases": [{"model", "state", "inputs", "targets"}]}

One process per method (its patches are global): "attn-lrp" (each model family's
`lxt.efficient.models.<family>.attnLRP` map) or "cp-lrp" (its `cp_LRP`), for every case. targets:
[[sample, position, token], ...] explained one at a time, or null: the next token (the argmax token at each
sample's last non-padding position, lrpgraph's `top`). The relevance of a token is its embedding times the
gradient of the explained logit (LXT's efficient mode), summed over the hidden axis: [N, L] for top, [T, L]
(one row per target, of its sample) for targets; a sequence classifier ("llama-cls", "gpt2-cls") explains its
predicted class, [N, L]. Saved as "<i>_logits", "<i>_relevance" for case i.

"float32_mask": true builds the eager attention's additive mask with float32's lowest value, as a float32
model (and its ONNX export) does: Llama, Qwen2 and Gemma 3 take their Softmax in float32, where float64's
lowest value is -inf, so a row that sees only padding (left padding) would be NaN and spread through 0 x NaN."""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FAMILIES = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3", "gpt2": "gpt2"}


def run(job: dict) -> dict:
    """Run one job in a child process; returns its arrays."""
    from child_run import run_child

    return run_child(__file__, job)


def _patch(family: str, method: str) -> None:
    import importlib

    from lxt.efficient import monkey_patch

    lxt_module = importlib.import_module(f"lxt.efficient.models.{family}")
    modeling = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    monkey_patch(modeling, lxt_module.attnLRP if method == "attn-lrp" else lxt_module.cp_LRP)


def _float32_mask() -> None:
    import torch
    from transformers import masking_utils

    def eager_mask(*args, dtype=torch.float32, **kwargs):
        return masking_utils.eager_mask(*args, dtype=torch.float32, **kwargs).to(dtype)

    masking_utils.ALL_MASK_ATTENTION_FUNCTIONS._global_mapping["eager"] = eager_mask


def _case(case: dict) -> dict:
    import numpy as np
    import torch

    import llm_models

    model = llm_models.build(case["model"])
    model.load_state_dict(torch.load(case["state"]))
    model = model.double().eval()
    data = np.load(case["inputs"])
    ids, mask = torch.from_numpy(data["input_ids"]), torch.from_numpy(data["attention_mask"])
    table = model.get_input_embeddings()
    embeds = table(ids).detach().requires_grad_(True)
    # the ids go in (a sequence classifier finds its last non-padding token from them); the embedding's output
    # is replaced by the leaf whose gradient is read
    hook = table.register_forward_hook(lambda module, args, out: embeds)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    hook.remove()
    targets = case.get("targets")
    chosen = logits[:, None] if logits.dim() == 2 else logits  # a sequence classifier's [N, C] at position 0
    if logits.dim() == 2:  # its predicted class
        targets = [[n, 0, int(c)] for n, c in enumerate(logits.argmax(1))]
    elif targets is None:
        last = (mask * torch.arange(1, mask.shape[1] + 1)).argmax(1)
        targets = [[n, int(p), int(logits[n, p].argmax())] for n, p in enumerate(last)]
    rows = []
    for n, position, token in targets:
        (grad,) = torch.autograd.grad(chosen[n, position, token], embeds, retain_graph=True)
        rows.append((embeds * grad).sum(-1)[n])
    return {"logits": logits.detach().numpy(), "relevance": torch.stack(rows).detach().numpy()}


def main(spec: str) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    with open(spec) as f:
        job = json.load(f)
    sys.path.insert(0, HERE)
    for family in dict.fromkeys(FAMILIES[case["model"].split("-")[0]] for case in job["cases"]):
        _patch(family, job["method"])
    if job.get("float32_mask"):
        _float32_mask()
    result = {}
    for i, case in enumerate(job["cases"]):
        result.update({f"{i}_{key}": value for key, value in _case(case).items()})
    with open(job["out"], "wb") as f:
        np.savez(f, **result)


if __name__ == "__main__":
    main(sys.argv[1])

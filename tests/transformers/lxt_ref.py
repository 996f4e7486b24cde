"""LXT 2.1 reference heatmaps, computed in float64 in a subprocess (LXT patches torch, torchvision and
transformers classes globally; a child process keeps that away from every other test).

    python lxt_ref.py JOB.json     # {"model", "state", "inputs", "method", "rules", "out"}

For "vit", "method" may also be a list (["cp-lrp", "attn-lrp"]): one model build, one heatmap per method
(only the attention patch differs between them), saved as "logits_<method>" and "relevance_<method>".

model: "vit" (torchvision VisionTransformer, tests' VIT config), "bert" (BertForSequenceClassification) or
"convnext" (torchvision ConvNeXt, small or convnext_tiny with "tiny": true; LayerNorm and GELU patches only).
method:
- "cp-lrp": vit: LXT's `lxt.efficient.models.vit_torch.cp_LRP` map (query and key detached in
  nn.MultiheadAttention, LayerNorm and GELU patched); bert: LXT's BERT module with query and key detached.
- "attn-lrp": vit: LXT's LayerNorm and GELU patches, and attention written out with LXT's divide_gradient on
  q, k (by 4) and v (by 2), as lxt.efficient's attention wrapper does for transformers models; bert: LXT's
  own `lxt.efficient.models.bert.attnLRP` map.
Linear and Conv layers get the plain gradient (LRP-0), or zennit rules through
`lxt.efficient.monkey_patch_zennit` (rules: {"Linear": ["epsilon", 1e-6], "Conv": ["gamma", 0.25]}). The heatmap is x * d y_c / dx with a one-hot gradient at the
predicted class c, so that the output relevance is y_c (lrpgraph's `top`); for token inputs it is the
embedding output times its gradient, summed over the hidden axis.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(job):
    """Run one job (its patches are global) in a child process; returns its arrays."""
    from child_run import run_child

    return run_child(__file__, job)


def _zennit_composite(rules, model):
    """zennit rules on the Linear and Conv2d modules named in rules (none: LXT alone, the plain gradient)."""
    import contextlib

    import torch
    from zennit.composites import LayerMapComposite
    from zennit.rules import Epsilon, Gamma, ZPlus

    def make(spec):
        name, *value = spec
        return {"epsilon": Epsilon, "gamma": Gamma, "zplus": ZPlus}[name](*value)

    if not rules:
        return contextlib.nullcontext(model)
    layer_map = [(kind, make(rules[key])) for key, kind in (("Linear", torch.nn.Linear), ("Conv", torch.nn.Conv2d))
                 if key in rules]
    return LayerMapComposite(layer_map=layer_map).context(model)


def _vit_attn_lrp_mha(self, query, key, value, need_weights=False, **kwargs):
    """nn.MultiheadAttention (batch_first self-attention, no mask) with LXT's uniform rule on q, k, v."""
    import torch
    import torch.nn.functional as F
    from lxt.efficient.rules import divide_gradient

    n, length, embed = query.shape
    heads = self.num_heads
    q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
    q, k, v = divide_gradient(q, 4), divide_gradient(k, 4), divide_gradient(v, 2)

    def split(t):
        return t.reshape(n, length, heads, embed // heads).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    attention = torch.softmax(q @ k.transpose(-1, -2) / (embed // heads) ** 0.5, dim=-1)
    out = (attention @ v).transpose(1, 2).reshape(n, length, embed)
    return F.linear(out, self.out_proj.weight, self.out_proj.bias), None


def _patch_vit(method):
    """The patches of one method; called again with another method, only nn.MultiheadAttention's forward changes
    (torch's is put back first: cp_LRP's wrapper calls the forward it replaced; GELU and LayerNorm stay patched)."""
    from functools import partial

    from torchvision.models import vision_transformer

    from lxt.efficient import monkey_patch, monkey_patch_zennit
    from lxt.efficient.models.vit_torch import cp_LRP
    from lxt.efficient.patches import layer_norm_forward, non_linear_forward, patch_method

    if method == "cp-lrp":
        patch_map = cp_LRP
    else:
        patch_map = {vision_transformer.nn.GELU: partial(patch_method, non_linear_forward, keep_original=True),
                     vision_transformer.nn.LayerNorm: partial(patch_method, layer_norm_forward),
                     vision_transformer.nn.MultiheadAttention: partial(patch_method, _vit_attn_lrp_mha)}
    attention = vision_transformer.nn.MultiheadAttention
    if not hasattr(attention, "torch_forward"):
        attention.torch_forward = attention.forward
    attention.forward = attention.torch_forward
    monkey_patch(vision_transformer, patch_map)
    monkey_patch_zennit()


def _convnext_job(job):
    """torchvision ConvNeXt with LXT's LayerNorm and GELU patches (LayerNorm2d, which calls F.layer_norm on
    permuted input itself, gets the same LayerNorm patch around its permutes) and zennit rules on Conv2d."""
    from functools import partial

    import torch
    from torchvision.models import convnext

    from lxt.efficient import monkey_patch, monkey_patch_zennit
    from lxt.efficient.patches import layer_norm_forward, non_linear_forward, patch_method

    sys.path.insert(0, HERE)
    import transformer_models

    def layer_norm_2d(self, x):
        return layer_norm_forward(self, x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    monkey_patch(convnext, {convnext.nn.GELU: partial(patch_method, non_linear_forward, keep_original=True),
                            convnext.nn.LayerNorm: partial(patch_method, layer_norm_forward),
                            convnext.LayerNorm2d: partial(patch_method, layer_norm_2d)})
    monkey_patch_zennit()
    model = transformer_models.convnext(tiny=job.get("tiny", False))
    model.load_state_dict(torch.load(job["state"]))
    return _heatmap(model, job)


def _heatmap(model, job):
    import numpy as np
    import torch

    model = model.double().eval()
    x = torch.from_numpy(np.load(job["inputs"])["x"]).double().requires_grad_(True)
    with _zennit_composite(job.get("rules", {}), model) as modified:
        y = modified(x)
        onehot = torch.nn.functional.one_hot(y.argmax(1), y.shape[1]).double()
        (grad,) = torch.autograd.grad(y, x, onehot)
    return {"logits": y.detach().numpy(), "relevance": (x * grad).detach().numpy()}


def _vit_job(job):
    import torch
    from torchvision.models.vision_transformer import VisionTransformer

    sys.path.insert(0, HERE)
    from transformer_models import VIT

    if job.get("vit_b_16"):
        from torchvision.models import vit_b_16
        model = vit_b_16()
    else:
        model = VisionTransformer(**VIT)
    model.load_state_dict(torch.load(job["state"]))
    if isinstance(job["method"], str):
        _patch_vit(job["method"])
        return _heatmap(model, job)
    result = {}
    for method in job["method"]:
        _patch_vit(method)
        result.update({f"{key}_{method}": value for key, value in _heatmap(model, job).items()})
    return result


def _bert_job(job):
    import numpy as np
    import torch
    import transformers.models.bert.modeling_bert as modeling_bert
    from transformers import BertConfig

    from lxt.efficient import monkey_patch, monkey_patch_zennit
    from lxt.efficient.models import bert as lxt_bert
    from lxt.efficient.patches import stop_gradient

    sys.path.insert(0, HERE)
    from transformer_models import BERT

    monkey_patch(modeling_bert, lxt_bert.attnLRP)
    monkey_patch_zennit()
    if job["method"] == "cp-lrp":  # the uniform rule is AttnLRP's, not CP-LRP's
        lxt_bert.divide_gradient = lambda t, factor=2: t
    model = modeling_bert.BertForSequenceClassification(BertConfig(**BERT, attn_implementation="eager"))
    model.load_state_dict(torch.load(job["state"]))
    model = model.double().eval()
    data = np.load(job["inputs"])
    ids, mask, types = (torch.from_numpy(data[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    embeds = model.bert.embeddings.word_embeddings(ids).detach().requires_grad_(True)
    if job["method"] == "cp-lrp":  # CP-LRP: query and key detached, no relevance through attention probabilities
        for layer in model.bert.encoder.layer:
            for linear in (layer.attention.self.query, layer.attention.self.key):
                linear.register_forward_hook(lambda module, args, out: stop_gradient(out))
    with _zennit_composite(job.get("rules", {}), model) as modified:
        y = modified(inputs_embeds=embeds, attention_mask=mask, token_type_ids=types).logits
        onehot = torch.nn.functional.one_hot(y.argmax(1), y.shape[1]).double()
        (grad,) = torch.autograd.grad(y, embeds, onehot)
    return {"logits": y.detach().numpy(), "relevance": (embeds * grad).sum(-1).detach().numpy()}


def main(spec):
    import numpy as np
    import torch

    torch.set_num_threads(1)
    with open(spec) as f:
        job = json.load(f)
    result = {"vit": _vit_job, "bert": _bert_job, "convnext": _convnext_job}[job["model"]](job)
    with open(job["out"], "wb") as f:
        np.savez(f, **result)


if __name__ == "__main__":
    main(sys.argv[1])

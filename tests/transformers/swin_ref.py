"""torchvision's Swin transformer under LXT 2.1's rules, in float64, in a child process (LXT patches classes
globally), as the reference of test_swin_lxt.py. LXT ships no Swin patch; this one is written the way
`lxt.efficient.patches` writes its models':

- nn.LayerNorm: LXT's `layer_norm_forward` (sigma held constant); nn.GELU: LXT's `non_linear_forward` (the
  identity rule), as LXT's ViT map (`lxt.efficient.models.vit_torch`) patches them;
- torchvision's `shifted_window_attention` (a module function: ShiftedWindowAttention passes the weights to
  F.linear itself) replaced by `_attention` below, torchvision's own with one change where q, k and v are taken
  apart: attn-lrp applies LXT's `divide_gradient` to q, k (by 4) and v (by 2), as LXT's attention wrapper does for
  transformers models; cp-lrp detaches q and k (LXT's `stop_gradient`), as LXT's `cp_LRP` map does in
  nn.MultiheadAttention. The relative position bias and the shift mask are added before the Softmax as in
  torchvision (constants: LXT leaves them alone);
- the rest (roll, window partition, patch merging, pooling, residuals) by its plain gradient; zennit rules on
  the nn.Conv2d / nn.Linear modules through `lxt.efficient.monkey_patch_zennit` when the job names some (the
  qkv and proj projections are not modules that zennit hooks: torchvision calls F.linear on their weights).

    python swin_ref.py JOB.json     # {"model": "small" | "swin_t", "state", "inputs", "runs", "out"}

runs: {NAME: [method, rules]}, rules as lxt_ref.py takes them ({"Conv": ["gamma", 0.25]}; {}: LRP-0 on every
Conv and Linear); saves "logits_NAME" and "relevance_NAME" (x * d y_c / dx at the predicted class c) for each.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# small_swin() of tests/detection/test_computed_shapes.py: v1 blocks, shifted windows, one patch merging
SMALL = dict(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4], num_classes=10)


def build(name="small", seed=0):
    """The small Swin (32 px) or torchvision's swin_t, random weights through transformer_models.randomize
    (biases and LayerNorm affine random too), Linear weights N(0, 1 / fan_in) and a relative position bias table
    of N(0, 0.5), so that both q k^T and the bias move the Softmax."""
    import torch
    from torchvision.models import swin_t
    from torchvision.models.swin_transformer import SwinTransformer

    sys.path.insert(0, HERE)
    from transformer_models import randomize

    torch.manual_seed(seed)
    model = randomize(swin_t() if name == "swin_t" else SwinTransformer(**SMALL), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith("relative_position_bias_table"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        for module in model.modules():  # torchvision draws them with std 0.02: q k^T would hardly move the Softmax
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / module.in_features ** 0.5)
    return model.eval()


def run(job):
    """Run one job in a child process; returns its arrays."""
    from child_run import run_child

    return run_child(__file__, job)


def _attention(method):
    """torchvision's shifted_window_attention (v1: no logit scale) with LXT's rule on q, k and v."""
    import torch
    import torch.nn.functional as F
    from lxt.efficient.rules import divide_gradient, stop_gradient

    def rule(q, k, v):
        if method == "cp-lrp":
            return stop_gradient(q), stop_gradient(k), v
        return divide_gradient(q, 4), divide_gradient(k, 4), divide_gradient(v, 2)

    def attention(input, qkv_weight, proj_weight, relative_position_bias, window_size, num_heads, shift_size,
                  attention_dropout=0.0, dropout=0.0, qkv_bias=None, proj_bias=None, logit_scale=None,
                  training=True):
        n, h, w, c = input.shape
        pad_b, pad_r = ((size - length % size) % size for size, length in zip(window_size, (h, w)))
        x = F.pad(input, (0, 0, 0, pad_r, 0, pad_b))
        _, ph, pw, _ = x.shape
        shift = [0 if window_size[i] >= (ph, pw)[i] else shift_size[i] for i in (0, 1)]
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        wh, ww = ph // window_size[0], pw // window_size[1]
        x = x.view(n, wh, window_size[0], ww, window_size[1], c).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(n * wh * ww, window_size[0] * window_size[1], c)
        qkv = F.linear(x, qkv_weight, qkv_bias).reshape(x.size(0), x.size(1), 3, num_heads, c // num_heads)
        q, k, v = rule(*qkv.permute(2, 0, 3, 1, 4))
        attn = (q * (c // num_heads) ** -0.5).matmul(k.transpose(-2, -1)) + relative_position_bias
        if sum(shift) > 0:
            attn = attn.view(n, wh * ww, num_heads, x.size(1), x.size(1)) + _shift_mask(x, ph, pw, window_size, shift)
            attn = attn.view(-1, num_heads, x.size(1), x.size(1))
        x = F.softmax(attn, dim=-1).matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), c)
        x = F.linear(x, proj_weight, proj_bias)
        x = x.view(n, wh, ww, window_size[0], window_size[1], c).permute(0, 1, 3, 2, 4, 5).reshape(n, ph, pw, c)
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
        return x[:, :h, :w, :].contiguous()

    return attention


def _shift_mask(x, ph, pw, window_size, shift):
    """torchvision's attention mask of the shifted windows: -100 between tokens of different regions."""
    mask = x.new_zeros((ph, pw))
    count = 0
    for hs in ((0, -window_size[0]), (-window_size[0], -shift[0]), (-shift[0], None)):
        for ws in ((0, -window_size[1]), (-window_size[1], -shift[1]), (-shift[1], None)):
            mask[hs[0]:hs[1], ws[0]:ws[1]] = count
            count += 1
    mask = mask.view(ph // window_size[0], window_size[0], pw // window_size[1], window_size[1])
    mask = mask.permute(0, 2, 1, 3).reshape(-1, window_size[0] * window_size[1])
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
    return mask.unsqueeze(1).unsqueeze(0)


def _patch(method):
    """LXT's LayerNorm and GELU patches (once) and this method's attention."""
    from functools import partial

    from torchvision.models import swin_transformer

    from lxt.efficient import monkey_patch, monkey_patch_zennit
    from lxt.efficient.patches import layer_norm_forward, non_linear_forward, patch_method

    if not hasattr(swin_transformer, "torch_attention"):
        swin_transformer.torch_attention = swin_transformer.shifted_window_attention
        monkey_patch(swin_transformer, {swin_transformer.nn.GELU: partial(patch_method, non_linear_forward,
                                                                          keep_original=True),
                                        swin_transformer.nn.LayerNorm: partial(patch_method, layer_norm_forward)})
        monkey_patch_zennit()
    swin_transformer.shifted_window_attention = _attention(method)


def main(spec):
    import numpy as np
    import torch

    from lxt_ref import _heatmap

    torch.set_num_threads(1)
    with open(spec) as f:
        job = json.load(f)
    model = build(job["model"])
    model.load_state_dict(torch.load(job["state"]))
    result = {}
    for name, (method, rules) in job["runs"].items():
        _patch(method)
        result.update({f"{key}_{name}": value for key, value in _heatmap(model, dict(job, rules=rules)).items()})
    with open(job["out"], "wb") as f:
        np.savez(f, **result)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main(sys.argv[1])

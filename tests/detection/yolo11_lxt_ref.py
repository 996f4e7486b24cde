"""The float64 reference of a YOLO11 class score under an LRP composite: zennit's composite on the convolutions (as
tests/test_parity_yolo.py sets it up for YOLOv8n) and LXT 2.1's efficient AttnLRP rules on the C2PSA attention.

- zennit, in relevance form: the composite (`zennit_ref.zennit_composite`: epsilon-plus-flat or epsilon) on the
  convolutions, SiLU passes relevance (zennit's Pass), the residual Adds (Bottleneck, PSABlock) and the attention's
  Add are zennit Sum modules under the composite's Norm rule; Concat, Upsample and MaxPool are torch's (relevance
  moved back, winner takes all). The seed: relevance sigmoid(z) at the explained raw class logit z (the Sigmoid
  passes relevance, L-CRP's choice).
- LXT, in its gradient x input form, on ultralytics' `Attention.forward` written out between its q, k, v and the
  output of v @ attn^T: `lxt.efficient.rules.divide_gradient` after each of the two MatMuls (the uniform rule: each
  operand gets half), the scale and the Softmax as torch computes them (in this form their gradients are
  AttnLRP's rules; LXT's efficient attention does the same). Where zennit's relevance R enters that region (at
  v @ attn^T) it becomes LXT's message g = R / stab(y) (zennit's stabilize with the composite's stabilizer, as the
  LRP rules stabilise their denominators), and where it leaves (q, k, v) relevance again: R = x * g.

`lxt.efficient.monkey_patch_zennit` (LXT's way to run zennit's hooks in its gradient form everywhere) is not used:
its hooks divide by stab(x, 1e-10) at every layer input, and on these random-weight YOLOs that alone moves the
heatmap by 4e-4 to 10 (L1) on YOLOv8n, where zennit's relevance form matches lrpgraph to 4e-7.

`plain=True` drops divide_gradient: the attention's products take the plain product rule (what the check can tell
apart).

    python tests/detection/yolo11_lxt_ref.py   # float32 against float64 of this reference, per composite and eps
"""

import copy
import os
import sys
from types import MethodType

import numpy as np
import torch


class ToMessage(torch.autograd.Function):
    """Identity forward; backward: relevance R at y becomes LXT's message R / stab(y)."""

    @staticmethod
    def forward(ctx, y, eps):
        ctx.save_for_backward(y)
        ctx.eps = eps
        return y.clone()

    @staticmethod
    def backward(ctx, relevance):
        from zennit.core import stabilize

        (y,) = ctx.saved_tensors
        return relevance / stabilize(y, ctx.eps), None


class ToRelevance(torch.autograd.Function):
    """Identity forward; backward: LXT's message g at x becomes relevance x * g."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clone()

    @staticmethod
    def backward(ctx, message):
        (x,) = ctx.saved_tensors
        return x * message


def _attention_forward(eps, plain):
    """ultralytics' Attention.forward (the non-coreml branch) with LXT's uniform rule after each MatMul."""
    from lxt.efficient.rules import divide_gradient

    def rule(t):
        return t if plain else divide_gradient(t, 2)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).view(b, self.num_heads, self.key_dim * 2 + self.head_dim, h * w).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2)
        qg, kg, vg = (ToRelevance.apply(t) for t in (q, k, v))
        attn = rule((qg * self.scale).transpose(-2, -1) @ kg).softmax(dim=-1)
        out = ToMessage.apply(rule(vg @ attn.transpose(-2, -1)), eps)
        return self.proj(self.sum(torch.stack([out.view(b, c, h, w), self.pe(v.reshape(b, c, h, w))], dim=-1)))

    return forward


def _bottleneck_forward(self, x):
    return self.sum(torch.stack([x, self.cv2(self.cv1(x))], dim=-1))


def _psa_block_forward(self, x):
    x = self.sum(torch.stack([x, self.attn(x)], dim=-1))
    return self.sum_ffn(torch.stack([x, self.ffn(x)], dim=-1))


def reference_model(model, stabilizer, plain=False):
    """A float64 copy of ultralytics' fused model with Sum modules for its Adds and the attention under LXT's rules
    (stabilizer: of R / stab(y) where relevance enters LXT's form)."""
    from ultralytics.nn.modules.block import Attention, Bottleneck, PSABlock
    from zennit.layer import Sum

    model = copy.deepcopy(model).double().eval()
    for module in list(model.modules()):
        forward = {Attention: _attention_forward(stabilizer, plain), Bottleneck: _bottleneck_forward,
                   PSABlock: _psa_block_forward}.get(type(module))
        if forward is not None and getattr(module, "add", True):
            module.sum, module.sum_ffn = Sum(), Sum()
            module.forward = MethodType(forward, module)
    return model


def composite(name, epsilon, stabilizer):
    """zennit's composite of the YOLOv8 parity tests (epsilon-plus-flat or epsilon), SiLU passing relevance."""
    from zennit.composites import EpsilonPlusFlat, LayerMapComposite, layer_map_base
    from zennit.rules import Epsilon, Pass
    from zennit.types import Linear

    silu = [(torch.nn.SiLU, Pass())]
    if name == "epsilon-plus-flat":
        return EpsilonPlusFlat(epsilon=epsilon, stabilizer=stabilizer, layer_map=silu)
    return LayerMapComposite(layer_map=silu + layer_map_base(stabilizer) + [(Linear, Epsilon(epsilon))])


def heatmap(model, image, name, epsilon, stabilizer, target, dtype=torch.float64):
    """zennit's relevance of the class score (class, anchor) of the [1, C, A] raw class logits, seeded sigmoid(z)
    (model: reference_model's, computed in dtype)."""
    from yolo_models import ClassLogits

    c, a = target
    wrapped = ClassLogits(model.to(dtype))
    x = torch.from_numpy(image).to(dtype).requires_grad_(True)
    try:
        with composite(name, epsilon, stabilizer).context(wrapped) as modified:
            z = modified(x)
            seed = torch.zeros_like(z)
            seed[0, c, a] = torch.sigmoid(z[0, c, a]).detach()
            (grad,) = torch.autograd.grad(z, x, seed)
    finally:
        model.double()
    return grad.detach().numpy().astype(np.float64)


def main():
    """Print, per model and epsilon, how far this reference computed in float32 lies from its float64 (the largest
    L1 over tests/detection/test_yolo11_attention.py's targets): the float32 noise of the epsilon composite."""
    import test_yolo11_attention as t
    from zennit_ref import l1

    torch.set_num_threads(1)
    image = np.random.default_rng(3).random((1, 3, 160, 160), dtype=np.float32)
    for name in t.NAMES:
        made, _ = t.yolo(name)
        model = reference_model(copy.deepcopy(made.model).fuse(verbose=False), t.STABILIZER)
        for composite, eps in [("epsilon-plus-flat", 1e-6), ("epsilon", 1e-6), ("epsilon", 0.01), ("epsilon", 0.25)]:
            worst = max(l1(heatmap(model, image, composite, eps, t.STABILIZER, target, torch.float32),
                           heatmap(model, image, composite, eps, t.STABILIZER, target)) for target in t.TARGETS)
            print(f"{name} {composite} eps {eps:g}: float32 against float64, L1 up to {worst:.1e}")


if __name__ == "__main__":
    HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [HERE, os.path.dirname(HERE)]  # tests/detection and tests: the shared references
    main()

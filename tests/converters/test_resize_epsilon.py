"""The epsilon rule on a bilinear Resize (`--rule Resize=epsilon:EPS`): R_x = x * A^T (R_y / stab(y)), each input
value gets its share of the output values it is interpolated into, against zennit's epsilon composite in float64
with the same rule on F.interpolate written as a zennit-style hook (torch autograd gives A^T); without the override
the relevance moves through the transpose, as zennit's plain F.interpolate, and the two heatmaps differ."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lrpgraph
from zennit_ref import export, l1, run_onnx, zennit_composite, zennit_relevance

EPS = 0.01


class _EpsilonUpsample(torch.autograd.Function):
    """Bilinear x2 forward; backward: the epsilon rule with the relevance as zennit's grad_output."""

    @staticmethod
    def forward(ctx, x, align):
        ctx.save_for_backward(x)
        ctx.align = align
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=align)

    @staticmethod
    def backward(ctx, relevance):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            y = F.interpolate(xx, scale_factor=2, mode="bilinear", align_corners=ctx.align)
            stab = y + EPS * torch.where(y >= 0, 1.0, -1.0).to(y)
            (back,) = torch.autograd.grad(y, xx, (relevance / stab).detach())
        return x * back, None


class Net(torch.nn.Module):
    def __init__(self, align, rule=False):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)
        self.pool, self.fc = torch.nn.AdaptiveAvgPool2d(1), torch.nn.Linear(4, 3)
        self.relu1, self.relu2 = torch.nn.ReLU(), torch.nn.ReLU()  # modules: zennit's Pass, as lrpgraph's
        self.align, self.rule = align, rule

    def forward(self, x):
        a = self.relu1(self.conv1(x))
        up = _EpsilonUpsample.apply(a, self.align) if self.rule else F.interpolate(
            a, scale_factor=2, mode="bilinear", align_corners=self.align)
        return self.fc(self.pool(self.relu2(self.conv2(up))).flatten(1))


@pytest.mark.parametrize("align", [False, True])
def test_epsilon_rule_on_bilinear_resize_matches_zennit(align):
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    onnx_bytes = export(Net(align), x)
    target = np.array([1, 2])
    options = dict(composite="epsilon", target="index", epsilon=EPS, stabilizer=EPS)
    _, heat = run_onnx(lrpgraph.convert(onnx_bytes, rules=[f"Resize=epsilon:{EPS}"], **options), x.numpy(), target)
    _, ref = zennit_relevance(Net(align, rule=True), x, zennit_composite("epsilon", EPS, EPS), target, torch.float64)
    assert np.abs(ref).sum() > 0 and l1(heat, ref) <= 1e-4, l1(heat, ref)
    _, moved = run_onnx(lrpgraph.convert(onnx_bytes, **options), x.numpy(), target)
    _, ref_moved = zennit_relevance(Net(align), x, zennit_composite("epsilon", EPS, EPS), target, torch.float64)
    assert l1(moved, ref_moved) <= 1e-4 and l1(moved, heat) > 1e-2, (l1(moved, ref_moved), l1(moved, heat))

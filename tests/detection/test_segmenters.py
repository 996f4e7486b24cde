"""torchvision segmenters (weights=None, 128 px; LR-ASPP by the dynamo exporter, whose Resize sizes are computed from
Shape with a dynamic batch, DeepLabV3 by the TorchScript one) convert as a whole graph: bilinear
Resize (the ASPP pooled branch's and the final upsampling), LR-ASPP's gate, skip Adds. A region seed (the class-c
logits on the pixels predicted as c, L-CRP's choice) gives zennit's float64 heatmap, with the plain gradient
on the Adds and Muls between modules as zennit's plain `+` and `*` (`--rule Add=gradient --rule Mul=gradient`),
and its gradient and IG equal torch autograd's; fcn_resnet50 with the default rules and a small U-Net (bilinear upsampling, skip Concats) match zennit too."""

import functools

import numpy as np
import pytest
import torch
import torchvision

from seeded_ref import run, seeded
from test_parity_legacy_export import legacy_export
from zennit_ref import ExactMergeBatchNorm, export, l1, randomize_batch_norm, resnet_canonizer, zennit_composite

SIDE, CLASSES, CLASS = 128, 5, 2
OVERRIDES = ["Add=gradient", "Mul=gradient"]


class Out(torch.nn.Module):
    """The segmenter's 'out' map [N, classes, H, W] (what a deployed segmenter exports)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


@functools.cache
def segmenter(name):
    torch.manual_seed(0)
    build = getattr(torchvision.models.segmentation, name)
    model = Out(build(weights=None, weights_backbone=None, num_classes=CLASSES, aux_loss=None))
    with torch.no_grad():
        randomize_batch_norm(model, torch.Generator().manual_seed(0))
    x = torch.rand(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    return model.eval(), x, export(model.eval(), x) if name.startswith("lraspp") else legacy_export(model, x)


def region(y):
    """The class-CLASS logits where CLASS is predicted (or everywhere, if it is nowhere)."""
    mask = y.argmax(1) == CLASS
    mask = mask if mask.any() else np.ones_like(mask)
    seed = np.zeros_like(y)
    seed[:, CLASS] = mask
    return seed


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_region_seed_matches_zennit(name):
    model, x, onnx_bytes = segmenter(name)
    y, heat = run(seeded(onnx_bytes, "epsilon-plus-flat", rules=OVERRIDES), x.numpy(), region)
    seed = torch.from_numpy(region(y)).double()
    reference = model.double()
    xx = x.double().requires_grad_(True)
    composite = zennit_composite("epsilon-plus-flat", 1e-6, 1e-6, canonizers=[ExactMergeBatchNorm()])
    with composite.context(reference) as modified:
        out = modified(xx)
        (ref,) = torch.autograd.grad(out, xx, seed)
    model.float()
    assert np.allclose(y, out.detach().numpy(), rtol=1e-4, atol=1e-4 * np.abs(y).max()), "logits differ from torch"
    assert np.abs(ref.numpy()).sum() > 0 and l1(heat, ref.numpy()) <= 1e-4, l1(heat, ref.numpy())


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_region_gradient_matches_autograd(name):
    model, x, onnx_bytes = segmenter(name)
    y, heat = run(seeded(onnx_bytes, "gradient"), x.numpy(), region)
    xx = x.double().requires_grad_(True)
    (ref,) = torch.autograd.grad(model.double()(xx), xx, torch.from_numpy(region(y)).double())
    model.float()
    assert l1(heat, ref.numpy()) <= 1e-4, l1(heat, ref.numpy())



@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_region_ig_matches_autograd(name):
    """IG (4 right Riemann steps, zero baseline) of a region seed fed at run time (`--target seed`, K = 1), through the
    public convert, against x * the mean of float64 autograd gradients at a x, a = 1/4 .. 1."""
    import onnxruntime as ort

    import lrpgraph

    model, x, onnx_bytes = segmenter(name)
    converted = lrpgraph.convert(onnx_bytes, method="ig", target="seed", steps=4)
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    image = session.get_inputs()[0].name
    y = dict(zip(names, session.run(None, {image: x.numpy(), "relevance_seed": np.zeros((2, 1, CLASSES, SIDE, SIDE),
                                                                                         np.float32)})))
    seed = region(next(v for k, v in y.items() if k != "relevance"))
    heat = dict(zip(names, session.run(None, {image: x.numpy(), "relevance_seed": seed[:, None]})))["relevance"][:, 0]
    reference, xd = model.double(), x.double()
    try:
        grads = []
        for a in (0.25, 0.5, 0.75, 1.0):
            point = (a * xd).requires_grad_(True)
            grads.append(torch.autograd.grad(reference(point), point, torch.from_numpy(seed).double())[0])
        ref = (xd * torch.stack(grads).mean(0)).numpy()
    finally:
        model.float()
    assert np.abs(ref).sum() > 0 and l1(heat, ref) <= 1e-4, l1(heat, ref)


class UNet(torch.nn.Module):
    """A small U-Net: two poolings down, bilinear upsampling (align_corners as given) back, skip Concats."""

    def __init__(self, align_corners):
        super().__init__()

        def block(i, o):
            return torch.nn.Sequential(torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.ReLU())
        self.down1, self.down2, self.bottom = block(3, 8), block(8, 16), block(16, 16)
        self.pool = torch.nn.MaxPool2d(2)
        self.up = torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=align_corners)
        self.up2, self.up1 = block(32, 8), block(16, 8)
        self.head = torch.nn.Conv2d(8, CLASSES, 1)

    def forward(self, x):
        d1 = self.down1(x)
        d2 = self.down2(self.pool(d1))
        b = self.bottom(self.pool(d2))
        u2 = self.up2(torch.cat([self.up(b), d2], 1))
        return self.head(self.up1(torch.cat([self.up(u2), d1], 1)))


@pytest.mark.parametrize("align_corners", [False, True])
def test_unet_region_seed_matches_zennit(align_corners):
    torch.manual_seed(0)
    model = UNet(align_corners).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y, heat = run(seeded(legacy_export(model, x), "epsilon-plus-flat"), x.numpy(), region)
    reference = model.double()
    xx = x.double().requires_grad_(True)
    with zennit_composite("epsilon-plus-flat", 1e-6, 1e-6).context(reference) as modified:
        (ref,) = torch.autograd.grad(modified(xx), xx, torch.from_numpy(region(y)).double())
    model.float()
    assert np.abs(ref.numpy()).sum() > 0 and l1(heat, ref.numpy()) <= 1e-4, l1(heat, ref.numpy())


def test_fcn_resnet50_region_seed_matches_zennit():
    """fcn_resnet50 (TorchScript export, 128 px): lrpgraph's default rules (the norm rule on the residual Adds) against
    zennit with its ResNet canonizer."""
    torch.manual_seed(0)
    net = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=CLASSES,
                                                       aux_loss=None)
    model = Out(net)
    with torch.no_grad():
        randomize_batch_norm(model, torch.Generator().manual_seed(0))
    model.eval()
    x = torch.rand(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    y, heat = run(seeded(legacy_export(model, x), "epsilon-plus-flat"), x.numpy(), region)
    reference = model.double()
    xx = x.double().requires_grad_(True)
    composite = zennit_composite("epsilon-plus-flat", 1e-6, 1e-6, canonizers=[resnet_canonizer()])
    with composite.context(reference) as modified:
        (ref,) = torch.autograd.grad(modified(xx), xx, torch.from_numpy(region(y)).double())
    model.float()
    assert np.abs(ref.numpy()).sum() > 0 and l1(heat, ref.numpy()) <= 1e-4, l1(heat, ref.numpy())


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_importer_runs_segmenters_as_onnxruntime(name):
    """lrpgraph.train's importer computes a converted segmenter's map and relevance (bilinear Resize forward and
    backward, the ASPP pooled branch, the LR-ASPP gate) as onnxruntime does."""
    from seeded_ref import SEED, same_as_onnxruntime

    _, x, onnx_bytes = segmenter(name)
    seed = np.random.default_rng(0).random((2, CLASSES, SIDE, SIDE)).astype(np.float32)
    same_as_onnxruntime(seeded(onnx_bytes, "epsilon-plus-flat", rules=OVERRIDES), {"x": x.numpy(), SEED: seed})

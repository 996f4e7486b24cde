"""LRP-Flex parity: the `flex` composite against an independent torch transcription of LRP-Flex's definition (docs/rules.md, Composites).

The reference (float64): relevance = input x modified gradient, where every ReLU's backward multiplies
the gradient by a / (a + eps) (a = the ReLU's output, eps = 0.01, NaN -> 0), every other module uses its
plain autograd gradient (standalone BatchNorm included), and the first linear layer (with the BatchNorm
that follows it folded in, as in the ONNX file) is explained by zbox(low=0, high=1) applied to the
relevance z * g at its output, g being the modified gradient arriving there.

Precision: the ONNX model runs in float32, the reference in float64. The factor a / (a + 0.01) amplifies
the float32 rounding of small ReLU outputs (computed with cancellation), so the float32 floor of LRP-Flex
depends on the network: with eps -> 0 (plain gradient) the converted resnet18 is within 7e-7 of float64;
with eps = 0.01 it is about 2e-6 for the models below, but with BN scales in [0.5, 1.5] it was 6e-6 to 1e-5
(torch's own float32 run: 1.3e-5 to 2e-5), and with BN statistics calibrated on data 5e-5 (torch float32:
1.2e-4). Those are rounding, not rule differences; the models here keep the floor well below 1e-5.
"""

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import lrpgraph
from zennit_ref import l1  # noqa: E402

FLEX_EPS = 0.01
STAB = 1e-6
TOL = 1e-5


# ---------------------------------------------------------------------------------------------- reference
class FlexReluFn(torch.autograd.Function):
    """ReLU whose backward multiplies the incoming gradient by a / (a + eps), NaN -> 0."""

    @staticmethod
    def forward(ctx, x, eps):
        a = x.clamp(min=0)
        ctx.save_for_backward(a)
        ctx.eps = eps
        return a

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        ratio = a / (a + ctx.eps)
        ratio = torch.where(torch.isnan(ratio), torch.zeros_like(ratio), ratio)
        return grad * ratio, None


class FlexReLU(nn.Module):
    def forward(self, x):
        return FlexReluFn.apply(x, FLEX_EPS)


def flexify(module):
    """Replace every nn.ReLU (recursively) with FlexReLU, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, FlexReLU())
        else:
            flexify(child)
    return module


def stab(z, eps=STAB):
    return z + eps * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))


def folded_weight(conv, bn):
    """The first layer's weight as the ONNX file holds it: conv weight times gamma / sqrt(var + eps)."""
    if bn is None:
        return conv.weight
    k = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return conv.weight * k.reshape(-1, 1, 1, 1)


def zbox(conv, weight, x, relevance, low=0.0, high=1.0):
    """zbox for a Conv: R_i = sum_j (x w - l w+ - h w-) R_j / stab(sum_i (x w - l w+ - h w-)), float64."""
    xx = x.detach().clone().requires_grad_(True)
    ll = torch.full_like(x, low).requires_grad_(True)
    hh = torch.full_like(x, high).requires_grad_(True)

    def c(t, w):
        return F.conv2d(t, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)

    z = c(xx, weight) - c(ll, weight.clamp(min=0)) - c(hh, weight.clamp(max=0))
    gx, gl, gh = torch.autograd.grad(z, (xx, ll, hh), relevance / stab(z.detach()))
    return (xx * gx + ll * gl + hh * gh).detach()


class FlexReference:
    """The forward pass of the flexified torch model, run once (float64 by default); relevance(classes)
    then gives the LRP-Flex heatmap for one explained class per sample.

    forward(model, x) runs the model; first_out is the module whose output is the first linear layer's
    output z (the BatchNorm folded into it, or the conv itself); first_bn that BatchNorm or None."""

    def __init__(self, model, forward, first_conv, first_out, first_bn, x, dtype=torch.float64):
        self.model = model.to(dtype)
        self.x = torch.as_tensor(np.asarray(x), dtype=dtype)
        captured = {}
        handle = first_out.register_forward_hook(lambda m, i, o: captured.__setitem__("z", o))
        try:
            self.y = forward(self.model, self.x)
        finally:
            handle.remove()
        self.z = captured["z"]
        self.conv = first_conv
        self.weight = folded_weight(first_conv, first_bn).detach()

    def logits(self):
        return self.y.detach().numpy()

    def relevance(self, classes):
        onehot = torch.zeros_like(self.y)
        onehot[torch.arange(len(self.y)), torch.as_tensor(np.asarray(classes))] = 1.0
        (g,) = torch.autograd.grad(self.y, self.z, onehot, retain_graph=True)
        return zbox(self.conv, self.weight, self.x, self.z.detach() * g).numpy()


# ---------------------------------------------------------------------------------------------- models
def randomize_batchnorm(model, gen):
    """Random running statistics and affine parameters (scales of both signs: a negative one flips the sign of
    folded weights, which zbox sees), so that folding and BN gradients matter. |scale| in [0.5, 1] keeps the
    activations moderate: see the module docstring on precision."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                sign = torch.where(torch.rand(n, generator=gen) < 0.25, -1.0, 1.0)
                m.weight.copy_(sign * (torch.rand(n, generator=gen) * 0.5 + 0.5))
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.0 + 0.5)
    return model


class SmallNet(nn.Module):
    """Conv (bias) -> ReLU -> MaxPool 3x3/2 -> residual add -> concat -> standalone BN -> ReLU -> GAP -> Linear."""

    def __init__(self, classes=5):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu0 = nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2, padding=1)
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(6, 4, 1)
        self.bn = nn.BatchNorm2d(10)
        self.relu3 = nn.ReLU()
        self.fc = nn.Linear(10, classes)

    def forward(self, x):
        h = self.pool(self.relu0(self.conv0(x)))
        h = self.relu2(h + self.conv2(self.relu1(self.conv1(h))))
        h = torch.cat([h, self.conv3(h)], dim=1)
        h = self.relu3(self.bn(h))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def densenet_forward(model, x):
    """torchvision DenseNet.forward with its functional F.relu replaced by the flex ReLU."""
    out = FlexReluFn.apply(model.features(x), FLEX_EPS)
    out = torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
    return model.classifier(out)


def export(model, x):
    """ONNX bytes, dynamic batch. The TorchScript exporter is much faster on DenseNet than dynamo; fall back
    to dynamo (tests.zennit_ref.export) where it is gone."""
    model = model.eval()
    try:
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
        return buffer.getvalue()
    except Exception:  # pragma: no cover - depends on the torch version
        from tests.zennit_ref import export as dynamo_export

        return dynamo_export(model, x)


def build(name):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "resnet18":
        model = randomize_batchnorm(torchvision.models.resnet18(num_classes=10), gen).eval()
        first = (model.conv1, model.bn1, model.bn1)
        forward = lambda m, x: m(x)  # noqa: E731
    elif name == "densenet121":
        model = randomize_batchnorm(torchvision.models.densenet121(num_classes=10), gen).eval()
        first = (model.features.conv0, model.features.norm0, model.features.norm0)
        forward = densenet_forward
    else:
        model = randomize_batchnorm(SmallNet(), gen).eval()
        first = (model.conv0, model.conv0, None)
        forward = lambda m, x: m(x)  # noqa: E731
    size = 16 if name == "small" else 64
    x = torch.rand(2, 3, size, size, generator=gen)
    onnx_bytes = export(model, x[:1])
    flexify(model)
    return model, forward, first, x.numpy(), onnx_bytes


@pytest.fixture(scope="module", params=["small", "resnet18", "densenet121"])
def case(request):
    model, forward, (conv, out, bn), x, onnx_bytes = build(request.param)
    return FlexReference(model, forward, conv, out, bn, x), x, onnx_bytes


def run(proto, x, target=None):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"x": np.asarray(x, np.float32)}
    if target is not None:
        feeds["target"] = np.asarray(target, np.int64)
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    return out["y"], out["relevance"]


@pytest.mark.parametrize("target", ["top", "index"])
def test_flex_matches_torch_reference(case, target):
    reference, x, onnx_bytes = case
    proto = lrpgraph.convert(onnx.load_from_string(onnx_bytes), composite="flex", target=target)
    chosen = np.array([3, 1]) if target == "index" else None
    y, relevance = run(proto, x, chosen)
    np.testing.assert_allclose(y, reference.logits(), rtol=1e-4, atol=1e-4)
    r_ref = reference.relevance(y.argmax(1) if chosen is None else chosen)
    assert relevance.shape == x.shape
    assert np.abs(r_ref).sum() > 0
    assert l1(relevance, r_ref) < TOL, l1(relevance, r_ref)


def test_flex_epsilon_option():
    """The reference is sensitive to the a / (a + eps) factor (eps = 1 differs from eps = 0.01), and the
    converted model follows flex_epsilon."""
    global FLEX_EPS
    model, forward, (conv, out, bn), x, onnx_bytes = build("small")
    proto = lrpgraph.convert(onnx.load_from_string(onnx_bytes), composite="flex", flex_epsilon=1.0)
    y, relevance = run(proto, x)
    saved = FLEX_EPS
    try:
        FLEX_EPS = 1.0
        r_ref = FlexReference(model, forward, conv, out, bn, x).relevance(y.argmax(1))
    finally:
        FLEX_EPS = saved
    r_default = FlexReference(model, forward, conv, out, bn, x).relevance(y.argmax(1))
    assert l1(relevance, r_ref) < TOL, l1(relevance, r_ref)
    assert l1(r_default, r_ref) > 1e-3

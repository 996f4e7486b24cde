"""Independent references: torch models exported to ONNX, and zennit heatmaps of the same models."""

import io

import numpy as np
import onnxruntime as ort
import torch
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import (EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlus,
                               EpsilonPlusFlat, LayerMapComposite, layer_map_base)
from zennit.rules import Epsilon, ZPlus
from zennit.types import Linear

import lrpgraph


def export(model, example, path=None):
    """torch.onnx.export (dynamo) with a dynamic batch; returns the ONNX bytes or writes path."""
    batch = torch.export.Dim("batch", min=1)
    target = path or io.BytesIO()
    program = torch.onnx.export(model.eval(), (example,), None, external_data=False, verbose=False,
                                dynamic_shapes=({0: batch},))
    program.save(target) if path else None
    if path:
        return path
    return program.model_proto.SerializeToString()


def zennit_composite(name, epsilon=1e-6, stabilizer=1e-6, low=0.0, high=1.0, canonizers=()):
    kw = dict(canonizers=list(canonizers))
    if name == "epsilon":
        return LayerMapComposite(layer_map=layer_map_base(stabilizer) + [(Linear, Epsilon(epsilon))], **kw)
    if name == "epsilon-plus":
        return EpsilonPlus(epsilon=epsilon, stabilizer=stabilizer, **kw)
    if name == "zplus":  # z+ on every Conv and Linear
        return LayerMapComposite(layer_map=layer_map_base(stabilizer) + [(Linear, ZPlus(stabilizer=stabilizer))], **kw)
    if name == "epsilon-plus-flat":
        return EpsilonPlusFlat(epsilon=epsilon, stabilizer=stabilizer, **kw)
    if name == "epsilon-gamma-box":
        return EpsilonGammaBox(low=low, high=high, epsilon=epsilon, stabilizer=stabilizer, **kw)
    if name == "epsilon-alpha2-beta1":
        return EpsilonAlpha2Beta1(epsilon=epsilon, stabilizer=stabilizer, **kw)
    if name == "epsilon-alpha2-beta1-flat":
        return EpsilonAlpha2Beta1Flat(epsilon=epsilon, stabilizer=stabilizer, **kw)
    raise KeyError(name)


def zennit_relevance(model, x, composite, target=None, dtype=torch.float32):
    """Heatmap with the seed y_c at class c (c = argmax, or target per sample)."""
    model = model.to(dtype)
    x = x.to(dtype).clone().requires_grad_(True)
    with composite.context(model) as modified:
        y = modified(x)
        c = y.argmax(1) if target is None else torch.as_tensor(target)
        seed = torch.zeros_like(y)
        seed[torch.arange(len(c)), c] = y[torch.arange(len(c)), c]
        (grad,) = torch.autograd.grad(y, x, seed.detach())
    model.float()
    return y.detach().float().numpy(), grad.detach().float().numpy()


def run_onnx(model_proto, x, target=None):
    session = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: np.asarray(x, np.float32)}
    if target is not None:
        feeds["target"] = np.asarray(target, np.int64)
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, feeds)))
    return out[names[0]], out["relevance"]


def l1(a, ref):
    return float(np.abs(a - ref).sum() / np.abs(ref).sum())


def assert_within(errors, bound, what):
    """errors {case: L1 against a float64 reference}: each within the fixed bound; prints the numbers."""
    print(f"{what}: L1 {errors} (bound {bound:.0e})")
    assert max(errors.values()) <= bound, f"{what}: L1 {errors} exceeds {bound:.0e}"


def convert_bytes(onnx_bytes, **options):
    import onnx

    return lrpgraph.convert(onnx.load_from_string(onnx_bytes), **options)


def merge_bn():
    return SequentialMergeBatchNorm()


class ExactMergeBatchNorm(SequentialMergeBatchNorm):
    """zennit merges BatchNorm into the preceding layer but leaves the emptied BatchNorm computing
    x / sqrt(1 + eps), not x; torch.onnx.export folds exactly. Setting eps to 0 while merged makes zennit
    see the model that the ONNX file holds."""

    def register(self, linears, batch_norm):
        super().register(linears, batch_norm)
        self.saved_eps, batch_norm.eps = batch_norm.eps, 0.0

    def remove(self):
        super().remove()
        self.batch_norm.eps = self.saved_eps


def resnet_canonizer():
    from zennit.canonizers import CompositeCanonizer
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

    return CompositeCanonizer([ExactMergeBatchNorm(), ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()])


class PairMergeBatchNorm:
    """Merge exactly the (linear, BatchNorm) pairs that pairs(model) names, as the ONNX exporter folds them.
    zennit's SequentialMergeBatchNorm pairs neighbouring leaves of the module tree, which in DenseNet
    crosses from one dense layer's conv2 to the next layer's norm1 (no data flows between them)."""

    def __init__(self, pairs):
        self.pairs, self.merges = pairs, []

    def apply(self, root_module):
        instance = PairMergeBatchNorm(self.pairs)
        instance.register(root_module)
        return [instance]

    def register(self, root_module):
        for linear, batch_norm in self.pairs(root_module):
            merge = ExactMergeBatchNorm()
            merge.register((linear,), batch_norm)
            self.merges.append(merge)

    def remove(self):
        for merge in reversed(self.merges):
            merge.remove()
        self.merges = []


def densenet_pairs(model):
    """conv0 -> norm0, and in every dense layer conv1 -> norm2 (norm1 precedes a conv: it stays)."""
    from torchvision.models.densenet import _DenseLayer

    pairs = [(model.features.conv0, model.features.norm0)]
    return pairs + [(m.conv1, m.norm2) for m in model.modules() if isinstance(m, _DenseLayer)]


class InvertedResidualCanonizer:
    """torchvision MobileNetV2's `x + self.conv(x)` as a zennit Sum module, so zennit applies the norm rule."""

    @staticmethod
    def make():
        from torchvision.models.mobilenetv2 import InvertedResidual
        from zennit.canonizers import AttributeCanonizer
        from zennit.layer import Sum

        def forward(self, x):
            return self.canonizer_sum(torch.stack([x, self.conv(x)], dim=-1))

        def attribute_map(name, module):
            if isinstance(module, InvertedResidual) and module.use_res_connect:
                return {"forward": forward.__get__(module), "canonizer_sum": Sum()}
            return None

        return AttributeCanonizer(attribute_map)


class Pooled(torch.nn.Module):
    """features -> [ReLU] -> AdaptiveAvgPool2d(1) -> flatten -> classifier, all as modules (torchvision's
    DenseNet and MobileNetV2 pool functionally, which zennit cannot map to its norm rule)."""

    def __init__(self, features, classifier, relu=False):
        super().__init__()
        self.features = features
        self.relu = torch.nn.ReLU() if relu else torch.nn.Identity()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.relu(self.features(x))), 1))


def randomize_batch_norm(model, generator):
    """Give every BatchNorm non-trivial statistics and affine parameters, so that folding matters."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=generator))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=generator))
    return model


def zero_biases(model, x):
    """All biases and BatchNorm shifts zero (for conservation checks), with each BatchNorm's variance set to
    the mean square of its input on x, as training would: without shifts a random deep net's activations
    otherwise shrink towards the stabilizer (mobilenet_v2's logits fell to 3e-9)."""

    def calibrate(module, inputs):
        module.running_var.copy_(inputs[0].pow(2).mean((0, 2, 3)) + 1e-6)

    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.zero_()
        hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules()
                 if isinstance(m, torch.nn.BatchNorm2d)]
        model(x)
        for hook in hooks:
            hook.remove()
    return model


def torchvision_model(name, seed=0):
    """(model in eval mode, zennit canonizers) for resnet18, vgg16_bn, densenet121, mobilenet_v2."""
    import torchvision
    from zennit.canonizers import CompositeCanonizer

    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None)
    if name == "densenet121":
        model = Pooled(model.features, model.classifier, relu=True)
    elif name == "mobilenet_v2":
        model = Pooled(model.features, model.classifier)
    with torch.no_grad():
        randomize_batch_norm(model, torch.Generator().manual_seed(seed))
    if name.startswith("resnet"):
        canonizers = [resnet_canonizer()]
    elif name == "densenet121":
        canonizers = [PairMergeBatchNorm(densenet_pairs)]
    elif name == "mobilenet_v2":
        canonizers = [CompositeCanonizer([ExactMergeBatchNorm(), InvertedResidualCanonizer.make()])]
    else:
        canonizers = [ExactMergeBatchNorm()]
    return model.eval(), canonizers


def vgg16_bn_small_head():
    """torchvision vgg16_bn (13 Conv+BN+ReLU, 5 MaxPool) with a narrow head (AdaptiveAvgPool2d(1),
    512-256-256-10): its own 7 x 7 adaptive pool and 4096-wide head need 224 px."""
    model, canonizers = torchvision_model("vgg16_bn")
    torch.manual_seed(1)
    model.avgpool = torch.nn.AdaptiveAvgPool2d(1)
    model.classifier = torch.nn.Sequential(torch.nn.Linear(512, 256), torch.nn.ReLU(True), torch.nn.Dropout(),
                                           torch.nn.Linear(256, 256), torch.nn.ReLU(True), torch.nn.Dropout(),
                                           torch.nn.Linear(256, 10))
    return model.eval(), canonizers


def digit_model():
    """The pretrained MNIST CNN shipped by digit-recognizer-py (real weights nobody here trained)."""
    import os

    import digit_recognizer
    from digit_recognizer.model import CNN

    model = CNN()
    path = os.path.join(os.path.dirname(digit_recognizer.__file__), "models", "handwriting_model.pth")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state.get("model_state_dict", state) if isinstance(state, dict) else state)
    return model.eval()


def real_digits(n=8, jitter=0.0):
    """n scikit-learn digits (8x8, 0..16), upsampled and padded to 28x28 as MNIST is, normalised for MNIST.
    jitter > 0 adds uniform noise of that amplitude (in [0, 1] pixel units) so that max pooling over the
    otherwise constant background has no exact ties (which float32 and float64 may break differently)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images[:n], dtype=torch.float32)[:, None] / 16.0
    images = torch.nn.functional.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False)
    images = torch.nn.functional.pad(images, (4, 4, 4, 4))
    if jitter:
        images = images + jitter * torch.rand(images.shape, generator=torch.Generator().manual_seed(7))
    return (images - 0.1307) / 0.3081, torch.tensor(digits.target[:n])

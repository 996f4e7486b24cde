"""Independent references: torch models exported to ONNX, and zennit heatmaps of the same models."""

import io

import numpy as np
import onnxruntime as ort
import torch
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import (EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlus,
                               EpsilonPlusFlat, LayerMapComposite, layer_map_base)
from zennit.rules import Epsilon
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

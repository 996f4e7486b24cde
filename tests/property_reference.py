"""The zennit reference of the property test's models (tests/property_models.py) in float64, and the
comparison of lrpgraph's converted model with it (tests/test_property.py, benchmarks/property_nightly.py)."""

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from zennit.canonizers import Canonizer
from zennit.composites import (EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlus,
                               EpsilonPlusFlat, LayerMapComposite, layer_map_base)
from zennit.rules import Epsilon, Pass, ZPlus
from zennit.types import BatchNorm as BatchNormTypes
from zennit.types import Linear as LinearTypes

from property_models import Gate, Residual, build, image, target_feed
from zennit_ref import ExactMergeBatchNorm, convert_bytes, export


class SiblingMergeBatchNorm(Canonizer):
    """Merge every BatchNorm that follows a Conv/Linear inside one nn.Sequential, directly or through other
    BatchNorms (Conv -> BN -> BN: the ONNX exporter folds both into the Conv), with ExactMergeBatchNorm.
    zennit's SequentialMergeBatchNorm pairs adjacent leaves of the module tree instead, also across module
    boundaries where no data flows from one to the other, and merges only the first of two BatchNorms."""

    def __init__(self):
        super().__init__()
        self.merges = []

    def apply(self, root_module):
        instance = self.copy()
        instance.register(root_module)
        return [instance]

    def register(self, root_module):
        for module in root_module.modules():
            if not isinstance(module, nn.Sequential):
                continue
            linear = None
            for child in module.children():
                if isinstance(child, LinearTypes):
                    linear = child
                elif isinstance(child, BatchNormTypes) and linear is not None:
                    merge = ExactMergeBatchNorm()
                    merge.register((linear,), child)
                    self.merges.append(merge)
                else:
                    linear = None

    def remove(self):
        for merge in reversed(self.merges):  # a chain restores the weights it saw, latest first
            merge.remove()
        self.merges = []


def reference_composite(name, eps, stabilizer, low, high):
    """zennit's composite of that name (zplus: z+ on every Conv and Linear), the gate module mapped to Pass."""
    kw = dict(layer_map=[(Gate, Pass())], canonizers=[SiblingMergeBatchNorm()])
    if name in ("epsilon", "zplus"):
        rule = Epsilon(eps) if name == "epsilon" else ZPlus(stabilizer=stabilizer)
        return LayerMapComposite(layer_map=kw["layer_map"] + layer_map_base(stabilizer) + [(LinearTypes, rule)],
                                 canonizers=kw["canonizers"])
    if name == "epsilon-gamma-box":
        return EpsilonGammaBox(low=low, high=high, epsilon=eps, stabilizer=stabilizer, **kw)
    classes = {"epsilon-plus": EpsilonPlus, "epsilon-plus-flat": EpsilonPlusFlat,
               "epsilon-alpha2-beta1": EpsilonAlpha2Beta1, "epsilon-alpha2-beta1-flat": EpsilonAlpha2Beta1Flat}
    return classes[name](epsilon=eps, stabilizer=stabilizer, **kw)


def reference_relevance(model, x, composite, seed):
    """zennit's heatmap in float64 for the relevance seed [N, C] at the logits (a function of the float64
    logits, or a tensor)."""
    for module in model.modules():
        if isinstance(module, Residual):
            module.use_sum = True
    model.double()
    try:
        x = x.double().clone().requires_grad_(True)
        with composite.context(model) as modified:
            y = modified(x)
            (grad,) = torch.autograd.grad(y, x, seed(y.detach()) if callable(seed) else seed)
        return grad.detach().numpy()
    finally:
        model.float()
        for module in model.modules():
            if isinstance(module, Residual):
                module.use_sum = False


def box(model, x):
    """zbox bounds (low, high) that enclose every value reaching the first conv (a BatchNorm may come first)."""
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    seen = []
    handle = first.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return float(np.floor(seen[0].min().item()) - 0.5), float(np.ceil(seen[0].max().item()) + 0.5)


def relative_l1(ours, reference):
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.abs(ours - reference).sum() / max(np.abs(reference).sum(), 1e-30))


# ---------------------------------------------------------------- the comparison


class Vacuous(Exception):
    """Every reference heatmap of an example is exactly zero (e.g. a ReLU that kills every unit): agreeing with
    it would prove nothing, so the example does not count."""


def run_converted(converted, x, mode, feed):
    """(logits, relevance) of the converted model on x, feeding `target` [N] (index) or `relevance_seed` [N, C]."""
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: np.asarray(x, np.float32)}
    if mode == "index":
        feeds["target"] = np.asarray(feed, np.int64)
    if mode == "seed":
        feeds["relevance_seed"] = np.asarray(feed, np.float32)
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, feeds)))
    return out[names[0]], out["relevance"]


def errors(arch, settings, stabilizer):
    """Export the model (batch 2), convert it with every (composite, epsilon) setting and the stabilizer of the
    other rules, run a batch of 3 with the architecture's target mode, and return
    {(composite, epsilon): relative L1 against zennit in float64}.
    Raises AssertionError where the converted model's logits differ from torch's, Vacuous where every
    reference heatmap is exactly zero."""
    model = build(arch)
    onnx_bytes = export(model, image(arch, 2))
    x = image(arch, 3)
    low, high = box(model, x)
    with torch.no_grad():
        logits64 = model.double()(x.double())
    model.float()
    mode = arch.get("target", "top")
    out, signal = {}, 0.0
    for name, eps in settings:
        converted = convert_bytes(onnx_bytes, composite=name, target=mode, epsilon=eps, stabilizer=stabilizer,
                                  low=low, high=high)
        feed, seed = target_feed(arch, logits64)
        y, relevance = run_converted(converted, x.numpy(), mode, feed)
        assert np.abs(y - logits64.numpy()).max() <= 1e-4 * np.abs(y).max() + 1e-6, f"logits differ from torch: {arch}"
        if mode == "top":  # the class the graph explained, also where the logits nearly tie
            seed, index = torch.zeros_like(logits64), torch.as_tensor(y.argmax(1))
            seed[torch.arange(len(index)), index] = logits64[torch.arange(len(index)), index]
        elif mode == "all":
            seed = lambda logits: logits  # noqa: E731  zennit's own float64 logits
        reference = reference_relevance(model, x, reference_composite(name, eps, stabilizer, low, high), seed)
        out[(name, eps)] = relative_l1(relevance, reference)
        signal += float(np.abs(np.asarray(reference)).sum())
    if signal == 0.0:
        raise Vacuous(f"every reference heatmap is zero for {arch}")
    return out

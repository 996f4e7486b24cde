"""The torchvision classifiers of test_parity_zennit.py exported with the legacy TorchScript exporter
(torch.onnx.export(..., dynamo=False), opset 17: Constant nodes, Conv+BatchNorm folded by the exporter,
Flatten, Identity-shared weights) convert and match zennit in float64 under the same fixed bounds as the
dynamo exports (check_parity: 1e-4 at eps = 1e-6, 1e-5 at eps = 0.01). Three composites per architecture
(epsilon-plus, epsilon-gamma-box, epsilon at 0.01), targets 'top' and 'index'; a case test_parity_zennit
calls ill-conditioned in float32 runs at eps = 0.01 instead, or not at all (densenet121's epsilon)."""

import functools
import io
import warnings

import pytest
import torch
from test_parity_zennit import SIDE, check_parity, ill_conditioned
from zennit_ref import torchvision_model, vgg16_bn_small_head

ARCHS = ["resnet18", "vgg16_bn", "densenet121", "mobilenet_v2"]
CASES = [("epsilon-plus", 1e-6), ("epsilon-gamma-box", 1e-6), ("epsilon", 0.01)]


def cases():
    for name in ARCHS:
        for composite, eps in CASES:
            eps = 0.01 if ill_conditioned(name, composite, eps) else eps
            if not ill_conditioned(name, composite, eps):
                yield name, composite, eps


def legacy_export(model, x):
    target = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice
        torch.onnx.export(model.eval(), (x,), target, dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "N"}})
    return target.getvalue()


@functools.cache
def legacy_case(name):
    model, canonizers = vgg16_bn_small_head() if name == "vgg16_bn" else torchvision_model(name)
    x = torch.rand(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    return model, canonizers, x, legacy_export(model, x)


@pytest.mark.parametrize("name,composite,eps", list(cases()))
def test_legacy_export_matches_zennit(name, composite, eps):
    model, canonizers, x, onnx_bytes = legacy_case(name)
    check_parity(model, canonizers, x, onnx_bytes, composite, eps, f"legacy {name} {composite} eps={eps:g}")

"""torchvision ConvNeXt under attn-lrp: LayerNorm (channels-last and LayerNorm2d) with sigma constant, GELU
identity, layer scale and residuals by their gradient, and the convolution rule chosen with --rule
(epsilon, z+), against zennit on Conv2d plus LXT's LayerNorm and GELU patches in float64."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import lrpgraph

pytest.importorskip("lxt")
import lxt_ref  # noqa: E402
import transformer_models as tm  # noqa: E402
from zennit_ref import l1  # noqa: E402

TOL = 1e-4


def case(tmp, tiny):
    model = tm.convnext(seed=0, tiny=tiny)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    np.savez(tmp / "x.npz", x=x.numpy())
    return dict(onnx=tm.export_image_model(model, x), x=x, tmp=tmp, tiny=tiny,
                state=tm.save_for_reference(model, str(tmp / "convnext.pt")))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return case(tmp_path_factory.mktemp("convnext"), tiny=False)


def check(c, rule, zennit_rule, name):
    converted = lrpgraph.convert(c["onnx"], composite="attn-lrp", rules=[f"Conv={rule}"])
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, relevance = session.run(None, {"x": c["x"].numpy()})[:2]
    ref = lxt_ref.run(dict(model="convnext", tiny=c["tiny"], state=c["state"], inputs=str(c["tmp"] / "x.npz"),
                           method="attn-lrp", rules={"Conv": zennit_rule}, out=str(c["tmp"] / f"{name}.npz")))
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-5)
    error = l1(relevance, ref["relevance"])
    print(f"ConvNeXt {name} (Conv={rule}): L1 vs zennit + LXT {error:.1e}")
    assert error <= TOL


@pytest.mark.parametrize("rule, zennit_rule", [("epsilon", ["epsilon", 1e-6]), ("zplus", ["zplus"])])
def test_convnext_matches_zennit_and_lxt(small, rule, zennit_rule):
    check(small, rule, zennit_rule, rule)


@pytest.mark.slow
def test_convnext_tiny_matches_zennit_and_lxt(tmp_path):
    check(case(tmp_path, tiny=True), "zplus", ["zplus"], "tiny")

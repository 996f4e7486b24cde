"""A torchvision VisionTransformer (64 px, patch 8, 4 layers, 4 heads, hidden 64; random weights), exported
with torch.onnx.export (dynamo, dynamic batch), converted with --composite cp-lrp / attn-lrp and compared
with LXT 2.1 computed in float64 (lxt_ref.py, in a subprocess). Slow: torchvision's vit_b_16 at 224 px, both
composites against LXT. Conservation of cp-lrp on the bias-free model and the gradient methods against torch
autograd: test_transformer_methods.py."""

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


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vit")
    model = tm.vit(seed=0)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    onnx_bytes = tm.export_image_model(model, x[:2])
    state = tm.save_for_reference(model, str(tmp / "vit.pt"))
    np.savez(tmp / "x.npz", x=x.numpy())
    return dict(model=model, x=x, onnx=onnx_bytes, state=state, tmp=tmp)


def run(converted, x):
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, relevance = session.run(None, {session.get_inputs()[0].name: x.numpy()})[:2]
    return logits, relevance


def reference(vit, method, rules=None, name=None):
    """LXT's heatmap in float64 (rules: zennit rules on nn.Linear / nn.Conv2d; none: LXT alone)."""
    job = dict(model="vit", state=vit["state"], inputs=str(vit["tmp"] / "x.npz"), method=method, rules=rules or {},
               out=str(vit["tmp"] / f"{name or method}.npz"))
    return lxt_ref.run(job)


@pytest.mark.parametrize("composite", ["epsilon", "epsilon-plus-flat", "zplus"])
def test_lrp_composites_refuse_a_transformer(vit, composite):
    """The LRP composites' attention rules are checked inside a CNN (YOLO11); on a transformer they would pass
    relevance through its LayerNorms unchecked, so it is refused in one line naming the composites made for it."""
    with pytest.raises(lrpgraph.LrpgraphError, match="a transformer .*use --composite attn-lrp or cp-lrp") as refused:
        lrpgraph.convert(vit["onnx"], composite=composite)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("composite", ["cp-lrp", "attn-lrp"])
def test_vit_matches_lxt(vit, composite):
    converted = lrpgraph.convert(vit["onnx"], composite=composite)
    logits, relevance = run(converted, vit["x"])
    ref = reference(vit, composite)
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-5)
    assert relevance.shape == (3, 3, 64, 64)
    error = l1(relevance, ref["relevance"])
    print(f"ViT {composite}: L1 vs LXT {error:.1e}")
    assert error <= TOL


@pytest.mark.parametrize("composite", ["cp-lrp", "attn-lrp"])
def test_vit_with_zennit_rules_matches_lxt(vit, composite):
    """Gamma on the patch embedding, epsilon on the nn.Linear modules (MLPs, head) as LXT's ViT example
    attaches zennit rules; the projections inside nn.MultiheadAttention are not modules zennit hooks, they
    keep LRP-0 on both sides. The rules are chosen by module path (from the exported bias names)."""
    linears = [f"encoder.layers.encoder_layer_{i}.mlp.{j}=epsilon" for i in range(4) for j in (0, 3)]
    converted = lrpgraph.convert(vit["onnx"], composite=composite,
                                 rules=["Conv=gamma:0.25", "heads.head=epsilon"] + linears)
    _, relevance = run(converted, vit["x"])
    ref = reference(vit, composite, rules={"Conv": ["gamma", 0.25], "Linear": ["epsilon", 1e-6]},
                    name=f"{composite}-zennit")
    error = l1(relevance, ref["relevance"])
    print(f"ViT {composite} with zennit rules: L1 vs LXT {error:.1e}")
    assert error <= TOL


@pytest.fixture(scope="module")
def vit_b_16(tmp_path_factory):
    """torchvision's vit_b_16 at 224 px: one export, and LXT's cp-lrp and attn-lrp heatmaps of one image in float64
    from one subprocess (one model build)."""
    tmp = tmp_path_factory.mktemp("vit_b_16")
    model = tm.vit(seed=0, full=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    onnx_bytes = tm.export_image_model(model, x)
    np.savez(tmp / "x.npz", x=x[:1].numpy())
    ref = lxt_ref.run(dict(model="vit", vit_b_16=True, state=tm.save_for_reference(model, str(tmp / "vit.pt")),
                           inputs=str(tmp / "x.npz"), method=["cp-lrp", "attn-lrp"], out=str(tmp / "ref.npz")))
    return dict(onnx=onnx_bytes, x=x[:1], ref=ref)


@pytest.mark.slow
@pytest.mark.parametrize("composite", ["cp-lrp", "attn-lrp"])
def test_vit_b_16_matches_lxt(vit_b_16, composite):
    """vit_b_16 at 224 px, one image: cp-lrp against LXT's cp_LRP, attn-lrp against LXT's efficient rules."""
    converted = lrpgraph.convert(vit_b_16["onnx"], composite=composite)
    logits, relevance = run(converted, vit_b_16["x"])
    np.testing.assert_allclose(logits, vit_b_16["ref"][f"logits_{composite}"], rtol=1e-4, atol=1e-5)
    error = l1(relevance, vit_b_16["ref"][f"relevance_{composite}"])
    print(f"vit_b_16 {composite}: L1 vs LXT {error:.1e}")
    assert error <= TOL

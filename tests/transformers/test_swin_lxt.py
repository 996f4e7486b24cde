"""torchvision's Swin transformer (v1: shifted windows by roll, window partition by Reshape/Transpose, the relative
position bias added before the Softmax, the shift mask, patch merging by strided Slices, padding to whole windows),
exported by the dynamo exporter with a dynamic batch, converted with --composite cp-lrp / attn-lrp and compared
with LXT 2.1's rules applied to torchvision's Swin in float64 (swin_ref.py, in a subprocess), batch 2: the small
Swin of tests/detection/test_computed_shapes.py at 32 px (also with Gamma on the patch embedding, zennit through
LXT), and swin_t's architecture (random weights) at 64 px, where stages 1 and 2 pad 16 and 8 to whole 7 x 7
windows and shift them, stages 3 and 4 pad 4 and 2 to one window and do not shift."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import lrpgraph

pytest.importorskip("lxt")
import swin_ref  # noqa: E402
import transformer_models as tm  # noqa: E402
from zennit_ref import l1  # noqa: E402

TOL = 1e-4
METHODS = ["cp-lrp", "attn-lrp"]
GAMMA = {"attn-lrp-gamma": ["attn-lrp", {"Conv": ["gamma", 0.25]}]}


def case(tmp, name, side, extra=None):
    """One export, and LXT's heatmaps of every run from one child process."""
    model = swin_ref.build(name)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    np.savez(tmp / "x.npz", x=x.numpy())
    runs = {method: [method, {}] for method in METHODS} | (extra or {})
    ref = swin_ref.run(dict(model=name, state=tm.save_for_reference(model, str(tmp / "swin.pt")),
                            inputs=str(tmp / "x.npz"), runs=runs, out=str(tmp / "ref.npz")))
    exported = torch.cat([x, x[:1]])  # exported at batch 3, run at batch 2: the batch axis is symbolic
    return dict(onnx=tm.export_image_model(model, exported), x=x, ref=ref, name=name)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return case(tmp_path_factory.mktemp("swin"), "small", 32, GAMMA)


@pytest.fixture(scope="module")
def swin_t(tmp_path_factory):
    return case(tmp_path_factory.mktemp("swin_t"), "swin_t", 64)


def check(c, composite, run=None, rules=()):
    """lrpgraph's logits and heatmap (float32, onnxruntime) against LXT's run (float64)."""
    run = run or composite
    converted = lrpgraph.convert(c["onnx"], composite=composite, rules=list(rules))
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, relevance = session.run(None, {session.get_inputs()[0].name: c["x"].numpy()})[:2]
    np.testing.assert_allclose(logits, c["ref"][f"logits_{run}"], rtol=1e-4, atol=1e-5)
    assert relevance.shape == c["x"].shape
    error = l1(relevance, c["ref"][f"relevance_{run}"])
    print(f"Swin {c['name']} {run}: L1 vs LXT {error:.1e}")
    assert error <= TOL


@pytest.mark.parametrize("composite", METHODS)
def test_small_swin_matches_lxt(small, composite):
    check(small, composite)


def test_small_swin_with_gamma_on_the_patch_embedding_matches_lxt(small):
    """Gamma(0.25) on the patch embedding Conv, as LXT's ViT example attaches zennit rules (epsilon on the
    Linear layers would be LRP-0's gradient form again at LXT's epsilon)."""
    check(small, "attn-lrp", "attn-lrp-gamma", ["Conv=gamma:0.25"])


def test_swin_rules_differ(small):
    """The comparison can fail: cp-lrp, attn-lrp and the plain input x gradient give different heatmaps here."""
    ref = small["ref"]
    model = swin_ref.build("small").double()
    x = small["x"].double().requires_grad_(True)
    y = model(x)
    (grad,) = torch.autograd.grad(y, x, torch.nn.functional.one_hot(y.argmax(1), y.shape[1]).double())
    plain = (x * grad).detach().numpy()
    between = l1(ref["relevance_cp-lrp"], ref["relevance_attn-lrp"])
    to_plain = {m: l1(plain, ref[f"relevance_{m}"]) for m in METHODS}
    print(f"Swin small, LXT: cp-lrp vs attn-lrp L1 {between:.2f}; input x gradient vs "
          + ", ".join(f"{m} {e:.2f}" for m, e in to_plain.items()))
    assert between > 0.1 and min(to_plain.values()) > 0.1


@pytest.mark.parametrize("composite", METHODS)
def test_swin_t_matches_lxt(swin_t, composite):
    check(swin_t, composite)

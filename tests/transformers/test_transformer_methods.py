"""The small ViT beyond LXT parity: cp-lrp conserves relevance on a model without biases and constants;
gradient, IG and guided IG equal torch autograd (true product rule through attention); the torch importer
runs the converted ViT as onnxruntime does, and selective-ISNet steps lower its heatmap loss."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import lrpgraph
import transformer_models as tm
from lrpgraph.train.importer import import_onnx
from lrpgraph.train.isnet import Heatmaps, resolve
from lrpgraph.train.loss import heatmap_loss
from zennit_ref import l1  # noqa: E402

pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def vit(x):
    model = tm.vit(seed=0)
    return model, tm.export_image_model(model, x)


def ort_run(converted, feeds):
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def test_cp_lrp_conserves_without_biases(x):
    """No biases, LayerNorm shifts, class token or position embedding: sum R = y_c (docs/rules.md, Targets)."""
    model = tm.vit(seed=2, bias=False, constants=False)
    out = ort_run(lrpgraph.convert(tm.export_image_model(model, x), composite="cp-lrp"), {"x": x.numpy()})
    explained = out["linear_16"].max(1) if "linear_16" in out else list(out.values())[0].max(1)
    total = out["relevance"].reshape(len(x), -1).sum(1)
    np.testing.assert_allclose(total, explained, rtol=1e-4)


def test_gradient_methods_match_autograd(vit, x):
    """gradient, input x gradient and IG / guided IG (Riemann, 4 steps, zero baseline; no ReLU in a ViT, so
    guided equals plain) against torch autograd in float64."""
    model, onnx_bytes = vit
    double = tm.vit(seed=0).double()
    x64 = x.double()
    classes = double(x64).argmax(1)

    def grad_at(points):
        points = points.clone().requires_grad_(True)
        y = double(points)
        (g,) = torch.autograd.grad(y[torch.arange(len(points)), classes].sum(), points)
        return g

    steps = 4
    ig = x64 * sum(grad_at(x64 * k / steps) for k in range(1, steps + 1)) / steps
    out = ort_run(lrpgraph.convert(onnx_bytes, explain={"g": "gradient", "ixg": "input-x-gradient", "ig": "ig",
                                                        "gig": "guided-ig"}, steps=steps), {"x": x.numpy()})
    grad = grad_at(x64).numpy()
    assert l1(out["relevance_g"], grad) <= 1e-5
    assert l1(out["relevance_ixg"], grad * x.numpy()) <= 1e-5
    assert l1(out["relevance_ig"], ig.numpy()) <= 1e-5
    assert l1(out["relevance_gig"], ig.numpy()) <= 1e-5


@pytest.mark.parametrize("composite", ["attn-lrp", "cp-lrp", "flex"])
def test_importer_matches_onnxruntime(vit, x, composite):
    converted = lrpgraph.convert(vit[1], composite=composite)
    module = import_onnx(converted)
    feeds = {"x": x.numpy()}
    ref = ort_run(converted, feeds)
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in module.run(feeds).items()}
    for name, value in ref.items():
        assert l1(ours[name], value) <= 1e-5, name


def test_selective_isnet_steps_lower_the_heatmap_loss(vit, x):
    """Three SGD steps on the heatmap loss of selective ISNet (flex heatmaps of eta of the predicted class)
    lower it; the background is the image's left half."""
    converted = lrpgraph.convert(onnx.load_from_string(vit[1]), composite="flex", target="seed")
    module = import_onnx(converted)
    spec = resolve("selective", lrpgraph.metadata.read(converted)[lrpgraph.metadata.CONFIG])
    maps = Heatmaps(module, spec, classes=10)
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., 32:] = 1
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-2, momentum=0.9)
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        _, heat = maps(x)
        loss = heatmap_loss(heat, mask).total
        losses.append(float(loss))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
    assert losses[-1] < losses[0], losses


def test_external_data_is_kept(vit, x, tmp_path):
    """A model saved with its weights as external data converts from the command line; the output keeps
    them external (every weight over 1 KB in a .data file of about the source's size) and onnxruntime
    runs it; converting again without --force is refused in one line."""
    from click.testing import CliRunner

    from lrpgraph.cli import main

    source = tmp_path / "vit.onnx"
    onnx.save_model(onnx.load_from_string(vit[1]), str(source), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="vit.onnx.data", size_threshold=0)
    result = CliRunner().invoke(main, ["convert", str(source), "--composite", "cp-lrp"])
    assert result.exit_code == 0, result.output
    out, data = tmp_path / "vit.lrp.onnx", tmp_path / "vit.lrp.onnx.data"
    weights = (tmp_path / "vit.onnx.data").stat().st_size
    assert 0.8 * weights <= data.stat().st_size < 1.2 * weights
    light = onnx.load(str(out), load_external_data=False)
    inline = [i.name for i in light.graph.initializer if len(i.raw_data) > 1024]
    assert not inline and sum(i.data_location == onnx.TensorProto.EXTERNAL for i in light.graph.initializer) >= 10
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ours = session.run(["relevance"], {"x": x.numpy()})[0]
    ref = ort_run(lrpgraph.convert(vit[1], composite="cp-lrp"), {"x": x.numpy()})["relevance"]
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)
    again = CliRunner().invoke(main, ["convert", str(source), "--composite", "cp-lrp"])
    assert again.exit_code == 2 and "exists" in again.output and len(again.output.strip().splitlines()) == 1


@pytest.mark.parametrize("composite", ["attn-lrp", "cp-lrp"])
def test_decomposed_layer_norm_and_gelu_are_one_unit(vit, x, composite):
    """LayerNorm and GELU written out in elementary ops give the heatmap of the fused ops (which matches LXT,
    test_transformer_vit.py); the gradient through them too."""
    decomposed = tm.decompose(vit[1])
    for spec in (dict(composite=composite), dict(method="gradient")):
        ours = ort_run(lrpgraph.convert(decomposed, **spec), {"x": x.numpy()})
        ref = ort_run(lrpgraph.convert(vit[1], **spec), {"x": x.numpy()})
        assert l1(ours["relevance"], ref["relevance"]) <= 1e-5, spec


def test_unsupported_op_is_refused_in_one_line(vit, tmp_path):
    """A transformer with an op the converter does not know (here Asinh in place of the first GELU): exit 2,
    one line naming the op and the node, nothing written."""
    from click.testing import CliRunner

    from lrpgraph.cli import main

    model = onnx.load_from_string(vit[1])
    node = next(n for n in model.graph.node if n.op_type == "Gelu")
    node.op_type, name = "Asinh", node.name
    del node.attribute[:]
    path = tmp_path / "vit_asinh.onnx"
    onnx.save_model(model, str(path))
    result = CliRunner().invoke(main, ["convert", str(path), "--composite", "attn-lrp"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Asinh" in lines[0] and name in lines[0], result.output
    assert not (tmp_path / "vit_asinh.lrp.onnx").exists()

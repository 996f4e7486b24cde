"""ISNet variants (lrpgraph.train.isnet): seeds against autograd and against fed seeds, what a converted model
must offer, and (acceptance 4) a few training steps of each variant on Fashion-MNIST garments lower the heatmap
loss, with the written ONNX files reproducing the trained module in onnxruntime.

Fashion-MNIST comes from the Debian package dataset-fashion-mnist (`apt-get install -y dataset-fashion-mnist`)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from fashion_data import available, tiny_cnn, write_folders

import lrpgraph
from lrpgraph import metadata
from lrpgraph.errors import LrpgraphError
from lrpgraph.train import isnet
from lrpgraph.train.config import TrainConfig
from lrpgraph.train.importer import LrpModule, import_onnx
from lrpgraph.train.loop import train
from lrpgraph.train.loss import heatmap_loss

CLASSES = 4



def images(n, seed=0):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


def heatmaps_for(variant, model=None, **convert):
    explained = lrpgraph.convert(model or tiny_cnn(CLASSES), **(convert or isnet.conversion(variant)))
    module = import_onnx(explained)
    spec = isnet.resolve(variant, metadata.read(explained)[metadata.CONFIG])
    return isnet.Heatmaps(module, spec, CLASSES), module


def run(module, x, **feeds):
    out = module.run({module.image_input: x, **feeds})
    return out


# ---- seeds -------------------------------------------------------------------------------------------------
def test_selective_gradient_matches_autograd():
    y = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    c = torch.tensor([0, 4, 2, 2, 1, 3])
    p = torch.softmax(y, 1).gather(1, c[:, None]).squeeze(1)
    eta = torch.log(p + 0.01) - torch.log(1 - p + 0.01)
    (expected,) = torch.autograd.grad(eta.sum(), y)
    torch.testing.assert_close(isnet.selective_gradient(y, c), expected, rtol=1e-12, atol=1e-14)


def test_stochastic_choice_is_predicted_5_of_11_else_uniform():
    n, classes = 66000, 4
    logits = torch.randn(n, classes, generator=torch.Generator().manual_seed(0))
    chosen = isnet.stochastic_classes(logits, *isnet.draw(torch.Generator().manual_seed(1), n, classes))
    predicted = chosen == logits.argmax(1)
    assert abs(predicted.float().mean().item() - 5 / 11) < 0.01
    offset = (chosen - logits.argmax(1))[~predicted] % classes  # the other classes, uniformly
    counts = torch.bincount(offset, minlength=classes)[1:].float()
    assert counts.min() / counts.max() > 0.95


def test_seed_computed_in_the_run_equals_a_fed_seed():
    """The seed node inside the run gives what feeding the seed (computed from the logits) gives."""
    x = images(5)
    for variant, convert in [("selective", {}), ("selective", dict(composite="epsilon", target="seed")),
                             ("stochastic", {}), ("stochastic", dict(composite="flex", target="index"))]:
        heat, module = heatmaps_for(variant, **convert)
        draws = isnet.draw(torch.Generator().manual_seed(3), 5, CLASSES)
        logits, maps = heat(x, draws)
        y = logits.detach()
        if variant == "selective":
            g = isnet.selective_gradient(y, y.argmax(1))
            feeds = {"relevance_seed": g if heat.spec.gradient else y * g}
        elif heat.spec.target == "index":
            feeds = {"target": isnet.stochastic_classes(y, *draws)}
        else:
            chosen = isnet.stochastic_classes(y, *draws)
            feeds = {"relevance_seed": torch.nn.functional.one_hot(chosen, CLASSES).float()}
        expected = run(module, x, **feeds)["relevance"]
        torch.testing.assert_close(maps[:, 0], expected, rtol=1e-5, atol=1e-7)
        assert maps.shape == (5, 1, 1, 32, 32)
    heat, module = heatmaps_for("selective")
    heat.selective_class = "lowest"
    logits, maps = heat(x)
    g = isnet.selective_gradient(logits.detach(), logits.detach().argmin(1))
    torch.testing.assert_close(maps[:, 0], run(module, x, relevance_seed=g)["relevance"], rtol=1e-5, atol=1e-7)


def test_original_explains_every_class_and_dual_both_rules():
    x = images(3)
    heat, module = heatmaps_for("original")
    logits, maps = heat(x)
    assert maps.shape == (3, CLASSES, 1, 32, 32)
    for k in range(CLASSES):
        seed = torch.zeros(3, CLASSES)
        seed[:, k] = 1
        torch.testing.assert_close(maps[:, k], run(module, x, relevance_seed=seed)["relevance"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logits, module.logits(x))
    heat, module = heatmaps_for("dual")
    logits, maps = heat(x)
    out = run(module, x)
    torch.testing.assert_close(maps, torch.stack([out["relevance_zplus"], out["relevance_epsilon"]], 1))
    fed, _ = heatmaps_for("dual", explain=isnet.DUAL_EXPLAIN, target="seed")  # the seed fed with the logits
    fed.module.load_state_dict(module.state_dict())
    torch.testing.assert_close(fed(x)[1], maps, rtol=1e-5, atol=1e-6)


def test_dual_zplus_map_sees_a_shortcut_that_cancels_in_the_sum_of_logits():
    """Feature 0 raises class 0 and lowers the others by as much (dense column sum 0): the epsilon heatmap
    of all logits gives it nothing, so training on it alone cannot see that shortcut; z+ on every linear
    layer (Dual ISNet's first map) gives it f_0 w+_00 y_0 / z+_0. Both against the numpy formulas."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([[2.0, 1.0], [-1.0, 0.5], [-1.0, 0.2]], np.float32)  # logits = w @ relu(x); column 0 sums to 0
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "eye"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["a"]), helper.make_node("Gemm", ["a", "w"], ["y"], transB=1)],
        "shortcut", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(np.eye(2, dtype=np.float32), "eye"), numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    explained = lrpgraph.convert(model, **isnet.conversion("dual"))
    x = np.array([[[[0.8, 0.5]]], [[[0.3, 0.9]]]], np.float32)
    session = ort.InferenceSession(explained.SerializeToString(), providers=["CPUExecutionProvider"])
    y, zplus, eps = session.run(["y", "relevance_zplus", "relevance_epsilon"], {"x": x})
    f = x.reshape(2, 2).astype(np.float64)
    logits = f @ w.T.astype(np.float64)
    wp = np.maximum(w, 0).astype(np.float64)
    expected_zplus = f * ((logits / (f @ wp.T)) @ wp)  # R_i = f_i sum_j w+_ji y_j / z+_j
    expected_eps = f * ((logits / (logits + 1e-6 * np.where(logits >= 0, 1, -1))) @ w.astype(np.float64))
    np.testing.assert_allclose(zplus.reshape(2, 2), expected_zplus, rtol=1e-4)  # stabilizer 1e-6 on z+ >= 0.1
    np.testing.assert_allclose(eps.reshape(2, 2), expected_eps, rtol=1e-4, atol=1e-5)
    assert np.abs(eps.reshape(2, 2)[:, 0]).max() < 1e-5 < zplus.reshape(2, 2)[:, 0].min()


def test_one_graph_run_per_step(monkeypatch):
    """Dual, selective, stochastic: one run (one forward and one relevance pass) of the batch; original: C x N."""
    batches = []
    original_run = LrpModule.run

    def counting_run(self, feeds, *args, **kwargs):
        batches.append(len(feeds[self.image_input]))
        return original_run(self, feeds, *args, **kwargs)

    for variant in ("dual", "selective", "stochastic", "original"):
        heat, module = heatmaps_for(variant)
        batches.clear()
        monkeypatch.setattr(LrpModule, "run", counting_run)
        logits, maps = heat(images(4))
        (logits.sum() + maps.sum()).backward()
        assert batches == [4 * CLASSES if variant == "original" else 4], variant
        monkeypatch.undo()


# ---- which converted models serve which variant ----------------------------------------------------------------
def test_converted_models_accepted_or_refused(tmp_path):
    plain = tiny_cnn(CLASSES)
    flex = lrpgraph.convert(plain, composite="flex", target="seed")
    stripped, explained, converted_here = isnet.prepare(flex, "selective")
    assert not converted_here and explained.graph.output[1].name == "relevance"
    assert {i.name for i in stripped.graph.input} == {"x"} and [o.name for o in stripped.graph.output] == ["logits"]
    assert not metadata.read(stripped)
    x = images(2).numpy()
    got = ort.InferenceSession(stripped.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    want = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6)
    cases = [("dual", flex, "variant 'dual' needs a model converted with a zplus or epsilon-plus output"),
             ("selective", lrpgraph.convert(plain, composite="flex", target="top"), "converted with target seed"),
             ("selective", lrpgraph.convert(plain, method="ig", target="seed"), "needs LRP-Flex"),
             ("nope", plain, "unknown variant")]
    for variant, model, message in cases:
        with pytest.raises(LrpgraphError, match=message) as err:
            isnet.prepare(model, variant)
        assert "\n" not in str(err.value)
    isnet.prepare(lrpgraph.convert(plain, explain=isnet.DUAL_EXPLAIN, target="all"), "dual")
    with pytest.warns(UserWarning, match="cannot see a shortcut"):
        isnet.prepare(lrpgraph.convert(plain, explain={"zp": "epsilon-plus", "eps": "epsilon"}, target="all"), "dual")
    isnet.prepare(lrpgraph.convert(plain, composite="epsilon-plus", target="index"), "original")


# ---- acceptance 4: every variant lowers its heatmap loss on real data; the written files reproduce the module ---
@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    if not available():
        pytest.skip("Fashion-MNIST is not installed: apt-get install -y dataset-fashion-mnist")
    root = tmp_path_factory.mktemp("fashion")
    images_dir, masks_dir = write_folders(root / "train", 64, CLASSES, seed=0, real=True)
    onnx.save(tiny_cnn(CLASSES), root / "model.onnx")
    return root, images_dir, masks_dir


def variant_heatmap_loss(explained_path, variant, x, m):
    explained = onnx.load(explained_path)
    module = import_onnx(explained)
    heat = isnet.Heatmaps(module, isnet.resolve(variant, metadata.read(explained)[metadata.CONFIG]), CLASSES)
    with torch.no_grad():
        return heatmap_loss(heat(x, isnet.draw(torch.Generator().manual_seed(7), len(x), CLASSES))[1], m).total.item()


@pytest.mark.parametrize("variant", ["original", "dual", "selective", "stochastic"])
def test_each_variant_lowers_the_heatmap_loss(fashion, variant):
    root, images_dir, masks_dir = fashion
    out = root / variant
    config = TrainConfig(model=str(root / "model.onnx"), images=str(images_dir), masks=str(masks_dir), out=str(out),
                         variant=variant, epochs=2, batch_size=32, optimizer="adam", lr=1e-3, progress=False)
    result = train(config)
    from lrpgraph.train.data import MaskedImageFolder

    data = MaskedImageFolder(images_dir, masks_dir, grayscale=True)
    x, m = (torch.stack([data[i][j] for i in range(0, 64, 2)]) for j in (0, 1))
    before = variant_heatmap_loss(out / "start" / "model.lrp.onnx", variant, x, m)
    after = variant_heatmap_loss(out / "model.lrp.onnx", variant, x, m)
    assert after < before - 0.02, f"{variant}: heatmap loss {before:.4f} -> {after:.4f}"
    history = result["history"]
    assert history[-1]["heatmap"] < history[0]["heatmap"]
    # the written files in onnxruntime reproduce the trained module
    module, feeds = result["module"], {"x": x[:6].numpy()}
    session = ort.InferenceSession(str(out / "model.lrp.onnx"), providers=["CPUExecutionProvider"])
    if "relevance_seed" in {i.name for i in session.get_inputs()}:
        feeds["relevance_seed"] = np.eye(CLASSES, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]
    names = [o.name for o in session.get_outputs()]
    with torch.no_grad():
        ours = module.run(feeds, names)
    for name, theirs in zip(names, session.run(names, feeds)):
        ref = ours[name].numpy()
        assert np.abs(theirs - ref).sum() <= 1e-5 * np.abs(ref).sum(), name
    plain = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(plain.run(None, {"x": feeds["x"]})[0], ours["logits"].numpy(), rtol=1e-5, atol=1e-5)
    assert result["write_back"]["written"]["plain"] == 12

"""ultralytics YOLOv8n (detect and segment heads) as ultralytics exports it converts as a whole graph (the box
branch's DFL Softmax, anchors computed through Shape / Range / ConstantOfShape, Split / Concat, arithmetic by
constants), and one class score at a chosen anchor, seeded on the raw head output, matches zennit in float64
on the torch model's class logits (the Sigmoid in the export passes relevance unchanged, L-CRP's choice; the
residual Adds pass it to both terms as zennit's plain `+` does: `--rule Add=gradient`). The gradient matches
torch autograd, the importer runs the converted graph as onnxruntime does, and a dynamic-size export converted with an image size gives the static export's heatmap; the whole detect
output [N, 84, A] converted by lrpgraph.convert takes K targets, box coordinates included."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from seeded_ref import SEED, run, same_as_onnxruntime, seeded
from yolo_models import SIDE, ClassLogits, yolo
from zennit_ref import l1, zennit_composite

CLASS, ANCHOR = 3, 17  # anchor 17: a cell of the stride-8 grid


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("yolo")
    cache = {}

    def get(name, dynamic=False):
        if (name, dynamic) not in cache:
            where = folder / f"{name}{'-dynamic' if dynamic else ''}"
            where.mkdir()
            cache[name, dynamic] = yolo(name, str(where), dynamic=dynamic)
        return cache[name, dynamic]
    return get


def image(batch=1):
    return torch.rand(batch, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))


def one_hot(row):
    def seed(y):
        s = np.zeros_like(y)
        s[:, row, ANCHOR] = 1.0
        return s
    return seed


def zennit_class_score(model, x, composite, eps):
    reference = ClassLogits(model).double()
    xx = x.double().requires_grad_(True)
    with zennit_composite(composite, eps, eps).context(reference) as modified:
        out = modified(xx)
        grad = torch.zeros_like(out)
        grad[:, CLASS, ANCHOR] = 1.0
        (heat,) = torch.autograd.grad(out, xx, grad)
    reference.float()
    return out.detach().float().numpy(), heat.float().numpy()


@pytest.mark.parametrize("name", ["yolov8n", "yolov8n-seg"])
@pytest.mark.parametrize("composite,eps", [("epsilon-plus-flat", 1e-6), ("epsilon", 0.01)])
def test_class_score_matches_zennit(exports, name, composite, eps):
    model, path = exports(name)
    x = image()
    converted = seeded(path, composite, rules=["Add=gradient"], epsilon=eps, stabilizer=eps)
    y, heat = run(converted, x.numpy(), one_hot(4 + CLASS))
    logits, ref = zennit_class_score(model, x, composite, eps)
    classes = logits.shape[1]
    assert np.allclose(y[:, 4:4 + classes], 1 / (1 + np.exp(-logits)), atol=1e-4), "class scores differ from torch"
    assert np.abs(ref).sum() > 0
    assert l1(heat, ref) <= 1e-4, (name, composite, l1(heat, ref))


@pytest.mark.parametrize("name", ["yolov8n", "yolo11n"])
def test_gradient_matches_autograd(exports, name):
    """The gradient of one class score (YOLO11's C2PSA attention included; through the head's Sigmoid, whose derivative is written with Exp: onnxruntime's
    float32 Sigmoid approximates the saturated tails that random weights reach)."""
    model, path = exports(name)
    x = image()
    _, heat = run(seeded(path, "gradient"), x.numpy(), one_hot(4 + CLASS))
    xx = x.double().requires_grad_(True)
    score = torch.sigmoid(ClassLogits(model).double()(xx))[:, CLASS, ANCHOR].sum()
    (ref,) = torch.autograd.grad(score, xx)
    model.float()
    assert np.abs(ref.numpy()).sum() > 0 and l1(heat, ref.numpy()) <= 1e-4, l1(heat, ref.numpy())


def test_dynamic_export_with_image_size_equals_static(exports):
    """ultralytics' dynamic=True export (batch and size symbolic; its anchors and Reshapes computed from Shape)
    converted at the static export's size gives its heatmap, for two images in one batch."""
    _, static = exports("yolov8n")
    _, dynamic = exports("yolov8n", dynamic=True)
    x = image(2)
    seed = one_hot(4 + CLASS)
    _, ref = run(seeded(static, "epsilon-plus-flat", rules=["Add=gradient"]), x[:1].numpy(), seed)
    _, heat = run(seeded(dynamic, "epsilon-plus-flat", image_size=(SIDE, SIDE), rules=["Add=gradient"]), x.numpy(),
                  seed)
    assert np.abs(ref).sum() > 0 and l1(heat[:1], ref) <= 1e-6, l1(heat[:1], ref)


def test_importer_runs_yolov8n_as_onnxruntime(exports):
    """lrpgraph.train's importer computes the converted YOLOv8n's outputs and relevance as onnxruntime does."""
    _, path = exports("yolov8n")
    model = seeded(path, "epsilon-plus-flat", rules=["Add=gradient"])
    same_as_onnxruntime(model, {"images": image().numpy(), SEED: one_hot(4 + CLASS)(np.zeros([1, 84, 525], np.float32))})


def test_full_output_k_targets_through_convert_match_autograd(exports):
    """The whole detect output [N, 4 + 80, A] as ultralytics exports it (the default explained tensor, no --from),
    converted by lrpgraph.convert with --target index: four targets in one call, two of them box coordinates
    (the DFL Softmax, the anchor grid, the Sub / Add / Mul by constants) and two class scores, each against torch
    autograd through ultralytics' own model in float64."""
    import lrpgraph
    from lrpgraph.runtime.session import ExplainSession

    model, path = exports("yolov8n")
    x = image()
    targets = np.array([[[0, ANCHOR], [3, 300], [4 + CLASS, ANCHOR], [83, 524]]], np.int64)
    y, heat = ExplainSession(lrpgraph.convert(path, method="gradient", target="index")).explain(x.numpy(), targets)
    assert y.shape == (1, 84, 525) and heat.shape == (1, 4, 3, SIDE, SIDE)
    reference = model.double()
    try:
        xx = x.double().requires_grad_(True)
        out = reference(xx)
        out = out[0] if isinstance(out, (tuple, list)) else out
        assert np.allclose(out.detach().numpy(), y, atol=1e-3 * np.abs(y).max()), "detect output differs from torch"
        for k, (row, anchor) in enumerate(targets[0]):
            (ref,) = torch.autograd.grad(out[0, row, anchor], xx, retain_graph=True)
            ref = ref.numpy()
            assert np.abs(ref).sum() > 0 and l1(heat[:, k], ref) <= 1e-4, (k, l1(heat[:, k], ref))
    finally:
        model.float()


def _autograd(model, points, rows_anchors):
    """[len(points), K, ...]: d out[:, row, anchor] / d point for each point batch, in float64 on the torch model."""
    grads = []
    for p in points:
        xx = torch.as_tensor(p, dtype=torch.float64).requires_grad_(True)
        out = model(xx)
        out = out[0] if isinstance(out, (tuple, list)) else out
        grads.append([torch.autograd.grad(out[:, row, anchor].sum(), xx, retain_graph=True)[0].numpy()
                      for row, anchor in rows_anchors])
    return np.array(grads)


@pytest.mark.parametrize("spec", ["ig", "smoothgrad"])
def test_path_methods_take_k_targets(exports, spec):
    """IG (right Riemann sum, zero baseline) and SmoothGrad with K = 3 targets (a box coordinate and two class
    scores of the detect output) in one call, on the dynamic-batch export at --image-size (the methods evaluate
    the model at m points along the batch), against their formulas with torch autograd in float64; the static
    export, whose Reshapes fix the batch at 1, is refused in one line."""
    import lrpgraph
    from lrpgraph.methods.smooth import noise

    model, path = exports("yolov8n", dynamic=True)
    x = image(2).numpy()
    pairs = [(0, ANCHOR), (4 + CLASS, ANCHOR), (83, 524)]
    targets = np.array([pairs] * 2, np.int64)
    options = dict(steps=4) if spec == "ig" else dict(samples=3, noise_level=0.1)
    converted = lrpgraph.convert(path, method=spec, target="index", image_size=(SIDE, SIDE), **options)
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"images": x, "target": targets}
    if spec == "smoothgrad":
        feeds["noise_seed"] = np.array([7], np.int64)
    heat = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))["relevance"]
    assert heat.shape == (2, 3, 3, SIDE, SIDE)
    reference = model.double()
    try:
        if spec == "ig":
            points = [a * x for a in (0.25, 0.5, 0.75, 1.0)]
            ref = x[:, None] * _autograd(reference, points, pairs).mean(0).transpose(1, 0, 2, 3, 4)
        else:
            sigma = 0.1 * (x.max((1, 2, 3), keepdims=True) - x.min((1, 2, 3), keepdims=True))
            points = [x + sigma * eps for eps in noise(7, (3,) + x.shape)]
            ref = _autograd(reference, points, pairs).mean(0).transpose(1, 0, 2, 3, 4)
    finally:
        model.float()
    for k in range(3):
        assert np.abs(ref[:, k]).sum() > 0 and l1(heat[:, k], ref[:, k]) <= 1e-4, (spec, k, l1(heat[:, k], ref[:, k]))
    _, static = exports("yolov8n")
    with pytest.raises(lrpgraph.LrpgraphError, match="batch"):
        lrpgraph.convert(static, method=spec, target="index", **options)

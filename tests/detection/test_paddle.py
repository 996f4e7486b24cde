"""Real Paddle-exported detectors (paddle2onnx; tests/paddle_models.py) convert as whole graphs and explain K
targets in one call, against an independent float64 torch version of each graph (paddle_ref.py: its forward
equals onnxruntime's), with zennit's composites for the LRP rules and torch autograd for the gradient:

- PicoDet layout detector (layout_cdla.onnx, 800 x 608, one score and one box output per feature level,
  HardSwish written as Clip / Add / Div / Mul, squeeze-excitation gates, nearest Resize): `--from` its stride-32
  class scores, `--target index`, the four best (anchor, class) pairs of a rendered page in one call;
- PP-OCRv4's DB text detector (symbolic batch and size, `--image-size`; ConvTranspose upsampling, learnable
  affine blocks): `--target seed`, the probability map on each detected text line as the seed (L-CRP's region
  seed), both lines in one call; each line's heatmap lies on its own line.

The head's Sigmoid passes relevance unchanged (L-CRP's choice); residual Adds take `--rule Add=gradient` (zennit's
plain `+`)."""

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

import lrpgraph
from lrpgraph.runtime.session import ExplainSession
from paddle_ref import PaddleReference, seeded_heatmap
from zennit_ref import l1, zennit_composite

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from paddle_models import paddle_model  # noqa: E402

SCORES, PROBABILITY = "transpose_4.tmp_0", "sigmoid_0.tmp_0"  # layout: stride-32 class scores [N, 475, 10]
LINES = (64, 160)  # the text picture's size (H, W): two lines of text


def _font(size):
    return ImageFont.load_default(size=size)


def page():
    """A rendered document page (a title, paragraphs, a table) as the layout model takes it (ImageNet mean/std)."""
    img = Image.new("RGB", (608, 800), "white")
    d = ImageDraw.Draw(img)
    d.text((60, 40), "Relevance of a layout", fill="black", font=_font(34))
    for row in range(14):
        d.text((60, 120 + 22 * row), "lrpgraph explains the detector file that is deployed " * 1, fill="black",
               font=_font(16))
    for r in range(5):
        for c in range(4):
            d.rectangle((60 + 120 * c, 480 + 40 * r, 180 + 120 * c, 520 + 40 * r), outline="black", width=2)
            d.text((70 + 120 * c, 490 + 40 * r), f"{r * c:.2f}", fill="black", font=_font(16))
    x = np.asarray(img, np.float32) / 255
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def text_lines():
    """Two lines of text (the DB detector's normalisation: (x - 0.5) / 0.5)."""
    img = Image.new("RGB", LINES[::-1], "white")
    d = ImageDraw.Draw(img)
    d.text((8, 8), "lrpgraph", fill="black", font=_font(20))
    d.text((8, 34), "2026-12", fill=(40, 40, 90), font=_font(20))
    x = (np.asarray(img, np.float32) / 255 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def best_targets(scores, k):
    """The k largest (anchor, class) pairs of scores [1, A, C] as index tuples [1, k, 2]."""
    flat = np.argsort(scores[0].ravel())[::-1][:k]
    return np.stack(np.unravel_index(flat, scores.shape[1:]), 1)[None].astype(np.int64)


@pytest.fixture(scope="module")
def layout():
    torch.set_num_threads(1)
    path = paddle_model("layout")
    x = page()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    scores = session.run([SCORES], {"image": x})[0]
    return path, x, scores


def test_layout_forward_equals_the_reference(layout):
    path, x, scores = layout
    (ours,) = PaddleReference(path)(torch.as_tensor(x, dtype=torch.float64), [SCORES])
    assert scores.max() > 0.9, "the rendered page should give some confident layout boxes"
    assert np.abs(ours.detach().numpy() - scores).max() <= 1e-5


def test_layout_four_targets_in_one_call_match_zennit(layout, composite="epsilon-plus-flat", eps=1e-6):
    path, x, scores = layout
    model = lrpgraph.convert(path, composite=composite, target="index", from_tensor=SCORES, rules=["Add=gradient"],
                             epsilon=eps, stabilizer=eps)
    targets = best_targets(scores, 4)
    y, heat = ExplainSession(model).explain(x, target=targets)
    assert heat.shape == (1, 4, 3, 800, 608)
    np.testing.assert_allclose(y, scores, atol=1e-6)
    reference = PaddleReference(path, lrp=True)
    for k, (anchor, cls) in enumerate(targets[0]):
        seed = np.zeros(scores.shape)
        seed[0, anchor, cls] = scores[0, anchor, cls]  # an index target seeds the explained element's value
        _, ref = seeded_heatmap(reference, x, SCORES, seed, zennit_composite(composite, eps, eps))
        assert np.abs(ref).sum() > 0 and l1(heat[:, k], ref) <= 1e-4, (composite, k, l1(heat[:, k], ref))


def test_layout_gradient_matches_autograd_and_finite_differences(layout):
    """Two targets' gradients against the float64 reference's autograd, and each against a central difference of
    onnxruntime's own score along the gradient's direction (the original model, float32)."""
    path, x, scores = layout
    model = lrpgraph.convert(path, method="gradient", target="index", from_tensor=SCORES)
    targets = best_targets(scores, 2)
    _, heat = ExplainSession(model).explain(x, target=targets)
    reference, session = PaddleReference(path), ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for k, (anchor, cls) in enumerate(targets[0]):
        seed = np.zeros(scores.shape)
        seed[0, anchor, cls] = 1.0
        _, ref = seeded_heatmap(reference, x, SCORES, seed)
        assert l1(heat[:, k], ref) <= 1e-4, (k, l1(heat[:, k], ref))
        g = heat[0, k].astype(np.float64)
        direction, h = g / np.linalg.norm(g), 0.01
        ends = [session.run([SCORES], {"image": (x + s * h * direction).astype(np.float32)})[0][0, anchor, cls]
                for s in (1, -1)]
        assert abs((ends[0] - ends[1]) / (2 * h) - np.linalg.norm(g)) <= 0.02 * np.linalg.norm(g)


@pytest.fixture(scope="module")
def text_detector():
    path = paddle_model("ocr_det")
    x = text_lines()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    probability = session.run([PROBABILITY], {"x": x})[0]
    mask = probability[0, 0] > 0.3
    rows = mask.any(1)
    split = LINES[0] // 2
    assert rows[:split].any() and rows[split:].any(), "the detector should find both lines"
    regions = np.zeros((1, 2) + probability.shape[1:])
    regions[0, 0, 0, :split] = (probability[0, 0] * mask)[:split]
    regions[0, 1, 0, split:] = (probability[0, 0] * mask)[split:]
    return path, x, probability, regions


@pytest.mark.parametrize("spec", ["epsilon-plus-flat", "gradient"])
def test_text_lines_in_one_call_match_the_reference(text_detector, spec):
    """Both lines' region seeds in one call (the model converted at --image-size from its symbolic size) against
    zennit (epsilon-plus-flat) or autograd (gradient) on the float64 graph; each LRP heatmap lies on its line."""
    path, x, probability, regions = text_detector
    eps = 1e-6
    kind = dict(method="gradient") if spec == "gradient" else dict(composite=spec, rules=["Add=gradient"],
                                                                 epsilon=eps, stabilizer=eps)
    model = lrpgraph.convert(path, target="seed", image_size=LINES, **kind)
    y, heat = ExplainSession(model).explain(x, target=regions.astype(np.float32))
    assert heat.shape == (1, 2, 3) + LINES
    np.testing.assert_allclose(y, probability, atol=1e-6)
    reference = PaddleReference(path, lrp=spec != "gradient")
    split = LINES[0] // 2
    for k in range(2):
        composite = None if spec == "gradient" else zennit_composite(spec, eps, eps)
        _, ref = seeded_heatmap(reference, x, PROBABILITY, regions[:, k], composite)
        assert np.abs(ref).sum() > 0 and l1(heat[:, k], ref) <= 1e-4, (spec, k, l1(heat[:, k], ref))
        if spec != "gradient":
            positive = np.clip(heat[0, k].sum(0), 0, None)
            own = positive[:split].sum() if k == 0 else positive[split:].sum()
            assert own / positive.sum() > 0.8, (k, own / positive.sum())

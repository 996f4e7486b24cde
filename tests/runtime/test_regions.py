"""Regions of a segmenter: L-CRP's seed (the class logits on the pixels predicted as the class, positive part)
against a per-pixel loop, the heatmaps of two regions in one call against zennit in float64 fed the same seeds,
and `explain --region` end to end."""

import functools
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from click.testing import CliRunner
from PIL import Image

import lrpgraph
from lrpgraph import ExplainSession
from lrpgraph.cli import main
from lrpgraph.runtime.regions import outline, region_seed

sys.path.insert(0, str(Path(__file__).parent.parent))
from zennit_ref import export, l1, zennit_composite  # noqa: E402

SIDE = 12


@functools.cache
def segmenter():
    """A small fully convolutional segmenter: [N, 3, H, W] -> class logits [N, 4, H, W]."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        net[-1].bias.copy_(torch.tensor([0.3, 0.2, 0.25, 0.1]))  # positive logits in every class's region
    return net, export(net, torch.rand(2, 3, SIDE, SIDE))


def test_region_seed_equals_a_pixel_loop():
    logits = np.random.default_rng(0).normal(size=(2, 4, 5, 6)).astype(np.float32)
    seed = region_seed(logits, [2, 0])
    ref = np.zeros_like(seed)
    for n in range(2):
        for i in range(5):
            for j in range(6):
                for k, c in enumerate([2, 0]):
                    if np.argmax(logits[n, :, i, j]) == c and logits[n, c, i, j] > 0:
                        ref[n, k, c, i, j] = logits[n, c, i, j]
    assert np.array_equal(seed, ref)
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    assert outline(mask).sum() == 8 and not outline(mask)[2, 2]


def test_two_regions_in_one_call_match_zennit():
    net, onnx_bytes = segmenter()
    model = lrpgraph.convert(onnx.load_from_string(onnx_bytes), composite="epsilon-plus", target="seed")
    session = ExplainSession(model)
    x = np.random.default_rng(1).random((2, 3, SIDE, SIDE), dtype=np.float32)
    logits, _ = session.explain(x, target=np.zeros((2, 1, 4, SIDE, SIDE), np.float32))
    sizes = (region_seed(logits, [0, 1, 2, 3]) > 0).sum(axis=(0, 2, 3, 4))
    classes = [int(c) for c in np.argsort(-sizes)[:2]]  # the two largest regions
    seed = region_seed(logits, classes)
    assert all((seed[:, k] > 0).any() for k in range(2))
    _, relevance = session.explain(x, target=seed)
    composite = zennit_composite("epsilon-plus")
    xd = torch.from_numpy(x).double().requires_grad_(True)
    double = net.double()
    for k in range(2):
        with composite.context(double) as modified:
            (grad,) = torch.autograd.grad(modified(xd), xd, torch.from_numpy(seed[:, k]).double())
        assert l1(relevance[:, k], grad.numpy()) <= 1e-5
    net.float()


def test_explain_region_writes_outlined_pictures(tmp_path):
    _, onnx_bytes = segmenter()
    path = tmp_path / "seg.lrp.onnx"
    lrpgraph.save(lrpgraph.convert(onnx.load_from_string(onnx_bytes), target="seed"), path)
    Image.fromarray((np.random.default_rng(2).random((SIDE, SIDE, 3)) * 255).astype(np.uint8)).save(tmp_path / "p.png")
    result = CliRunner().invoke(main, ["explain", str(path), str(tmp_path / "p.png"), "--region", "1", "--region",
                                       "2", "--out", str(tmp_path / "heat")])  # an empty region is a zero heatmap
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "heat" / "p.json").read_text())
    assert record["heatmaps"] == ["p.region1.png", "p.region2.png"]
    assert all((tmp_path / "heat" / name).exists() for name in record["heatmaps"])
    predicted = {int(c): n for c, n in record["predicted"].items()}
    assert sum(predicted.values()) == SIDE * SIDE and list(predicted.values()) == sorted(predicted.values())[::-1]
    for region in record["regions"]:
        assert region["pixels"] == predicted.get(region["class"], 0)
        empty = f"p.png: no pixel is predicted as class {region['class']}, so the heatmap is empty" in result.output
        assert empty == (region["pixels"] == 0), result.output
    assert any(not r["pixels"] for r in record["regions"])  # the message was shown
    result = CliRunner().invoke(main, ["explain", str(path), str(tmp_path / "p.png"), "--region", "9", "--out",
                                       str(tmp_path / "bad")])
    assert result.exit_code == 2 and "--region 9" in result.output

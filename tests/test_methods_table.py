"""benchmarks/methods_table.py: its Quantus deletion (PixelFlipping, an independent implementation) flips whole pixels
in the order lrpgraph.metrics.deletion does, so on a model where both can take the same step the two curves agree."""

import io
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from lrpgraph import metrics

pytest.importorskip("quantus")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import methods_table  # noqa: E402


def test_quantus_curve_is_lrpgraphs_deletion_curve_after_the_start():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    buffer = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, 3, 6, 6),), buffer, dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (5, 3, 6, 6)).astype(np.float32)
    heat = rng.normal(size=(5, 6, 6))  # distinct values: no ties
    classes = np.array([0, 1, 2, 0, 1])
    # 4 pixels a step: Quantus flips 12 values (12 divides 36 pixels), lrpgraph 4 pixels; 9 steps each
    quantus = methods_table.quantus_curves(net, x, classes, heat, 4)
    mine = metrics.deletion(metrics.Classifier(onnx.load_from_string(buffer.getvalue())), x, heat, classes, step=4)
    assert quantus.shape == (5, 9) and mine.probabilities.shape == (5, 10)
    np.testing.assert_allclose(quantus, mine.probabilities[:, 1:], rtol=1e-4, atol=1e-6)
    assert methods_table.quantus_deletion(net, x, classes, heat, 4) == pytest.approx(
        np.trapezoid(mine.probabilities[:, 1:], dx=1 / 8, axis=1))

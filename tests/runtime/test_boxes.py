"""evaluate --boxes: the pointing game and the positive relevance inside a box against a per-pixel loop, and the
command on ultralytics YOLOv8n (each box explained at the anchor whose decoded box it equals)."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from PIL import Image

from lrpgraph import LrpgraphError
from lrpgraph.cli import main
from lrpgraph.runtime.boxes import box_metrics, read_boxes

sys.path.insert(0, str(Path(__file__).parent.parent))
from yolo_ref import class_scores, yolov8n  # noqa: E402


def test_box_metrics_equal_a_pixel_loop():
    rng = np.random.default_rng(0)
    for _ in range(20):
        heat = rng.standard_normal((3, 9, 11))
        x0, y0 = rng.random(2) * 6
        box = (x0, y0, x0 + rng.random() * 5 + 1, y0 + rng.random() * 5 + 1)
        flat = heat.sum(0)
        inside_sum = total = 0.0
        for i in range(9):
            for j in range(11):
                inside = box[0] <= j + 0.5 <= box[2] and box[1] <= i + 0.5 <= box[3]
                total += max(flat[i, j], 0)
                inside_sum += max(flat[i, j], 0) if inside else 0
        i, j = divmod(int(np.argmax(flat)), 11)
        hit = box[0] <= j + 0.5 <= box[2] and box[1] <= i + 0.5 <= box[3]
        assert box_metrics(heat, box) == (hit, pytest.approx(inside_sum / total))


def test_read_boxes_refuses_a_malformed_file(tmp_path):
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"a.png": [{"box": [1, 2]}]}))
    with pytest.raises(LrpgraphError, match="--boxes"):
        read_boxes(bad)


def test_evaluate_boxes_on_yolov8n(tmp_path):
    _, path = yolov8n()
    converted = tmp_path / "y.lrp.onnx"
    result = CliRunner().invoke(main, ["convert", path, "-o", str(converted), "--from", class_scores(path),
                                       "--target", "index"])
    assert result.exit_code == 0, result.output
    picture = (np.random.default_rng(0).random((160, 160, 3)) * 255).astype(np.uint8)
    Image.fromarray(picture).save(tmp_path / "scene.png")
    x = (picture.astype(np.float32) / 255).transpose(2, 0, 1)[None]
    raw = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0][0]
    cx, cy, w, h = raw[:4, 30]
    box = [float(cx - w / 2), float(cy - h / 2), float(cx + w / 2), float(cy + h / 2)]
    (tmp_path / "boxes.json").write_text(json.dumps({"scene.png": [{"box": box, "class": 3}]}))
    result = CliRunner().invoke(main, ["evaluate", str(converted), str(tmp_path / "scene.png"), "--boxes",
                                       str(tmp_path / "boxes.json"), "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    assert "pointing game" in result.output and "random heatmap" in result.output
    rows = list(csv.DictReader(open(tmp_path / "ev" / "boxes.csv", encoding="utf-8")))
    assert len(rows) == 1 and rows[0]["class"] == "3" and rows[0]["anchor"] == "30" and 0 <= float(rows[0]["inside"]) <= 1

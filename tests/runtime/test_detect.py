"""Detections: numpy NMS and YOLO decoding against torchvision.ops (an independent implementation), the index
tuples of a detection in each explained layout, and `explain --decode yolo` on ultralytics YOLOv8n end to end."""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torchvision.ops import batched_nms, box_convert

from lrpgraph import ExplainSession
from lrpgraph.cli import main
from lrpgraph.runtime.detect import Detections, decode_yolo, index_tuples, nms

sys.path.insert(0, str(Path(__file__).parent.parent))
from yolo_ref import class_scores, yolov8n  # noqa: E402


def random_boxes(rng, n):
    xy = rng.random((n, 2)) * 100
    return np.concatenate([xy, xy + rng.random((n, 2)) * 40 + 1], axis=1)


@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
def test_nms_equals_torchvision(iou):
    rng = np.random.default_rng(0)
    boxes, scores = random_boxes(rng, 300), rng.random(300)
    ref = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.zeros(300, dtype=torch.long), iou)
    assert np.array_equal(nms(boxes, scores, iou), ref.numpy())


@pytest.mark.parametrize("anchors_first", [False, True])
def test_decode_yolo_equals_torchvision(anchors_first):
    rng = np.random.default_rng(1)
    classes, count = 6, 400
    xywh = np.concatenate([rng.random((count, 2)) * 100, rng.random((count, 2)) * 30 + 2], axis=1)
    scores = rng.random((classes, count)) ** 3
    output = np.concatenate([xywh.T, scores])[None]
    found = decode_yolo(output.transpose(0, 2, 1) if anchors_first else output, score=0.2, iou=0.45, top=7)[0]
    best, cls = scores.max(0), scores.argmax(0)
    keep = np.nonzero(best > 0.2)[0]
    boxes = box_convert(torch.from_numpy(xywh[keep]), "cxcywh", "xyxy")
    ref = keep[batched_nms(boxes, torch.from_numpy(best[keep]), torch.from_numpy(cls[keep]), 0.45).numpy()][:7]
    assert np.array_equal(found.anchors, ref)
    assert np.allclose(found.boxes, box_convert(torch.from_numpy(xywh[ref]), "cxcywh", "xyxy").numpy())
    assert np.array_equal(found.classes, cls[ref]) and np.allclose(found.scores, best[ref])


def test_index_tuples_in_each_layout():
    det = Detections(np.zeros((2, 4)), np.array([0.9, 0.8]), np.array([1, 0]), np.array([1, 2]))
    assert index_tuples([det], [6, 3], 2, 2).tolist() == [[[5, 1], [4, 2]]]  # [4 + C, A]
    assert index_tuples([det], [2, 3], 2, 2).tolist() == [[[1, 1], [0, 2]]]  # [C, A]
    assert index_tuples([det], [3, 6], 2, 3).tolist() == [[[1, 5], [2, 4], [2, 4]]]  # [A, 4 + C], padded


def test_explain_decode_yolo(tmp_path):
    _, path = yolov8n()
    converted = tmp_path / "y.lrp.onnx"
    result = CliRunner().invoke(main, ["convert", path, "-o", str(converted), "--from", class_scores(path),
                                       "--target", "index", "-c", "epsilon-plus-flat"])
    assert result.exit_code == 0, result.output
    picture = (np.random.default_rng(0).random((160, 160, 3)) * 255).astype(np.uint8)
    Image.fromarray(picture).save(tmp_path / "a<b>.png")
    out = tmp_path / "heat"
    result = CliRunner().invoke(main, ["explain", str(converted), str(tmp_path / "a<b>.png"), "--decode", "yolo",
                                       "--top", "3", "--score", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "a<b>.json").read_text())
    x = (picture.astype(np.float32) / 255).transpose(2, 0, 1)[None]
    raw = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    ref = decode_yolo(raw, score=0, top=3)[0]
    assert [d["anchor"] for d in record["detections"]] == ref.anchors.tolist()
    assert record["heatmaps"] == [f"a<b>.det{k}.png" for k in range(3)]
    assert all((out / name).exists() for name in record["heatmaps"])
    page = (out / "index.html").read_text()
    assert "a&lt;b&gt;" in page and "a<b>" not in page
    session = ExplainSession(str(converted))
    _, relevance = session.explain(x, target=index_tuples([ref], [80, 525], 80, 3))
    assert relevance.shape == (1, 3, 3, 160, 160)
    assert record["best_score"] == float(raw[0, 4:].max())
    # every box below the threshold (as an untrained detector's are below the default): the run says so and what to do
    result = CliRunner().invoke(main, ["explain", str(converted), str(tmp_path / "a<b>.png"), "--decode", "yolo",
                                       "--score", "1", "--out", str(tmp_path / "none")])
    assert result.exit_code == 0 and not json.loads((tmp_path / "none" / "a<b>.json").read_text())["heatmaps"]
    assert (f"no box scored above --score 1 in 1 of 1 images (their highest class score: "
            f"{float(raw[0, 4:].max()):.4g}); lower --score") in result.output, result.output

"""Heatmaps judged against boxes (`lrpgraph evaluate --boxes FILE`), the detector metrics of L-CRP and xplique:
the pointing game (the heatmap's maximum falls inside the box) and the fraction of the positive relevance that
lies inside the box; each next to the same figure for a random heatmap (normal noise, fixed seed).

FILE is JSON, {image file name: [{"box": [x0, y0, x1, y1], "class": c}, ...]} in input pixels (the boxes a
person drew, or those `explain --decode yolo` wrote). Each box is explained as the detection of its class at
the anchor whose decoded box overlaps it most (IoU), all boxes of an image in one call."""

import json
import os
from typing import TYPE_CHECKING

import numpy as np

from lrpgraph.errors import LrpgraphError

if TYPE_CHECKING:
    from lrpgraph.runtime.session import ExplainSession


def box_metrics(relevance: np.ndarray, box: tuple | list | np.ndarray) -> tuple:
    """(pointing hit, fraction of positive relevance inside) of a heatmap [C, H, W] or [H, W] and a box."""
    heat = relevance.sum(axis=0) if relevance.ndim == 3 else relevance
    h, w = heat.shape
    x0, y0, x1, y1 = box
    rows, cols = np.arange(h)[:, None] + 0.5, np.arange(w)[None] + 0.5  # pixel centres
    inside = (rows >= y0) & (rows <= y1) & (cols >= x0) & (cols <= x1)
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    positive = np.maximum(heat, 0)
    total = positive.sum()
    return bool(inside[peak]), float(positive[inside].sum() / total) if total > 0 else 0.0


def read_boxes(path: str | os.PathLike) -> dict:
    """{file name: [(box, class)]} from FILE (module docstring); one-line errors for a malformed file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise LrpgraphError(f"--boxes {path}: cannot read it as JSON ({error})") from None
    if not isinstance(data, dict):
        raise LrpgraphError(f"--boxes {path}: expected {{image name: [{{\"box\": [x0, y0, x1, y1], \"class\": c}}]}}")
    out = {}
    for name, items in data.items():
        try:
            out[os.path.basename(name)] = [([float(v) for v in item["box"]][:4], int(item["class"])) for item in items]
        except (TypeError, KeyError, ValueError):
            raise LrpgraphError(f"--boxes {path}: the boxes of '{name}' are not [{{\"box\": [x0, y0, x1, y1], "
                                "\"class\": c}]") from None
    return out


def iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each row of boxes [M, 4] with one box (x0, y0, x1, y1)."""
    lo = np.maximum(boxes[:, :2], box[:2])
    hi = np.minimum(boxes[:, 2:], box[2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    areas = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
    return inter / np.maximum(areas + np.prod(np.clip(np.subtract(box[2:], box[:2]), 0, None)) - inter, 1e-12)


def evaluate_boxes(session: "ExplainSession", paths: list, boxes_file: str | os.PathLike, seed: int = 0) -> dict:
    """{"rows": [(file, class, anchor, pointing, inside, random pointing, random inside)], "summary": {...}}."""
    from lrpgraph.runtime.detect import Detections, channels_first, forward, index_tuples
    from lrpgraph.runtime.images import list_images, load_image

    truth, rng, rows = read_boxes(boxes_file), np.random.default_rng(seed), []
    for path in list_images(paths):
        given = truth.get(os.path.basename(str(path)))
        if not given:
            continue
        x = load_image(path, session.preprocess, session.input_shape)[None]
        output = np.asarray(forward(session, x), np.float64)
        output = output if channels_first(output.shape) else output.transpose(0, 2, 1)
        xywh = output[0, :4].T
        decoded = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
        anchors = [int(np.argmax(iou(decoded, np.asarray(box)))) for box, _ in given]
        found = Detections(decoded[anchors], np.zeros(len(given)), np.array([c for _, c in given]),
                           np.array(anchors))
        tuples = index_tuples([found], list(session.record.explained_shape), output.shape[1] - 4, len(given))
        _, relevance = session.explain(x, target=tuples)
        relevance = relevance if not isinstance(relevance, dict) else next(iter(relevance.values()))
        for k, (box, cls) in enumerate(given):
            hit, inside = box_metrics(relevance[0, k], box)
            random_hit, random_inside = box_metrics(rng.standard_normal(relevance.shape[-2:]), box)
            rows.append((str(path), cls, anchors[k], hit, inside, random_hit, random_inside))
    if not rows:
        raise LrpgraphError(f"--boxes {boxes_file}: none of the images given has boxes in it")
    table = np.array([r[3:] for r in rows], dtype=np.float64)
    names = ("pointing", "inside", "random pointing", "random inside")
    return {"rows": rows, "summary": dict(zip(names, table.mean(axis=0).tolist()))}

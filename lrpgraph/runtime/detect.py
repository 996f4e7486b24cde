"""Detections: ultralytics YOLO outputs decoded, IoU non-maximum suppression in numpy, the K best boxes turned
into index tuples of the explained tensor (explained in one call), and pictures with the box drawn.

An ultralytics detect output is [N, 4 + C, A] (its exporter's layout) or [N, A, 4 + C]: per anchor a box as
centre x, centre y, width, height in input pixels and C class scores (already through the Sigmoid). The
explained tensor is that output ([4 + C, A]: the target is (4 + c, a)) or its class scores ([C, A]: (c, a));
either layout, transposed, is read the same way."""

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lrpgraph.errors import LrpgraphError

if TYPE_CHECKING:
    from lrpgraph.runtime.session import ExplainSession


@dataclass
class Detections:
    """The detections of one image, best first: boxes [M, 4] (x0, y0, x1, y1 in input pixels), scores [M],
    classes [M], anchors [M] (the column of the output each came from)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    anchors: np.ndarray

    def to_json(self, labels: list | None = None) -> list:
        """[{box, score, class, anchor (, label)}] as plain JSON values."""
        out = []
        for box, score, cls, anchor in zip(self.boxes, self.scores, self.classes, self.anchors):
            item = {"box": [round(float(v), 2) for v in box], "score": float(score), "class": int(cls),
                    "anchor": int(anchor)}
            if labels and 0 <= cls < len(labels):
                item["label"] = str(labels[cls])
            out.append(item)
        return out


def channels_first(shape: tuple) -> bool:
    """True for [N, 4 + C, A], False for [N, A, 4 + C]: the anchors are the longer axis."""
    if len(shape) != 3 or min(shape[1:]) < 5:
        raise LrpgraphError(f"a YOLO detect output is [N, 4 + classes, anchors] or [N, anchors, 4 + classes]; got "
                            f"{list(shape)}")
    return shape[1] <= shape[2]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy IoU non-maximum suppression: the indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        lo = np.maximum(boxes[i, :2], boxes[rest, :2])
        hi = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
        overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-12)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def decode_yolo(output: np.ndarray, score: float = 0.25, iou: float = 0.45, top: int | None = None) -> list:
    """[Detections per image] of an ultralytics detect output: the best class per anchor, scores above score,
    class-aware NMS at iou, the top best kept."""
    output = np.asarray(output, dtype=np.float64)
    if not channels_first(output.shape):
        output = output.transpose(0, 2, 1)
    out = []
    for row in output:
        xywh, cls_scores = row[:4].T, row[4:]
        classes, scores = cls_scores.argmax(axis=0), cls_scores.max(axis=0)
        anchors = np.nonzero(scores > score)[0]
        boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)[anchors]
        offset = boxes.max(initial=0) + 1  # class-aware: boxes of different classes never overlap
        kept = anchors[nms(boxes + (classes[anchors] * offset)[:, None], scores[anchors], iou)][:top]
        out.append(Detections(boxes[np.searchsorted(anchors, kept)], scores[kept], classes[kept], kept))
    return out


def index_tuples(detections: list, explained_shape: list, classes: int, k: int) -> np.ndarray:
    """int64 [N, k, 2]: each detection's class score in the explained tensor ([4 + C, A], [C, A] or their
    transposes); images with fewer than k detections repeat their last (or the first anchor's class 0)."""
    rows, cols = explained_shape
    anchors_first = rows not in (classes, classes + 4)
    channels = cols if anchors_first else rows
    if channels not in (classes, classes + 4):
        raise LrpgraphError(f"the explained tensor {explained_shape} holds neither the {classes} class scores nor "
                            f"the {classes + 4} rows of the detect output; convert with --from the output or its "
                            "class scores")
    shift = channels - classes
    out = np.zeros((len(detections), k, 2), np.int64)
    for n, det in enumerate(detections):
        pairs = [(int(c) + shift, int(a)) for c, a in zip(det.classes, det.anchors)][:k] or [(shift, 0)]
        pairs += [pairs[-1]] * (k - len(pairs))
        out[n] = [(a, c) if anchors_first else (c, a) for c, a in pairs]
    return out


def draw_box(rgb: np.ndarray, box: tuple | list | np.ndarray, colour: tuple = (0, 200, 0), width: int = 2) -> np.ndarray:
    """A copy of rgb [H, W, 3] uint8 with the box's outline drawn."""
    out = np.array(rgb, copy=True)
    h, w = out.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, x1 = np.clip([x0, x1], 0, w - 1)
    y0, y1 = np.clip([y0, y1], 0, h - 1)
    for t in range(width):
        out[np.clip(y0 + t, 0, h - 1), x0:x1 + 1] = colour
        out[np.clip(y1 - t, 0, h - 1), x0:x1 + 1] = colour
        out[y0:y1 + 1, np.clip(x0 + t, 0, w - 1)] = colour
        out[y0:y1 + 1, np.clip(x1 - t, 0, w - 1)] = colour
    return out


def forward(session: "ExplainSession", x: np.ndarray, output: str | None = None) -> np.ndarray:
    """The model's first output (the detect output), or the output named, for the images x, computing no
    heatmap (onnxruntime runs only the nodes the asked output needs; the target input gets a placeholder)."""
    runner, record = session.runner, session.record
    target = None
    if session.target_input is not None:
        sizes = list(record.explained_shape)
        target = np.zeros((len(x), 1, len(sizes)), np.int64) if session.target_input == "target" else \
            np.zeros((len(x), 1, *sizes), np.float32)
    return runner.run([output or next(iter(runner.outputs))], runner.feeds(session.image_input, x, target))[0]


def explain_detections(session: "ExplainSession", paths: list, out_dir: str | os.PathLike, top: int = 5,
                       score: float = 0.25, iou: float = 0.45, cmap: str = "bwr") -> list:
    """For each image: decode and NMS-filter the detections, explain the top best in one call, write
    NAME.detK.png (heatmap over the image, the box drawn), NAME.json (boxes, scores, classes, the best class
    score of any anchor) and, for all
    images, index.html (pictures.explain_each). Returns the JSON records."""
    from lrpgraph.runtime import render
    from lrpgraph.runtime.pictures import explain_each

    if not session.record.k_targets or session.target_input is None:
        raise LrpgraphError(f"{session.name}: --decode yolo needs a model converted with --target index (or seed) "
                            "whose explained tensor is the detect output or its class scores")

    def explain_one(x, display, base, out_dir):
        output = forward(session, x[None])
        found = decode_yolo(output, score, iou, top)[0]
        scores = output[0, 4:] if channels_first(output.shape) else output[0, :, 4:]
        record = {"detections": found.to_json(session.labels), "heatmaps": [], "best_score": float(scores.max())}
        if len(found.scores):
            classes = output.shape[1 if channels_first(output.shape) else 2] - 4
            tuples = index_tuples([found], list(session.record.explained_shape), classes, len(found.scores))
            _, relevance = session.explain(x[None], target=tuples)
            relevance = relevance if not isinstance(relevance, dict) else next(iter(relevance.values()))
            for k, box in enumerate(found.boxes):
                picture = draw_box(render.overlay(display, render.heatmap_rgb(relevance[0, k], cmap), 0.6), box)
                render.save_png(out_dir / f"{base}.det{k}.png", picture)
                record["heatmaps"].append(f"{base}.det{k}.png")
        return record

    return explain_each(session, paths, out_dir, explain_one, "lrpgraph detections", captions,
                        "no detection above the score threshold")


def captions(record: dict) -> list:
    """The caption of each explained detection: its label (or class) and score."""
    return [f"{det.get('label', det['class'])} {det['score']:.2f}" for det in record["detections"]]

"""A detector a person can judge: a small one-scale detector trained here on synthetic scenes (Fashion-MNIST
garments of four classes placed on one canvas, with their boxes), converted, and its detections explained K at
a time with the runtime's YOLO decoding (the ultralytics layout [N, 4 + C, A]). Writes docs/detection.png and
prints, on held-out scenes and for each detection that finds a garment (its class, IoU > 0.5), how often the
heatmap's maximum falls inside the garment's box (the pointing game) and the fraction of positive relevance
inside it, next to the same figures for a random heatmap.

The detector: three stride-2 convolutions (ReLU) to a 12 x 12 grid on a 96 x 96 scene, a 1 x 1 head giving per
cell a box (centre offset, size) and C class scores through a Sigmoid; an object belongs to the cell holding its
centre. It is explained at its class scores (`--from` the Sigmoid output), composite epsilon-plus-flat.

    python benchmarks/detection_demo.py                 # trains on the CPU, writes docs/detection.png
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

import lrpgraph
from lrpgraph import ExplainSession
from lrpgraph.datasets import CLASS_NAMES, garment_mask, load_fashion_mnist
from lrpgraph.runtime import render
from lrpgraph.runtime.boxes import box_metrics
from lrpgraph.runtime.detect import decode_yolo, draw_box, index_tuples
from machine import cpu_name

SIZE, STRIDE, CLASSES = 96, 8, (0, 1, 5, 8)  # t-shirt, trouser, sandal, bag
GRID = SIZE // STRIDE




def scenes(count, split, seed):
    """(images float32 [n, 3, SIZE, SIZE], [[(box x0 y0 x1 y1, class index)] per scene]): 1 to 3 garments that
    do not overlap, on a faint striped texture."""
    images, labels = load_fashion_mnist(split)
    keep = np.nonzero(np.isin(labels, CLASSES))[0]
    rng = np.random.default_rng(seed)
    out, boxes = np.zeros((count, 3, SIZE, SIZE), np.float32), []
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for n in range(count):
        angle, freq = rng.random() * np.pi, 0.1 + rng.random() * 0.3
        canvas = 0.15 + 0.08 * np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle))) + rng.normal(0, 0.03, (SIZE, SIZE))
        placed = []
        for _ in range(rng.integers(1, 4)):
            i = rng.choice(keep)
            garment = images[i].astype(np.float32) / 255
            rows, cols = np.nonzero(garment_mask(images[i]))
            for _ in range(20):
                y, x = rng.integers(0, SIZE - 28, 2)
                box = (x + cols.min(), y + rows.min(), x + cols.max() + 1, y + rows.max() + 1)
                if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b, _ in placed):
                    region = canvas[y:y + 28, x:x + 28]
                    canvas[y:y + 28, x:x + 28] = np.where(garment_mask(images[i]), garment, region)
                    placed.append((box, CLASSES.index(int(labels[i]))))
                    break
        out[n] = np.clip(canvas, 0, 1)[None] * np.array([1.0, 0.95, 0.9], np.float32)[:, None, None]
        boxes.append(placed)
    return out, boxes


class Detector(torch.nn.Module):
    """[N, 3, 96, 96] -> [N, 4 + C, 144]: per cell centre x, centre y, width, height (pixels) and C scores."""

    def __init__(self, classes=len(CLASSES)):
        super().__init__()
        layers, width = [], 3
        for out in (24, 48, 64):
            layers += [torch.nn.Conv2d(width, out, 3, stride=2, padding=1), torch.nn.ReLU(),
                       torch.nn.Conv2d(out, out, 3, padding=1), torch.nn.ReLU()]
            width = out
        self.features = torch.nn.Sequential(*layers)
        self.box = torch.nn.Conv2d(width, 4, 1)
        self.cls = torch.nn.Conv2d(width, classes, 1)
        gy, gx = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
        self.register_buffer("grid", torch.stack([gx, gy]).reshape(1, 2, -1).float())

    def raw(self, x):
        f = self.features(x)
        return self.box(f).flatten(2), self.cls(f).flatten(2)

    def forward(self, x):
        box, cls = self.raw(x)
        centre = (self.grid + torch.sigmoid(box[:, :2])) * STRIDE
        size = torch.sigmoid(box[:, 2:]) * 48
        return torch.cat([centre, size, torch.sigmoid(cls)], 1)


def targets(boxes):
    cls = torch.zeros(len(boxes), len(CLASSES), GRID * GRID)
    reg = torch.zeros(len(boxes), 4, GRID * GRID)
    for n, placed in enumerate(boxes):
        for (x0, y0, x1, y1), c in placed:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            cell = int(cy // STRIDE) * GRID + int(cx // STRIDE)
            cls[n, c, cell] = 1
            reg[n, :, cell] = torch.tensor([cx, cy, x1 - x0, y1 - y0], dtype=torch.float32)
    return cls, reg


def train(x, boxes, epochs, seed=0):
    torch.manual_seed(seed)
    model = Detector()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    cls_t, reg_t = targets(boxes)
    xs = torch.from_numpy(x)
    for epoch in range(epochs):
        order = torch.randperm(len(xs))
        for start in range(0, len(xs), 32):
            idx = order[start:start + 32]
            out = model(xs[idx])
            raw_cls = model.raw(xs[idx])[1]
            positive = cls_t[idx].amax(1, keepdim=True)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(raw_cls, cls_t[idx], pos_weight=torch.tensor(20.0))
            loss = loss + (torch.abs(out[:, :4] - reg_t[idx]) * positive).sum() / positive.sum().clamp(min=1) / 10
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}", file=sys.stderr)
    return model.eval()


def figure(session, x, found, path, scenes_shown=4, per_scene=3, scale=3):
    """docs/detection.png: per scene, the image with its detections and the heatmap of each (box drawn)."""
    from PIL import Image

    rows = []
    for n in range(scenes_shown):
        display = (x[n].transpose(1, 2, 0) * 255).astype(np.uint8)
        det = found[n]
        k = min(per_scene, len(det.scores))
        tiles = [display.copy()]
        for box in det.boxes[:k]:
            tiles[0] = draw_box(tiles[0], box, (0, 160, 255), 1)
        if k:
            _, relevance = session.explain(x[n:n + 1], target=index_tuples([det], [len(CLASSES), GRID * GRID],
                                                                            len(CLASSES), k))
            for j in range(k):
                heat = render.overlay(display, render.heatmap_rgb(relevance[0, j]), 0.7)
                tiles.append(draw_box(heat, det.boxes[j], (0, 200, 0), 1))
        tiles += [np.full_like(display, 255)] * (per_scene + 1 - len(tiles))
        rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1))
    picture = np.concatenate(rows, 0)
    Image.fromarray(np.repeat(np.repeat(picture, scale, 0), scale, 1)).save(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                                                     "detection.png"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.time()
    x_train, b_train = scenes(args.train, "train", 0)
    x_test, b_test = scenes(args.test, "test", 1)
    model = train(x_train, b_train, args.epochs)
    path = os.path.join(tempfile.mkdtemp(), "detector.onnx")
    torch.onnx.export(model, (torch.from_numpy(x_test[:1]),), path, input_names=["images"], output_names=["output0"],
                      dynamo=False, opset_version=17)
    import onnx

    proto = onnx.load(path)
    producer = {o: n for n in proto.graph.node for o in n.output}
    concat = producer["output0"]
    scores = next(t for t in concat.input if producer[t].op_type == "Sigmoid")
    session = ExplainSession(lrpgraph.convert(proto, composite="epsilon-plus-flat", target="index",
                                              from_tensor=scores))
    with torch.no_grad():
        found = decode_yolo(model(torch.from_numpy(x_test)).numpy(), score=0.3, iou=0.45)
    hits = inside = random_hits = random_inside = count = 0
    rng = np.random.default_rng(0)
    for n, det in enumerate(found):
        matched = [(k, box) for k, (dc, db) in enumerate(zip(det.classes, det.boxes))
                   for box, c in b_test[n] if c == int(dc) and _iou(box, db) > 0.5]  # true positives, garment box
        if not matched:
            continue
        _, relevance = session.explain(x_test[n:n + 1], target=index_tuples([det], [len(CLASSES), GRID * GRID],
                                                                             len(CLASSES), len(det.scores)))
        for k, box in matched:
            hit, frac = box_metrics(relevance[0, k], box)
            r_hit, r_frac = box_metrics(rng.standard_normal((SIZE, SIZE)), box)
            hits, inside, random_hits, random_inside, count = (hits + hit, inside + frac, random_hits + r_hit,
                                                               random_inside + r_frac, count + 1)
    figure(session, x_test, found, args.out)
    objects = sum(len(b) for b in b_test)
    print(f"{args.test} held-out scenes, {objects} garments ({', '.join(CLASS_NAMES[c] for c in CLASSES)}); "
          f"detector trained on {args.train} scenes for {args.epochs} epochs; CPU: {cpu_name()}")
    print(f"true positives (right class, IoU > 0.5 with a garment's box, score > 0.3): {count} of {objects} garments")
    count = max(count, 1)
    print(f"heatmap maximum inside the garment's box: {hits / count:.3f} (random heatmap {random_hits / count:.3f})")
    print(f"positive relevance inside the garment's box: {inside / count:.3f} (random heatmap "
          f"{random_inside / count:.3f})")
    print(f"wrote {os.path.normpath(args.out)} ({time.time() - start:.0f} s)")


def _iou(a, b):
    lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(np.subtract(hi, lo), 0, None))
    return inter / (np.prod(np.subtract(a[2:], a[:2])) + np.prod(np.subtract(b[2:], b[:2])) - inter)


if __name__ == "__main__":
    main()

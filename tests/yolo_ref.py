"""Ultralytics YOLOv8n with random weights (built from its yaml, offline), exported by ultralytics' own ONNX
exporter from the same torch model object, so that the torch reference and the ONNX file hold the same weights.

The head's class bias prior (ultralytics initialises it to log(5 / classes / (640 / stride)^2), so that an
untrained model scores near 1e-5) is set to 0: the scores are near 0.5 as a trained model's are, and the
relevance of a score stays far from float32's smallest numbers (a seed of 1e-5 reaches them in the early
layers: measured L1 2e-3 against zennit in float64, where a seed near 0.5 gives 1e-7 to 7e-6)."""

import functools
import os
import tempfile

import onnx

SIDE = 160  # image side of the static export (anchors: 20x20 + 10x10 + 5x5 = 525)


@functools.cache
def yolov8n(side: int = SIDE) -> tuple:
    """(the ultralytics YOLO object, the path of its static ONNX export at side x side)."""
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    yolo = YOLO("yolov8n.yaml")
    with torch.no_grad():
        for branch in yolo.model.model[-1].cv3:
            branch[-1].bias.zero_()
    folder = tempfile.mkdtemp(prefix="lrpgraph-yolo-")
    here = os.getcwd()
    try:
        os.chdir(folder)
        path = yolo.export(format="onnx", imgsz=side, verbose=False)
    finally:
        os.chdir(here)
    return yolo, os.path.join(folder, path) if not os.path.isabs(path) else path


def class_scores(path: str) -> str:
    """The Sigmoid output feeding the head's last Concat: the class scores [N, C, A] of the [N, 4 + C, A] output."""
    model = onnx.load(path, load_external_data=False)
    producer = {o: n for n in model.graph.node for o in n.output}
    concat = producer[model.graph.output[0].name]
    return next(t for t in concat.input if producer[t].op_type == "Sigmoid")

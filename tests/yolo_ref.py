"""Ultralytics YOLOv8n with random weights (built from its yaml, offline), exported by ultralytics' own ONNX
exporter from the same torch model object, so that the torch reference and the ONNX file hold the same weights."""

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

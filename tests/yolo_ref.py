"""Ultralytics YOLOv8n (and YOLO11n) with random weights (built from its yaml, offline), exported by ultralytics'
own ONNX exporter from the same torch model object, so that the torch reference and the ONNX file hold the same
weights.

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
    return ultralytics_yolo("yolov8n", side)


@functools.cache
def ultralytics_yolo(name: str, side: int = SIDE, seed: int = 0, calibrated: bool = False) -> tuple:
    """(the YOLO object built from name.yaml, e.g. yolo11n or yolo11n-seg, with the class bias prior at 0; the path
    of its static ONNX export at side x side). calibrated: BatchNorm's running statistics are those of random
    images (see calibrate)."""
    import torch
    from ultralytics import YOLO

    torch.manual_seed(seed)
    yolo = YOLO(f"{name}.yaml")
    with torch.no_grad():
        for branch in yolo.model.model[-1].cv3:
            branch[-1].bias.zero_()
    if calibrated:
        calibrate(yolo.model, side)
    folder = tempfile.mkdtemp(prefix="lrpgraph-yolo-")
    here = os.getcwd()
    try:
        os.chdir(folder)
        path = yolo.export(format="onnx", imgsz=side, verbose=False)
    finally:
        os.chdir(here)
    return yolo, os.path.join(folder, path) if not os.path.isabs(path) else path


def calibrate(model, side: int) -> None:
    """BatchNorm's running statistics set to those of 8 random images (a cumulative average), as training leaves
    them: each layer's activations come out near unit scale. Freshly initialised (mean 0, variance 1) the
    activations shrink layer by layer (about 1e-9 at YOLO11n's C2PSA attention), so deep layers carry no relevance
    and a check of them could not fail."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, side, side))
    model.eval()


def class_scores(path: str) -> str:
    """The Sigmoid output feeding the head's last Concat: the class scores [N, C, A] of the [N, 4 + C, A] output."""
    model = onnx.load(path, load_external_data=False)
    producer = {o: n for n in model.graph.node for o in n.output}
    concat = producer[model.graph.output[0].name]
    return next(t for t in concat.input if producer[t].op_type == "Sigmoid")

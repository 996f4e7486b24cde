"""ultralytics YOLO models (random weights, built from their yaml offline), their ONNX export by ultralytics'
own exporter, and the torch reference of one class score: the head's class logits before its Sigmoid."""

import os
import shutil

import torch

SIDE = 160  # strides 8, 16, 32: 20x20 + 10x10 + 5x5 = 525 anchors


class Stop(Exception):
    """Raised by the hook that takes the head's inputs."""


class ClassLogits(torch.nn.Module):
    """The class logits [N, classes, anchors] of a YOLO model (the Detect head's cv3 branch, before the Sigmoid
    the ONNX export applies): the layers up to the head run as in the model."""

    def __init__(self, model):
        super().__init__()
        self.model, self.detect = model, model.model[-1]

    def forward(self, x):
        captured = []

        def grab(module, args):
            captured.append(args[0])
            raise Stop

        hook = self.detect.register_forward_pre_hook(grab)
        try:
            self.model(x)
        except Stop:
            pass
        finally:
            hook.remove()
        xs = captured[0]
        return torch.cat([self.detect.cv3[i](xs[i]).flatten(2) for i in range(self.detect.nl)], 2)


def yolo(name, folder, dynamic=False, side=SIDE):
    """(torch model with BatchNorm folded, eval; the path of its ONNX export by ultralytics)."""
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO(f"{name}.yaml")
    here = os.getcwd()
    os.chdir(folder)
    try:
        path = model.export(format="onnx", imgsz=side, dynamic=dynamic, simplify=False, verbose=False)
    finally:
        os.chdir(here)
    target = os.path.join(folder, f"{name}{'_dynamic' if dynamic else ''}.onnx")
    shutil.move(os.path.join(folder, path), target)
    return model.model.fuse(verbose=False).eval(), target

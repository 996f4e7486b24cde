"""Test helpers for ISNet training: Fashion-MNIST garments on textured 32 x 32 canvases, and a tiny CNN.

Data: the Debian package dataset-fashion-mnist (gzipped idx files under /usr/share/datasets/fashion-mnist;
`apt-get install -y dataset-fashion-mnist`). Each garment (28 x 28) is placed at a random offset on a
32 x 32 canvas whose background is a random texture (sinusoid stripes plus noise); its mask is the
garment itself (pixel > 0). Without the package, synthetic ellipses stand in (real=False), for the tests
that only need some masked images. The CNN is written with onnx.helper (no exporter run): Conv + BatchNorm + Relu
+ MaxPool, Conv + Relu + MaxPool, Conv + Relu, GlobalAveragePool, Flatten, Gemm.
"""

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from lrpgraph.datasets import read_idx

FASHION = Path(os.environ.get("LRPGRAPH_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def available():
    return (FASHION / "train-images-idx3-ubyte.gz").is_file()


def synthetic_garments(n, classes, rng):
    """Stand-ins when Fashion-MNIST is not installed: filled ellipses whose aspect ratio depends on the class."""
    yy, xx = np.mgrid[0:28, 0:28] - 13.5
    labels = np.arange(n) % classes
    images = []
    for label in labels:
        ry = 6 + 7 * label / max(classes - 1, 1)
        rx = 13 - 7 * label / max(classes - 1, 1)
        inside = (yy / ry) ** 2 + (xx / rx) ** 2 <= 1
        images.append(np.where(inside, rng.integers(120, 256, (28, 28)), 0).astype(np.uint8))
    return np.stack(images), labels.astype(np.uint8)


def canvases(n, classes=4, size=32, seed=0, split="train", real=None):
    """n (images uint8 N x size x size, masks uint8 0/255, labels) with labels in [0, classes), balanced.
    real: Fashion-MNIST garments (True), synthetic ellipses (False), or whichever is available (None)."""
    rng = np.random.default_rng(seed)
    if real is None:
        real = available()
    if real:
        prefix = "train" if split == "train" else "t10k"
        images = read_idx(FASHION / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(FASHION / f"{prefix}-labels-idx1-ubyte.gz")
    else:
        images, labels = synthetic_garments(n + classes, classes, np.random.default_rng(seed + 1000))
    per_class = -(-n // classes)
    picks = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(classes)])[:n]
    yy, xx = np.mgrid[0:size, 0:size]
    out_images, out_masks = [], []
    for i in picks:
        freq, angle, phase = rng.uniform(0.3, 1.2), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        stripes = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
        texture = np.clip(90 + 60 * stripes + rng.normal(0, 20, (size, size)), 0, 255)
        top, left = rng.integers(0, size - 27, 2)
        canvas, mask = texture.copy(), np.zeros((size, size), np.uint8)
        garment = images[i].astype(np.float64)
        window = (slice(top, top + 28), slice(left, left + 28))
        canvas[window] = np.where(garment > 0, garment, canvas[window])
        mask[window] = np.where(garment > 0, 255, 0)
        out_images.append(canvas.astype(np.uint8))
        out_masks.append(mask)
    return np.stack(out_images), np.stack(out_masks), labels[picks].astype(np.int64)


def write_folders(root, n, classes=4, size=32, seed=0, split="train", real=None):
    """root/images/<class>/<i>.png and root/masks/<class>/<i>.png; returns (images dir, masks dir)."""
    root = Path(root)
    images, masks, labels = canvases(n, classes, size, seed, split, real)
    for i, (image, mask, label) in enumerate(zip(images, masks, labels)):
        for kind, array in (("images", image), ("masks", mask)):
            folder = root / kind / f"{label}_{CLASSES[label]}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / f"{i:04d}.png")
    return root / "images", root / "masks"


def tiny_cnn(classes=4, channels=1, size=32, widths=(8, 16), seed=0, opset=17):
    """A small CNN as an onnx.ModelProto with He-normal weights and non-trivial BatchNorm statistics."""
    rng = np.random.default_rng(seed)
    a, b = widths

    def he(*shape):
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    weights = {"conv1.weight": he(a, channels, 3, 3), "conv1.bias": np.zeros(a, np.float32),
               "bn.weight": rng.uniform(0.8, 1.2, a).astype(np.float32),
               "bn.bias": rng.uniform(-0.1, 0.1, a).astype(np.float32),
               "bn.running_mean": rng.uniform(-0.1, 0.1, a).astype(np.float32),
               "bn.running_var": rng.uniform(0.8, 1.2, a).astype(np.float32),
               "conv2.weight": he(b, a, 3, 3), "conv2.bias": np.zeros(b, np.float32),
               "conv3.weight": he(b, b, 3, 3), "conv3.bias": np.zeros(b, np.float32),
               "fc.weight": he(classes, b), "fc.bias": np.zeros(classes, np.float32)}
    n = helper.make_node
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    pool = dict(kernel_shape=[2, 2], strides=[2, 2])
    nodes = [n("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", **conv),
             n("BatchNormalization", ["c1", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"], ["b1"],
               name="bn"),
             n("Relu", ["b1"], ["r1"], name="relu1"), n("MaxPool", ["r1"], ["p1"], name="pool1", **pool),
             n("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", **conv),
             n("Relu", ["c2"], ["r2"], name="relu2"), n("MaxPool", ["r2"], ["p2"], name="pool2", **pool),
             n("Conv", ["p2", "conv3.weight", "conv3.bias"], ["c3"], name="conv3", **conv),
             n("Relu", ["c3"], ["r3"], name="relu3"), n("GlobalAveragePool", ["r3"], ["g"], name="gap"),
             n("Flatten", ["g"], ["f"], name="flatten"),
             n("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "tiny_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model

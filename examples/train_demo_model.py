#!/usr/bin/env python
"""Train the small Fashion-MNIST classifier shipped in ``lrpgraph/data/demo``.

The model is used by ``lrpgraph demo``. It is deliberately small (about 10k
parameters) but touches the operators the converter has to handle:

* normalisation inside the graph: ``(x - 0.2860) / 0.3530`` -> ONNX Sub and Div
  by constants,
* Conv + BatchNorm + ReLU (BatchNorm is folded into the Conv on export),
* MaxPool 3x3 / stride 2 / pad 1 (overlapping windows),
* a residual block (Add of two branches),
* a strided Conv,
* global average pooling, Flatten, Linear (Gemm).

Data: the Debian package ``dataset-fashion-mnist`` (gzipped idx files under
``/usr/share/datasets/fashion-mnist``)::

    apt-get install -y dataset-fashion-mnist
    python examples/train_demo_model.py            # writes lrpgraph/data/demo

Adam (lr 1e-3), batch 128, 12 epochs: 20-27 s per epoch on an unloaded
2-core CPU (torch.set_num_threads(2)), so 4-5 minutes, and 88.79% test
accuracy. Three epochs (``--epochs 3``) give about 84%.

Outputs written to ``--out``: ``model.onnx`` (input ``image`` float32
[N,1,28,28] in [0,1], output ``logits`` [N,10]), ``labels.txt`` and
``images/*.png`` (12 test-set images, at least one per class).

Training is deterministic for a given machine/torch build: fixed seed, a
seeded generator for the shuffling, single process data order, fixed thread
count.
"""
from __future__ import annotations

import argparse
import gzip
import re
import struct
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MEAN = 0.2860
STD = 0.3530
DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "lrpgraph" / "data" / "demo"


# --------------------------------------------------------------------- data
def _open(path: Path):
    """Open an idx file, gzipped (``*.gz``) or not."""
    if path.exists():
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    if path.suffix == ".gz" and path.with_suffix("").exists():
        return open(path.with_suffix(""), "rb")
    gz = path.with_name(path.name + ".gz")
    if gz.exists():
        return gzip.open(gz, "rb")
    raise FileNotFoundError(
        f"{path} not found (install the Debian package 'dataset-fashion-mnist' "
        "or pass --data-dir)"
    )


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (unsigned-byte payload) into a numpy array."""
    with _open(path) as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {shape}, got {arr.size} values")
    return arr.reshape(shape)


def load_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz")
    assert images.shape[1:] == (28, 28) and len(images) == len(labels)
    return images, labels


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,28,28] -> float32 [N,1,28,28] in [0,1]."""
    return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)


# -------------------------------------------------------------------- model
class Normalize(nn.Module):
    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean = mean
        self.std = std

    def forward(self, x):
        return (x - self.mean) / self.std


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
    )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.branch = nn.Sequential(
            conv_bn(channels, channels), nn.ReLU(), conv_bn(channels, channels)
        )

    def forward(self, x):
        return F.relu(self.branch(x) + x)


class DemoNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.normalize = Normalize(MEAN, STD)
        self.stem = nn.Sequential(conv_bn(1, 16), nn.ReLU())
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.block = ResidualBlock(16)
        self.down = nn.Sequential(conv_bn(16, 32, stride=2), nn.ReLU())
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.normalize(x)
        x = self.stem(x)  # 16 x 28 x 28
        x = self.pool(x)  # 16 x 14 x 14
        x = self.block(x)  # 16 x 14 x 14
        x = self.down(x)  # 32 x 7 x 7
        x = self.gap(x)  # 32 x 1 x 1
        return self.fc(self.flatten(x))


# ---------------------------------------------------------------- training
@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000):
    model.eval()
    preds = [model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)]
    return (torch.cat(preds) == y).float().mean().item()


def train(model, x_train, y_train, x_test, y_test, epochs, batch_size, lr, seed):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(x_train)
    t0, c0 = time.perf_counter(), time.process_time()
    acc = float("nan")
    for epoch in range(1, epochs + 1):
        model.train()
        te = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        total_loss = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            xb, yb = x_train[idx], y_train[idx]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            total_loss += loss.item() * len(idx)
        acc = evaluate(model, x_test, y_test)
        print(
            f"epoch {epoch}/{epochs}  train loss {total_loss / n:.4f}  "
            f"test acc {acc * 100:.2f}%  ({time.perf_counter() - te:.1f}s)",
            flush=True,
        )
    return acc, time.perf_counter() - t0, time.process_time() - c0


# ------------------------------------------------------------------ export
def export_onnx(model: nn.Module, path: Path) -> None:
    import onnx

    model.eval()
    example = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        external_data=False,
        verbose=False,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
    )
    m = onnx.load(str(path))
    renames = {m.graph.input[0].name: "image", m.graph.output[0].name: "logits"}
    renames = {k: v for k, v in renames.items() if k != v}
    if renames:  # exporter ignored the names: rename every reference
        print(f"renaming graph inputs/outputs: {renames}")
        for vi in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
            vi.name = renames.get(vi.name, vi.name)
        for node in m.graph.node:
            node.input[:] = [renames.get(s, s) for s in node.input]
            node.output[:] = [renames.get(s, s) for s in node.output]
        onnx.save(m, str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def check_onnx(model: nn.Module, path: Path, x_test, y_test) -> None:
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(path))
    ops = Counter(n.op_type for n in m.graph.node)
    print("onnx ops:", dict(sorted(ops.items())))
    for v in list(m.graph.input) + list(m.graph.output):
        dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        print(f"  {v.name}: {dims}")

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model.eval()
    for bs in (1, 7):
        x = x_test[100 : 100 + bs]
        with torch.no_grad():
            ref = model(x).numpy()
        (out,) = sess.run(["logits"], {"image": x.numpy()})
        diff = float(np.abs(out - ref).max())
        print(f"  batch {bs}: max |onnxruntime - torch| = {diff:.2e}")
        if not diff <= 1e-5:
            raise SystemExit(f"ONNX output differs from torch by {diff} (batch {bs})")
    preds = np.concatenate(
        [
            sess.run(["logits"], {"image": x_test[i : i + 1000].numpy()})[0].argmax(1)
            for i in range(0, len(x_test), 1000)
        ]
    )
    print(f"  onnxruntime test accuracy: {(preds == y_test.numpy()).mean() * 100:.2f}%")


# ------------------------------------------------------------------ images
def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "_", name.lower()).strip("_")


def pick_images(labels: np.ndarray) -> list[int]:
    """The first test image of every class, plus the second T-shirt/top and
    the second Shirt (the pair the model confuses most): 12 images."""
    picked = [int(np.flatnonzero(labels == c)[0]) for c in range(len(CLASS_NAMES))]
    picked += [int(np.flatnonzero(labels == c)[1]) for c in (0, 6)]
    return sorted(picked, key=lambda k: (int(labels[k]), k))


def write_images(images: np.ndarray, labels: np.ndarray, out_dir: Path) -> list[Path]:
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    paths = []
    for k in pick_images(labels):
        c = int(labels[k])
        p = out_dir / f"{c:02d}_{slug(CLASS_NAMES[c])}_{k:04d}.png"
        Image.fromarray(np.ascontiguousarray(images[k])).save(p, optimize=True)
        paths.append(p)
    return paths


# -------------------------------------------------------------------- main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    ap.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR))
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    tr_img, tr_lab = load_split(args.data_dir, "train")
    te_img, te_lab = load_split(args.data_dir, "test")
    x_train, y_train = to_tensor(tr_img), torch.from_numpy(tr_lab.astype(np.int64))
    x_test, y_test = to_tensor(te_img), torch.from_numpy(te_lab.astype(np.int64))
    print(f"train {tuple(x_train.shape)}  test {tuple(x_test.shape)}  from {args.data_dir}")

    model = DemoNet(len(CLASS_NAMES))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"DemoNet: {n_params} parameters; threads={torch.get_num_threads()}")
    acc, seconds, cpu_seconds = train(
        model, x_train, y_train, x_test, y_test, args.epochs, args.batch_size, args.lr, args.seed
    )
    print(
        f"training done in {seconds:.1f}s wall ({cpu_seconds:.1f}s CPU); "
        f"final test accuracy {acc * 100:.2f}%"
    )

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    export_onnx(model, onnx_path)
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size} bytes)")
    check_onnx(model, onnx_path, x_test, y_test)

    (out / "labels.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    for p in write_images(te_img, te_lab, out / "images"):
        print(f"wrote {p}")


if __name__ == "__main__":
    main()

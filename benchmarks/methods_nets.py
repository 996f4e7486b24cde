"""The five small networks of benchmarks/methods_table.py, their data, training and ONNX export.

Data: Fashion-MNIST garments (lrpgraph.datasets, no artefact: mode unbiased) on 64 x 64 textured canvases, made
RGB by a per-image tint (each channel scaled by its own factor in [0.6, 1.0], drawn from the seed), in [0, 1].
Networks (torch, 3 x 64 x 64 in, one logit per class), trained with cross-entropy, Adam, batch 32:

  vgg        3 x (two Conv3x3-BN-ReLU, MaxPool), dense 128, ReLU, dense (as vgg16_bn; without BatchNorm this small
             VGG stayed at chance level on this budget)
  resnet     Conv-BN-ReLU stem, three basic residual blocks (16, 32, 64 channels, stride 1, 2, 2), GAP, dense
  mobilenet  Conv-BN-ReLU6 stem (stride 2), four depthwise separable blocks (dw3x3-BN-ReLU6, pw1x1-BN-ReLU6), GAP, dense
  densenet   Conv stem, two dense blocks of three BN-ReLU-Conv3x3 layers (growth 12, concatenated) with a
             BN-ReLU-Conv1x1-AvgPool transition, BN-ReLU, GAP, dense
  vit        torchvision VisionTransformer: patch 8 (64 patches + class token), 2 layers, 4 heads, hidden 64, MLP 128

Run as a script, it prints the training curve of one network (training and test accuracy per epoch), what chose
methods_table.py's epochs, learning rates and the ViT's training set:

    python benchmarks/methods_nets.py --network vit --lr 1e-3 --epochs 8 --train-per-class 300
"""

import io

import numpy as np
import onnx
import torch
from torch import nn

from lrpgraph import datasets

NETWORKS = ("vgg", "resnet", "mobilenet", "densenet", "vit")
SIZE = 64


def rgb_set(split, per_class, classes, seed):
    """(x float32 N x 3 x 64 x 64 in [0, 1], labels int64): tinted garments on textured canvases."""
    data = datasets.biased_fashion_mnist(split, "unbiased", per_class, classes, SIZE, seed)
    tint = np.random.default_rng([seed, 7, split == "train"]).uniform(0.6, 1.0, (len(data.labels), 3, 1, 1))
    x = (data.images[:, None].astype(np.float32) / 255.0) * tint.astype(np.float32)
    return x.astype(np.float32), data.labels


def conv_bn(a, b, stride=1, groups=1, kernel=3, act=nn.ReLU):
    return [nn.Conv2d(a, b, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(b), act()]


class Basic(nn.Module):
    def __init__(self, a, b, stride):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(a, b, stride), *conv_bn(b, b)[:2])
        self.skip = nn.Sequential(*conv_bn(a, b, stride, kernel=1)[:2]) if stride != 1 or a != b else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.skip(x))


class Dense(nn.Module):
    def __init__(self, a, growth, layers):
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.BatchNorm2d(a + i * growth), nn.ReLU(),
                                                  nn.Conv2d(a + i * growth, growth, 3, padding=1, bias=False))
                                    for i in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return x


def head(width, classes):
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes)]


def build(name, classes, seed):
    """A freshly initialised network `name` (seeded), in eval mode."""
    torch.manual_seed(seed)
    if name == "vgg":
        layers, a = [], 3
        for b in (16, 32, 64):
            layers += conv_bn(a, b) + conv_bn(b, b) + [nn.MaxPool2d(2)]
            a = b
        net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, classes))
    elif name == "resnet":
        net = nn.Sequential(*conv_bn(3, 16), Basic(16, 16, 1), Basic(16, 32, 2), Basic(32, 64, 2), *head(64, classes))
    elif name == "mobilenet":
        layers, a = conv_bn(3, 16, 2, act=nn.ReLU6), 16
        for b, stride in ((32, 1), (64, 2), (64, 1), (128, 2)):
            layers += conv_bn(a, a, stride, groups=a, act=nn.ReLU6) + conv_bn(a, b, kernel=1, act=nn.ReLU6)
            a = b
        net = nn.Sequential(*layers, *head(128, classes))
    elif name == "densenet":
        net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), Dense(16, 12, 3), nn.BatchNorm2d(52), nn.ReLU(),
                            nn.Conv2d(52, 32, 1, bias=False), nn.AvgPool2d(2), Dense(32, 12, 3), nn.BatchNorm2d(68),
                            nn.ReLU(), *head(68, classes))
    else:
        from torchvision.models.vision_transformer import VisionTransformer

        net = VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                                num_classes=classes)
    return net.eval()


def train(net, x, y, epochs, lr, seed, batch=32, after_epoch=None):
    """Cross-entropy, Adam, a cosine schedule; returns the training accuracy of each epoch in % (a list).
    after_epoch(epoch, training accuracy), if given, runs after each epoch with the network in eval mode."""
    optimizer = torch.optim.Adam(net.parameters(), lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    order = torch.Generator()
    order.manual_seed(seed)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    history = []
    for _ in range(epochs):
        net.train()
        correct = 0
        for idx in torch.randperm(len(y), generator=order).split(batch):
            optimizer.zero_grad(set_to_none=True)
            logits = net(x[idx])
            nn.functional.cross_entropy(logits, y[idx]).backward()
            optimizer.step()
            correct += int((logits.argmax(1) == y[idx]).sum())
        schedule.step()
        history.append(100.0 * correct / len(y))
        net.eval()
        if after_epoch is not None:
            with torch.no_grad():
                after_epoch(len(history), history[-1])
    return history


def export(net, name):
    """The trained network as an onnx.ModelProto with a dynamic batch (TorchScript exporter; the ViT: dynamo)."""
    example = torch.zeros(2, 3, SIZE, SIZE)
    if name == "vit":
        batch = torch.export.Dim("batch", min=1)
        program = torch.onnx.export(net, (example,), None, external_data=False, verbose=False,
                                    dynamic_shapes=({0: batch},))
        return program.model_proto
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (example,), buffer, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})
    return onnx.load_from_string(buffer.getvalue())


def main(argv=None):
    """Print the training curve of one network: training and test accuracy (200 test images) per epoch."""
    import argparse
    import time

    p = argparse.ArgumentParser(description="training curve of one methods_table network")
    p.add_argument("--network", choices=NETWORKS, default="vit")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    classes = (0, 1, 5, 8)
    x, y = rgb_set("train", args.train_per_class, classes, args.seed)
    test_x, test_y = rgb_set("test", 50, classes, args.seed)
    net = build(args.network, len(classes), args.seed)
    started = time.process_time()

    def show(epoch, accuracy):
        test = 100.0 * float((net(torch.from_numpy(test_x)).argmax(1).numpy() == test_y).mean())
        print(f"{args.network} lr {args.lr:g} epoch {epoch}/{args.epochs}: training {accuracy:.1f} %, test {test:.1f} %, "
              f"{time.process_time() - started:.0f} CPU s", flush=True)

    train(net, x, y, args.epochs, args.lr, args.seed, after_epoch=show)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

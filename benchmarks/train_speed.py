"""Training step time of original ISNet and the Faster ISNet variants for 10, 100 and 1000 classes.

The same small backbone (tests/train/fashion_data.tiny_cnn: three 3x3 convolutions, BatchNorm, max pooling,
global average pooling and one dense layer whose width is the number of classes) is converted for each
variant (original, selective, stochastic: LRP-Flex with a seed input; dual: epsilon-plus and epsilon with
target all), imported with lrpgraph.train.importer, and trained with lrpgraph.train.isnet.Heatmaps +
ISNetLoss + SGD exactly as the training loop does: one step = forward + relevance pass + heatmap loss +
backward + gradient clipping + optimizer step. Plain cross-entropy training is timed as the reference.
The plain and Faster cases are timed in turn within each repeat (a, b, c, a, b, c, ...) after a warm-up step
each, so drift in the machine's load hits them alike; original ISNet (seconds per step at 1000 classes, GBs of
activations) is timed afterwards on its own, so that its memory traffic does not slow the others. Medians.

    python benchmarks/train_speed.py                          # prints the table, writes train_speed.png
    python benchmarks/train_speed.py --out docs/train_speed.md --plot docs/train_speed.png
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "train"))  # the tiny CNN builder

from fashion_data import tiny_cnn
from machine import cpu_name

import lrpgraph
from lrpgraph import metadata
from lrpgraph.train import isnet
from lrpgraph.train.importer import import_onnx
from lrpgraph.train.loss import ISNetLoss

VARIANTS = ("plain", "original", "dual", "selective", "stochastic")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", nargs="+", type=int, default=[10, 100, 1000])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--batch", type=int, default=8, help="images per step (default: 8)")
    p.add_argument("--size", type=int, default=16, help="image side (default: 16)")
    p.add_argument("--widths", nargs=2, type=int, default=[16, 32], help="conv channels (default: 16 32)")
    p.add_argument("--repeats", type=int, default=30, help="timed steps per plain / Faster case (default: 30)")
    p.add_argument("--original-repeats", type=int, default=3, help="timed steps per original case (default: 3)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default: 1; on a shared machine more threads add noise, not speed)")
    p.add_argument("--out", help="also write the markdown table to this file")
    p.add_argument("--plot", default="train_speed.png", help="PNG plot path (default: train_speed.png)")
    return p.parse_args(argv)


class Case:
    """One variant at one class count: module, heatmaps, loss, optimizer, and a fixed batch."""

    def __init__(self, variant, classes, args):
        plain = tiny_cnn(classes, 1, args.size, tuple(args.widths), seed=0)
        explained = lrpgraph.convert(plain, **isnet.conversion(variant))
        self.module = import_onnx(explained)
        spec = isnet.resolve(variant, metadata.Record.from_model(explained))
        self.heatmaps = isnet.Heatmaps(self.module, spec, classes)
        self.loss = ISNetLoss()
        self.params = list(self.module.weights.values())
        self.optimizer = torch.optim.SGD(self.params, 1e-3, momentum=0.99)
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(args.batch, 1, args.size, args.size, generator=g)
        self.mask = torch.zeros(args.batch, 1, args.size, args.size)
        self.mask[..., args.size // 4: 3 * args.size // 4, args.size // 4: 3 * args.size // 4] = 1
        self.y = torch.randint(0, classes, (args.batch,), generator=g)
        self.draws = torch.Generator().manual_seed(1)
        self.variant, self.classes, self.times = variant, classes, []

    def step(self):
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        logits, maps = self.heatmaps(self.x, isnet.draw(self.draws, len(self.x), self.classes))
        if maps is None:
            total = torch.nn.functional.cross_entropy(logits, self.y)
        else:
            total = self.loss(logits, self.y, maps, self.mask).total
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        return time.perf_counter() - start


def table(cases, classes, variants):
    head = "| variant | " + " | ".join(f"{c} classes (ms)" for c in classes) + \
           f" | {classes[-1]} / {classes[0]} classes |"
    lines = [head, "|" + " --- |" * (len(classes) + 2)]
    for v in variants:
        ms = [statistics.median(cases[v, c].times) * 1e3 for c in classes]
        lines.append(f"| {v} | " + " | ".join(f"{t:.1f}" for t in ms) + f" | {ms[-1] / ms[0]:.2f}x |")
    return "\n".join(lines)


def plot(cases, classes, variants, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for v in variants:
        ax.plot(classes, [statistics.median(cases[v, c].times) * 1e3 for c in classes], marker="o", label=v)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("classes")
    ax.set_ylabel("time per training step (ms)")
    ax.set_title("ISNet training step vs number of classes")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = {(v, c): Case(v, c, args) for c in args.classes for v in args.variants}
    faster = [case for case in cases.values() if case.variant != "original"]
    for case in faster:
        case.step()  # warm-up
    for _ in range(args.repeats):
        for case in faster:
            case.times.append(case.step())
    for case in cases.values():
        if case.variant == "original":
            case.step()
            case.times = [case.step() for _ in range(args.original_repeats)]
    text = table(cases, args.classes, args.variants)
    setup = (f"batch {args.batch}, 1 x {args.size} x {args.size} images, conv widths {args.widths}, "
             f"{args.threads} threads, torch {torch.__version__}, {cpu_name()}")
    print(setup)
    print(text)
    plot(cases, args.classes, args.variants, args.plot)
    if args.out:
        Path(args.out).write_text(f"{setup}\n\n{text}\n")


if __name__ == "__main__":
    main()

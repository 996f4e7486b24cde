"""Deletion and insertion AUC of gradient-family explainers and LRP composites on a pretrained model.

Model: the pretrained MNIST CNN of digit-recognizer-py (tests/zennit_ref.digit_model: 3 x Conv-ReLU-MaxPool,
2 dense layers). Data: scikit-learn's handwritten digits (8 x 8, 0..16), upsampled to 20 x 20 and padded to
28 x 28 as MNIST digits are, normalised with MNIST's mean 0.1307 and std 0.3081 (zennit_ref.real_digits).
One converted model returns every heatmap in one ONNX Runtime call (explain={NAME: method or composite}):

  ig                    integrated gradients, black-image baseline, --ig-steps Riemann steps
  guided_ig             the same with guided gradients (ReLU and MaxPool pass only positive gradients)
  epsilon               LRP epsilon everywhere
  epsilon_plus          epsilon (dense), zplus (conv)
  epsilon_gamma_box     zbox first layer with the normalised pixel range [-0.4242, 2.8215], gamma conv, epsilon dense
  epsilon_alpha2_beta1  alpha2-beta1 conv, epsilon dense
  random                Gaussian noise (a reference point, not a method)

Each heatmap explains the predicted class. Metrics (lrpgraph.metrics, RISE protocol): deletion replaces the
most relevant pixels (relevance summed over channels) by a black pixel, --step pixels at a time; insertion
starts from a blurred image (Gaussian, kernel 11, sigma 5) and puts the most relevant pixels back first;
the softmax probability of the class is tracked and the area under the curve over the fraction of pixels
is reported (mean and standard error over the images). Lower deletion and higher insertion are better.

    python benchmarks/methods.py                        # 500 digits, writes out/methods.md and out/methods.png
    python benchmarks/methods.py --images 100 --step 32 --out out/quick.md
"""

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared references (zennit_ref)

from zennit_ref import digit_model, export, real_digits

import lrpgraph
from lrpgraph import metrics

MEAN, STD = 0.1307, 0.3081
BLACK, WHITE = (0.0 - MEAN) / STD, (1.0 - MEAN) / STD
EXPLAIN = {"ig": "ig", "guided_ig": "guided-ig", "epsilon": "epsilon", "epsilon_plus": "epsilon-plus",
           "epsilon_gamma_box": "epsilon-gamma-box", "epsilon_alpha2_beta1": "epsilon-alpha2-beta1"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=500, help="number of real digits (default: 500)")
    p.add_argument("--step", type=int, default=16,
                   help="pixels per deletion/insertion step (default: 16 of 784, 50 steps per curve)")
    p.add_argument("--ig-steps", type=int, default=32, help="integrated gradients steps (default: 32)")
    p.add_argument("--batch", type=int, default=50, help="images per heatmap run (default: 50)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="ORT intra-op threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the random heatmap")
    p.add_argument("--out", default="out/methods.md", help="markdown table (default: out/methods.md); the plot "
                   "goes next to it as .png")
    return p.parse_args(argv)


def export_digit_model(x):
    model = digit_model()
    buffer = io.BytesIO()
    try:  # the TorchScript exporter takes a second; the dynamo exporter is the fallback
        torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, opset_version=17)
        return onnx.load_from_string(buffer.getvalue())
    except Exception:
        return onnx.load_from_string(export(model, x))


def heatmaps(converted, x, batch, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(converted.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = ["logits"] + [f"relevance_{name}" for name in EXPLAIN]
    parts = []
    for start in range(0, len(x), batch):
        rows = x[start:start + batch]
        parts.append(session.run(names, {"x": rows, "baseline": np.full_like(rows, BLACK)}))
    out = {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(names)}
    return out.pop("logits"), {name[len("relevance_"):]: r for name, r in out.items()}


def mean_sem(values):
    return values.mean(), values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0


def table(results, args, seconds):
    lines = [f"Deletion / insertion AUC on {args.images} real digits (scikit-learn, 28 x 28, MNIST-normalised), "
             f"pretrained digit CNN, {args.step} pixels per step ({-(-784 // args.step)} steps per curve), "
             f"IG {args.ig_steps} steps. Mean +- standard error over the images.", "",
             "| heatmap | deletion AUC (lower is better) | insertion AUC (higher is better) | insertion - deletion |",
             "| --- | --- | --- | --- |"]
    for name, (deleted, inserted) in results.items():
        d, ds = mean_sem(deleted.auc)
        i, is_ = mean_sem(inserted.auc)
        lines.append(f"| {name} | {d:.3f} +- {ds:.3f} | {i:.3f} +- {is_:.3f} | {i - d:.3f} |")
    lines += ["", f"Time: {seconds['heatmaps']:.0f} s for all heatmaps (one ORT call per batch), "
              f"{seconds['curves']:.0f} s for the curves ({args.threads} ORT threads)."]
    return "\n".join(lines)


def plot(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, k, kind in zip(axes, (0, 1), ("deletion", "insertion")):
        for name, curves in results.items():
            c = curves[k]
            ax.plot(c.fractions, c.probabilities.mean(0), label=f"{name} ({c.auc.mean():.3f})",
                    linestyle=":" if name == "random" else "-")
        ax.set(title=f"{kind} (mean over images; AUC)", xlabel="fraction of pixels", xlim=(0, 1), ylim=(0, 1.02),
               ylabel="softmax probability of the explained class")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    x, _ = real_digits(args.images)
    x = x.numpy()
    converted = lrpgraph.convert(export_digit_model(torch.from_numpy(x[:2])), explain=EXPLAIN, steps=args.ig_steps,
                                 baseline="input", low=BLACK, high=WHITE)
    started = time.perf_counter()
    logits, maps = heatmaps(converted, x, args.batch, args.threads)
    seconds = {"heatmaps": time.perf_counter() - started}
    maps["random"] = np.random.default_rng(args.seed).normal(size=x.shape).astype(np.float32)
    classes = logits.argmax(1)
    classifier = metrics.Classifier(converted, threads=args.threads)
    started = time.perf_counter()
    results = {}
    for name, relevance in maps.items():
        results[name] = (metrics.deletion(classifier, x, relevance, classes, step=args.step, fill=BLACK),
                         metrics.insertion(classifier, x, relevance, classes, step=args.step))
        print(f"{name}: deletion {results[name][0].auc.mean():.3f}, insertion {results[name][1].auc.mean():.3f}",
              file=sys.stderr)
    seconds["curves"] = time.perf_counter() - started
    text = table(results, args, seconds)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    picture = plot(results, out.with_suffix(".png"))
    print(f"wrote {out}" + (f" and {picture}" if picture else ""), file=sys.stderr)


if __name__ == "__main__":
    main()

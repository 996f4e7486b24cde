"""Background-bias benchmark: does Faster ISNet stop shortcut learning on real images?

Data (lrpgraph.datasets): Fashion-MNIST garments on textured canvases; in training every image carries a
small class-specific artefact at a class-specific place in the background (--bias: the probability of it).
Test sets from the Fashion-MNIST test split, the same garments and textures three times: biased (the own
class's artefact), unbiased (none), confounded (the artefact of another class). A model that learned the
shortcut is right on biased, worse on unbiased and wrong on confounded images; one that looks at the garment
scores alike on all three.

Models: the same backbone (tests/train/fashion_data.tiny_cnn: three 3x3 convolutions, BatchNorm, two max
pools, global average pooling, one dense layer) from the same initial weights, trained with
lrpgraph.train.loop.train (what `lrpgraph train` runs) with the same options and epochs as plain
(cross-entropy only), original, dual, selective and stochastic ISNet. Each trained model.onnx is converted
with the --explainer composite (default flex, the LRP-Flex heatmap the Faster ISNet variants train) explaining
the predicted class, and run in onnxruntime on the three test sets: accuracy on each; background relevance
fraction sum(|R| (1 - M)) / sum(|R|) over a test set and pointing-game score (the heatmap's arg-max lies in
the garment), both on the confounded set (and the unbiased set in the CSV); training seconds per epoch.

    python benchmarks/bias.py --quick --out docs/bias.md --figure docs/bias.png     # 2-core CPU
    python benchmarks/bias.py --out out/bias.md --figure out/bias.png --device cuda   # full, on a GPU

--quick: 4 classes (t-shirt, trouser, sandal, bag), 36 x 36 canvases, 400 training images per class,
100 test images per class (x 3 sets), widths 16/32/32, 10 epochs, batch 16, Adam lr 3e-3 (about 7 minutes
on an idle 2-core CPU). Full: 10 classes, 64 x 64 canvases, 2000 training images per class, 500 test per class,
widths 32/64/64, 30 epochs, batch 64, Adam lr 1e-3. Any option can be set on its own (see --help).
"""

import argparse
import csv
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "train"))  # the tiny CNN builder

from fashion_data import tiny_cnn

import lrpgraph
from lrpgraph import datasets, metadata, metrics

VARIANTS = ("plain", "original", "dual", "selective", "stochastic")
QUICK = {"classes": "0,1,5,8", "size": 36, "train_per_class": 400, "test_per_class": 100, "widths": "16,32",
         "epochs": 10, "batch_size": 16, "optimizer": "adam", "lr": 3e-3, "momentum": 0.9}
FULL = {"classes": "0,1,2,3,4,5,6,7,8,9", "size": 64, "train_per_class": 2000, "test_per_class": 500,
        "widths": "32,64", "epochs": 30, "batch_size": 64, "optimizer": "adam", "lr": 1e-3, "momentum": 0.9}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the 2-core CPU configuration (default: the full one)")
    p.add_argument("--work", default="out/bias", help="data and training runs go here")
    p.add_argument("--out", help="write the markdown table here")
    p.add_argument("--figure", default="out/bias/bias.png", help="PNG of example heatmaps")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--classes", help="Fashion-MNIST labels, comma-separated")
    p.add_argument("--size", type=int, help="canvas size (>= 36)")
    p.add_argument("--train-per-class", type=int)
    p.add_argument("--test-per-class", type=int)
    p.add_argument("--bias", type=float, default=1.0, help="probability of the class artefact in training")
    p.add_argument("--widths", help="backbone channels a,b (conv1 = a, conv2 = conv3 = b)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=("sgd", "adam"))
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("-P", dest="P", type=float, default=0.7, help="heatmap loss weight")
    p.add_argument("-d", dest="d", type=float, default=0.9, help="GWRP decay")
    p.add_argument("--tune-epochs", type=int, default=0, help="C1/C2 auto-tuning warm-up epochs (0: C1=1, C2=25)")
    p.add_argument("--selective-class", default="predicted", choices=("predicted", "lowest"),
                   help="the class selective ISNet explains (the reference code: lowest)")
    p.add_argument("--explainer", default="flex", help="composite of the evaluated heatmaps")
    p.add_argument("--examples", type=int, default=6, help="confounded images in the figure")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--evaluate-only", action="store_true",
                   help="no training: evaluate the runs already in WORK/runs (those with a model.onnx)")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.classes = tuple(int(c) for c in str(args.classes).split(","))
    args.widths = tuple(int(w) for w in str(args.widths).split(","))
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    return args


def make_data(args):
    root = Path(args.work) / "data"
    shutil.rmtree(root, ignore_errors=True)  # a fresh set: other options leave other class folders
    t = time.perf_counter()
    folders = datasets.write_benchmark(root, args.train_per_class, args.test_per_class, 0, args.classes, args.size,
                                       args.seed, args.bias)
    sets = {m: datasets.biased_fashion_mnist("test", m, args.test_per_class, args.classes, args.size, args.seed)
            for m in datasets.MODES}
    print(f"data: {root} ({time.perf_counter() - t:.1f} s)", flush=True)
    return folders, sets


def train_variant(args, variant, model_path, folders):
    from lrpgraph.train.config import TrainConfig
    from lrpgraph.train.loop import train

    out = Path(args.work) / "runs" / variant
    images, masks = folders["train"]
    val, val_masks = folders["test-biased"]
    config = TrainConfig(model=str(model_path), images=str(images), masks=str(masks), out=str(out), val=str(val),
                         val_masks=str(val_masks), variant=variant, epochs=args.epochs, batch_size=args.batch_size,
                         optimizer=args.optimizer, lr=args.lr, momentum=args.momentum, P=args.P, d=args.d,
                         tune_epochs=args.tune_epochs if variant != "plain" else 0, seed=args.seed, force=True,
                         selective_class=args.selective_class,
                         device=args.device, threads=args.threads, progress=False)
    result = train(config)
    seconds = [row["seconds"] for row in result["history"]]
    return out / "model.onnx", float(np.mean(seconds)), result


class Explained:
    """A trained model.onnx converted with the chosen composite, explaining its predicted class, in onnxruntime."""

    def __init__(self, path, composite, threads=None):
        import onnxruntime as ort

        model = lrpgraph.convert(onnx.load(str(path)), composite=composite, target="top")
        record = metadata.Record.from_model(model)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.image = self.session.get_inputs()[0].name
        self.outputs = [record.logits, record.relevance_outputs[0]]

    def __call__(self, images, batch=256):
        x = images[:, None].astype(np.float32) / 255.0
        logits, relevance = [], []
        for i in range(0, len(x), batch):
            a, b = self.session.run(self.outputs, {self.image: x[i:i + batch]})
            logits.append(a)
            relevance.append(b)
        return np.concatenate(logits), np.concatenate(relevance)


def pooled_background(relevance, masks):
    r = np.abs(relevance.astype(np.float64)).sum(1)
    return float((r * (masks == 0)).sum() / r.sum())


def evaluate(explained, sets):
    row, maps = {}, {}
    for mode, data in sets.items():
        logits, relevance = explained(data.images)
        row[f"acc_{mode}"] = float((logits.argmax(1) == data.labels).mean())
        row[f"bg_{mode}"] = pooled_background(relevance, data.masks)
        row[f"pg_{mode}"] = float(metrics.pointing_game(relevance, data.masks).mean())
        maps[mode] = (logits.argmax(1), relevance)
    return row, maps


def table(rows):
    head = ("| model | acc. biased | acc. unbiased | acc. confounded | confounded - biased | bg. fraction "
            "(confounded) | pointing game (confounded) | s / epoch |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for name, r in rows.items():
        lines.append(f"| {name} | {100 * r['acc_biased']:.1f} | {100 * r['acc_unbiased']:.1f} | "
                     f"{100 * r['acc_confounded']:.1f} | {100 * (r['acc_confounded'] - r['acc_biased']):+.1f} | "
                     f"{r['bg_confounded']:.3f} | {r['pg_confounded']:.3f} | {r['seconds_per_epoch']:.1f} |")
    return "\n".join(lines)


def checks(rows):
    """The acceptance criteria of the benchmark, as lines of text."""
    out = []
    plain = rows.get("plain")
    if plain:
        gap = 100 * (plain["acc_biased"] - plain["acc_confounded"])
        out.append(f"plain: confounded accuracy {gap:.1f} points below biased (want >= 20): "
                   f"{'yes' if gap >= 20 else 'NO'}")
    for name, r in rows.items():
        if name == "plain":
            continue
        gap = 100 * abs(r["acc_confounded"] - r["acc_unbiased"])
        lower = plain is None or r["bg_confounded"] < plain["bg_confounded"]
        out.append(f"{name}: |confounded - unbiased| = {gap:.1f} points (want <= 5): {'yes' if gap <= 5 else 'NO'}; "
                   f"background fraction below plain's: {'yes' if lower else 'NO'}")
    return out


def figure(path, sets, all_maps, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = sets["confounded"]
    names = datasets.BiasedSet(None, None, None, None, args.classes).names
    picks = np.arange(min(args.examples, len(data.labels)))
    rows, cols = len(all_maps) + 1, len(picks)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows), squeeze=False)
    for j, i in enumerate(picks):
        ax = axes[0, j]
        ax.imshow(data.images[i], cmap="gray", vmin=0, vmax=255)
        ax.contour(data.masks[i] > 0, levels=[0.5], colors="lime", linewidths=0.6)
        ax.set_title(f"{names[data.labels[i]].split('_')[1]}\nartefact: {names[data.artefacts[i]].split('_')[1]}",
                     fontsize=6)
        for r, (model, maps) in enumerate(all_maps.items(), start=1):
            predicted, relevance = maps["confounded"]
            heat = relevance[i].sum(0)
            bound = np.abs(heat).max() or 1.0
            ax = axes[r, j]
            ax.imshow(heat, cmap="bwr", vmin=-bound, vmax=bound)
            ax.contour(data.masks[i] > 0, levels=[0.5], colors="k", linewidths=0.4)
            ok = "ok" if predicted[i] == data.labels[i] else "wrong"
            ax.set_title(f"{names[predicted[i]].split('_')[1]} ({ok})", fontsize=6)
            if j == 0:
                ax.set_ylabel(model, fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("image", fontsize=7)
    fig.suptitle(f"{args.explainer} heatmaps of the predicted class on confounded test images", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.evaluate_only:
        folders = None
        sets = {m: datasets.biased_fashion_mnist("test", m, args.test_per_class, args.classes, args.size, args.seed)
                for m in datasets.MODES}
    else:
        folders, sets = make_data(args)
        model_path = Path(args.work) / "backbone.onnx"
        onnx.save(tiny_cnn(len(args.classes), 1, args.size, args.widths, seed=args.seed), str(model_path))
    rows, all_maps = {}, {}
    for variant in args.variants:
        t = time.perf_counter()
        if args.evaluate_only:
            trained = Path(args.work) / "runs" / variant / "model.onnx"
            if not trained.is_file():
                print(f"{variant}: no {trained}, skipped", flush=True)
                continue
            with open(trained.parent / "metrics.csv") as f:
                per_epoch = float(np.mean([float(r["seconds"]) for r in csv.DictReader(f)]))
        else:
            trained, per_epoch, _ = train_variant(args, variant, model_path, folders)
        row, maps = evaluate(Explained(trained, args.explainer, args.threads), sets)
        row["seconds_per_epoch"] = per_epoch
        rows[variant], all_maps[variant] = row, maps
        print(f"{variant}: {time.perf_counter() - t:.0f} s; " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()),
              flush=True)
    text = table(rows)
    lines = checks(rows)
    total = time.perf_counter() - start
    config = (f"classes {','.join(map(str, args.classes))}, canvas {args.size}, {args.train_per_class} training and "
              f"{args.test_per_class} test images per class, bias {args.bias}, widths {args.widths}, {args.epochs} "
              f"epochs, batch {args.batch_size}, {args.optimizer} lr {args.lr}, P {args.P}, d {args.d}, tune epochs "
              f"{args.tune_epochs}, selective class {args.selective_class}, explainer {args.explainer}, seed {args.seed}; {platform.processor() or 'cpu'}, "
              f"total {total / 60:.1f} min")
    print(text)
    print("\n".join(lines))
    print(config)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    with open(Path(args.work) / "bias.csv", "w", newline="") as f:
        writer = csv.writer(f)
        keys = list(next(iter(rows.values())).keys())
        writer.writerow(["model"] + keys)
        for name, r in rows.items():
            writer.writerow([name] + [f"{r[k]:.6g}" for k in keys])
    figure(args.figure, sets, all_maps, args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n\n" + "\n".join(f"- {line}" for line in lines) + f"\n\n{config}\n")
    print(f"wrote {args.figure}" + (f" and {args.out}" if args.out else ""))


if __name__ == "__main__":
    main()

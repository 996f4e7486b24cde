"""Background-bias benchmark: does Faster ISNet stop shortcut learning on real images?

Data (lrpgraph.datasets): Fashion-MNIST garments on textured canvases; in training every image carries a
small class-specific artefact at a class-specific place in the background (--bias: the probability of it).
Test sets from the Fashion-MNIST test split, the same garments and textures three times: biased (the own
class's artefact), unbiased (none), confounded (the artefact of another class). A model that learned the
shortcut is right on biased, worse on unbiased and wrong on confounded images; one that looks at the garment
scores alike on all three. A fourth test set comes from "another hospital" (datasets.ood_set: other background
textures, another class's artefact at places never used in training): out of distribution, as the paper means it.

Rows: the same backbone (tests/train/fashion_data.tiny_cnn: three 3x3 convolutions, BatchNorm, two max
pools, global average pooling, one dense layer) from the same initial weights, trained with
lrpgraph.train.loop.train (what `lrpgraph train` runs) with the same options: plain (cross-entropy only), oracle
(cross-entropy on the same training images without the artefact: the accuracy to reach), and the ISNet variants
original, dual, selective and stochastic; then the alternatives of bias_alternatives.py (--alternatives: Right for
the Right Reasons, a U-Net segmenter followed by the classifier, and the chance-level control untrained) with the
same budget. Each trained model.onnx (the last epoch) is converted with the
--explainer composite (default flex, the LRP-Flex heatmap the Faster ISNet variants train) explaining the
predicted class, and run in onnxruntime on the three test sets: accuracy on each; background relevance fraction
sum(|R| (1 - M)) / sum(|R|) and pointing-game score (the heatmap's arg-max lies in the garment); training
seconds per epoch. Every seed (--seeds) draws its own data, initial weights and order.

Output: the per-seed rows in --csv, the markdown (mean +- std over the seeds, per-seed accuracies, the
checks of bias_checks.py: each method against plain and the oracle, each ISNet variant's OOD accuracy against each
alternative's) built from that CSV into --out's generated block, the figure (first seed); all written again after
every seed. Exit status 1 when a check fails, 0 when all hold.

    python benchmarks/bias.py --quick --csv docs/bias.csv --out docs/bias.md --figure docs/bias.png  # 2-core CPU
    python benchmarks/bias.py --out out/bias.md --figure out/bias.png --device cuda   # full, on a GPU

--quick: 4 classes (t-shirt, trouser, sandal, bag), 36 x 36 canvases, 400 training images per class,
100 test images per class (x 3 sets), widths 16/32/32, 10 epochs, batch 16, Adam lr 3e-3 with a cosine
schedule, P 0.5 (original and stochastic ISNet 0.6), selective ISNet explaining the lowest logit, seeds 0 to 4.
Full: 10 classes, 64 x 64 canvases,
2000 training images per class, 500 test per class, widths 32/64/64, 30 epochs, batch 64, Adam lr 1e-3, P 0.7
(not run: no GPU here). Any option can be set on its own (see --help).
"""

import argparse
import csv
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bias_alternatives  # noqa: E402
from bias_alternatives import ALTERNATIVES, RRR_LAMBDA  # noqa: E402
from machine import cpu_name  # noqa: E402
from bias_report import accuracy_figure, markdown, read_csv, write_csv, write_markdown  # noqa: E402

VARIANTS = ("original", "dual", "selective", "stochastic")
QUICK = {"classes": "0,1,5,8", "size": 36, "train_per_class": 400, "test_per_class": 100, "widths": "16,32",
         "epochs": 10, "batch_size": 16, "optimizer": "adam", "lr": 3e-3, "momentum": 0.9, "schedule": "cosine",
         "P": "0.5,original=0.6,stochastic=0.6", "warm_start": "no", "selective_class": "lowest", "seeds": "0,1,2,3,4"}
FULL = {"classes": "0,1,2,3,4,5,6,7,8,9", "size": 64, "train_per_class": 2000, "test_per_class": 500,
        "widths": "32,64", "epochs": 30, "batch_size": 64, "optimizer": "adam", "lr": 1e-3, "momentum": 0.9,
        "schedule": "none", "P": 0.7, "warm_start": "no", "selective_class": "predicted", "seeds": "0,1,2"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the 2-core CPU configuration (default: the full one)")
    p.add_argument("--work", default="out/bias", help="data and training runs go here (one folder per seed)")
    p.add_argument("--csv", help="per-seed rows (default WORK/bias.csv)")
    p.add_argument("--out", help="markdown: its generated block is replaced (the whole file if it has none)")
    p.add_argument("--figure", default="out/bias/bias.png", help="PNG of example heatmaps (the first seed)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="ISNet variants, or none (plain and oracle always run)")
    p.add_argument("--alternatives", default="rrr,segmenter",
                   help="the paper's alternatives (bias_alternatives.py): rrr, segmenter, and the chance-level "
                        "control untrained; or none")
    p.add_argument("--rrr-lambda", type=float, default=RRR_LAMBDA, help="weight of RRR's input-gradient penalty")
    p.add_argument("--classes", help="Fashion-MNIST labels, comma-separated")
    p.add_argument("--size", type=int, help="canvas size (>= 36)")
    p.add_argument("--train-per-class", type=int)
    p.add_argument("--test-per-class", type=int)
    p.add_argument("--bias", type=float, default=1.0, help="probability of the class artefact in training")
    p.add_argument("--widths", help="backbone channels a,b (conv1 = a, conv2 = conv3 = b)")
    p.add_argument("--epochs", type=int, help="epochs of plain and oracle")
    p.add_argument("--isnet-epochs", type=int, help="epochs of the ISNet variants (default --epochs)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=("sgd", "adam"))
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--schedule", choices=("none", "step", "cosine"))
    p.add_argument("-P", dest="P", help="heatmap loss weight: one number, or a default and per-variant values, "
                                        "e.g. 0.5,original=0.6,stochastic=0.6")
    p.add_argument("-d", dest="d", type=float, default=0.9, help="GWRP decay")
    p.add_argument("--tune-epochs", type=int, default=0, help="C1/C2 auto-tuning warm-up epochs (0: C1=1, C2=25)")
    p.add_argument("--warm-start", choices=("yes", "no"),
                   help="ISNet variants start from the trained plain model of the same seed")
    p.add_argument("--selective-class", choices=("predicted", "lowest"), help="the class selective ISNet explains")
    p.add_argument("--explainer", default="flex", help="composite of the evaluated heatmaps")
    p.add_argument("--examples", type=int, default=6, help="confounded images in the figure")
    p.add_argument("--seeds", help="comma-separated; each seeds data, initial weights and order")
    p.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--reuse-baselines", metavar="WORK",
                   help="take data, plain and oracle of each seed from an earlier run's WORK (same data options) "
                        "instead of training them again; the ISNet variants are trained")
    p.add_argument("--evaluate-only", action="store_true",
                   help="no training: evaluate the runs already under WORK (those with a model.onnx)")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.isnet_epochs = args.isnet_epochs or args.epochs
    args.P_of = loss_weights(str(args.P))
    args.warm_start = args.warm_start == "yes"
    args.classes = tuple(int(c) for c in str(args.classes).split(","))
    args.widths = tuple(int(w) for w in str(args.widths).split(","))
    args.seeds = [int(s) for s in str(args.seeds).split(",")]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip() not in ("", "none", "plain", "oracle")]
    args.alternatives = [a.strip() for a in args.alternatives.split(",") if a.strip() not in ("", "none")]
    unknown = [a for a in args.alternatives if a not in ALTERNATIVES]
    if unknown:
        p.error(f"--alternatives {unknown[0]}: choose from {', '.join(ALTERNATIVES)}")
    args.csv = args.csv or str(Path(args.work) / "bias.csv")
    return args


def test_sets(args, seed):
    sets = {m: datasets.biased_fashion_mnist("test", m, args.test_per_class, args.classes, args.size, seed)
            for m in datasets.MODES}
    sets["ood"] = datasets.ood_set(args.test_per_class, args.classes, args.size, seed)
    return sets


def make_data(args, seed, root):
    """The benchmark's folders for one seed, plus train-oracle/: the same training images without the artefact."""
    shutil.rmtree(root, ignore_errors=True)  # a fresh set: other options leave other class folders
    t = time.perf_counter()
    folders = datasets.write_benchmark(root, args.train_per_class, args.test_per_class, 0, args.classes, args.size,
                                       seed, args.bias)
    clean = datasets.biased_fashion_mnist("train", "biased", args.train_per_class, args.classes, args.size, seed, 0.0)
    folders["train-oracle"] = datasets.write_folders(clean, root / "train-oracle")
    print(f"data: {root} ({time.perf_counter() - t:.1f} s)", flush=True)
    return folders


def loss_weights(spec):
    """{variant or None (the default): P} from '0.5' or '0.5,original=0.6,stochastic=0.6'."""
    weights = {}
    for part in spec.split(","):
        name, _, value = part.rpartition("=")
        if name and name.strip() not in VARIANTS:
            sys.exit(f"bias.py: -P names '{name.strip()}', not an ISNet variant ({', '.join(VARIANTS)})")
        weights[name.strip() or None] = float(value)
    if None not in weights:
        sys.exit("bias.py: -P needs a default value besides the per-variant ones, e.g. 0.5,original=0.6")
    return weights


def train_row(args, seed, row, start_model, train_folders, val_folders, out):
    """Train one row with lrpgraph.train: plain, oracle and the segmenter's classifier with cross-entropy, an ISNet
    variant with its heatmap loss, on train_folders (images, masks); returns (model.onnx, s / epoch)."""
    from lrpgraph.train.config import TrainConfig
    from lrpgraph.train.loop import train

    isnet = row in VARIANTS
    images, masks = train_folders
    val, val_masks = val_folders  # monitoring only (metrics.csv); the last epoch is evaluated
    config = TrainConfig(model=str(start_model), images=str(images), masks=str(masks), out=str(out), val=str(val),
                         val_masks=str(val_masks), variant=row if isnet else "plain",
                         epochs=args.epochs if row in ("plain", "oracle") else args.isnet_epochs,
                         batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
                         schedule=args.schedule, P=args.P_of.get(row, args.P_of[None]), d=args.d,
                         tune_epochs=args.tune_epochs if isnet else 0, seed=seed, force=True,
                         selective_class=args.selective_class, device=args.device, threads=args.threads,
                         progress=False)
    result = train(config)
    return out / "model.onnx", float(np.mean([r["seconds"] for r in result["history"]]))


def train_any(args, seed, name, work, base, folders, out):
    """Train row `name` of one seed (from the plain model with --warm-start, else from backbone.onnx)."""
    start = (base or work) / "backbone.onnx"
    if name in ALTERNATIVES:
        def classifier(images, masks, where):
            return train_row(args, seed, name, start, (images, masks), folders["test-unbiased"], where)

        trained, per_epoch = bias_alternatives.train(name, args, seed, start, out, classifier)
        (out / "seconds_per_epoch.txt").write_text(f"{per_epoch}\n")
        return trained, per_epoch
    if args.warm_start and name not in ("plain", "oracle"):
        start = (base or work) / "runs" / "plain" / "model.onnx"
    train_folders = folders["train-oracle" if name == "oracle" else "train"]
    return train_row(args, seed, name, start, train_folders, folders["test-unbiased"], out)


def seconds_per_epoch(out):
    """The mean training seconds per epoch a finished run recorded."""
    if (out / "seconds_per_epoch.txt").is_file():
        return float((out / "seconds_per_epoch.txt").read_text())
    with open(out / "metrics.csv") as f:
        return float(np.mean([float(r["seconds"]) for r in csv.DictReader(f)]))


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
    """Accuracy in % on each test set, background fraction and pointing game of the evaluated heatmaps."""
    row, maps = {}, {}
    for mode, data in sets.items():
        logits, relevance = explained(data.images)
        row[f"acc_{mode}"] = 100 * float((logits.argmax(1) == data.labels).mean())
        row[f"bg_{mode}"] = pooled_background(relevance, data.masks)
        row[f"pg_{mode}"] = float(metrics.pointing_game(relevance, data.masks).mean())
        maps[mode] = (logits.argmax(1), relevance)
    return row, maps


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


def run_seed(args, seed):
    """Train (unless --evaluate-only) and evaluate every row for one seed; returns (CSV rows, {row: maps}, sets)."""
    work = Path(args.work) / f"seed{seed}"
    base = Path(args.reuse_baselines) / f"seed{seed}" if args.reuse_baselines else None
    sets = test_sets(args, seed)
    if base is not None:
        folders = {name: (base / "data" / name / "images", base / "data" / name / "masks")
                   for name in ("train", "train-oracle", *(f"test-{m}" for m in datasets.MODES))}
    elif not args.evaluate_only:
        folders = make_data(args, seed, work / "data")
        backbone = work / "backbone.onnx"
        onnx.save(tiny_cnn(len(args.classes), 1, args.size, args.widths, seed=seed), str(backbone))
    rows, all_maps = [], {}
    for name in ("plain", "oracle", *args.variants, *args.alternatives):
        t = time.perf_counter()
        out = work / "runs" / name
        if base is not None and name in ("plain", "oracle"):
            out = base / "runs" / name
        if args.evaluate_only or out.parent.parent == base:
            if not (out / "model.onnx").is_file():
                print(f"seed {seed} {name}: no {out / 'model.onnx'}, skipped", flush=True)
                continue
            trained, per_epoch = out / "model.onnx", seconds_per_epoch(out)
        else:
            trained, per_epoch = train_any(args, seed, name, work, base, folders, out)
        row, maps = evaluate(Explained(trained, args.explainer, args.threads), sets)
        rows.append({"seed": seed, "model": name, **row, "seconds_per_epoch": per_epoch})
        all_maps[name] = maps
        print(f"seed {seed} {name}: {time.perf_counter() - t:.0f} s; " + ", ".join(
            f"{k} {row[k]:.1f}" for k in ("acc_biased", "acc_unbiased", "acc_confounded")) +
            f", bg {row['bg_confounded']:.3f}", flush=True)
    return rows, all_maps, sets




def accuracy_path(figure_path):
    """Where the accuracy bars go: beside the heatmap figure, FIGURE_accuracy.png."""
    path = Path(figure_path)
    return path.with_name(f"{path.stem}_accuracy.png")


def report(args, rows, first, minutes, done):
    """Write the CSV, the markdown (printed, and into --out) and the figure for the seeds done; returns whether every
    check held. Called after every seed, so a run cut short leaves its finished seeds reported."""
    left = [k for k in args.seeds if k not in done]
    config = (f"Configuration: classes {','.join(map(str, args.classes))}, canvas {args.size}, {args.train_per_class} "
              f"training and {args.test_per_class} test images per class, bias {args.bias}, widths {args.widths}, "
              f"{args.epochs} epochs (ISNet {args.isnet_epochs}), batch {args.batch_size}, {args.optimizer} lr "
              f"{args.lr}, schedule {args.schedule}, P {args.P}, d {args.d}, tune epochs {args.tune_epochs}, warm "
              f"start {'yes' if args.warm_start else 'no'}, selective class {args.selective_class}, explainer "
              f"{args.explainer}, alternatives {','.join(args.alternatives) or 'none'} (RRR lambda "
              f"{args.rrr_lambda:g}), seeds {','.join(map(str, done))}" +
              (f" (seeds {','.join(map(str, left))} not run yet)" if left else "") +
              f"; {cpu_name()}, torch threads {args.threads or 'default'}; total {minutes:.1f} min" +
              (" (evaluation only)" if args.evaluate_only else "") + ".")
    write_csv(args.csv, rows)
    block, held = markdown(read_csv(args.csv), config)
    print(block, flush=True)
    figure(args.figure, first[1], first[0], args)
    accuracy_figure(read_csv(args.csv), accuracy_path(args.figure), len(args.classes))
    if args.out:
        write_markdown(args.out, block)
    print(f"wrote {args.csv}, {args.figure}, {accuracy_path(args.figure)}" + (f" and {args.out}" if args.out else ""),
          flush=True)
    return held


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows, first, done, held = [], None, [], False
    for seed in args.seeds:
        mine, maps, sets = run_seed(args, seed)
        rows += mine
        first = first or (maps, sets)
        done.append(seed)
        if rows:
            held = report(args, rows, first, (time.perf_counter() - start) / 60, done)
    if not rows:
        print(f"bias.py: nothing to report under {args.work}", file=sys.stderr)
        return 2
    if not held:
        print("bias.py: an acceptance check failed (see above)", file=sys.stderr)
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())

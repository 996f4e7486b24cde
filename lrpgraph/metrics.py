"""Heatmap evaluation metrics (REFERENCE.md section 8), with numpy and ONNX Runtime only (no torch).

Perturbation metrics (RISE, Petsiuk et al. 2018). Pixels are ranked by their relevance summed over
channels, most relevant first (ties: the lower flat index first). Deletion starts from the image and
replaces `step` pixels at a time by a fill value (0, or e.g. a black pixel of a normalised input);
insertion starts from a blurred copy (Gaussian, kernel 11, sigma 5, zero padding) and puts the image's
pixels back in the same order. Both track the softmax probability of the explained class, from the
clean image to the last step; the AUC is the trapezoid rule over the fraction of pixels changed, in
[0, 1] (the last step may change fewer than `step` pixels: the fractions say so). A good heatmap gives
a low deletion AUC and a high insertion AUC. All perturbed copies of an image go to the model in one
or a few batched ONNX Runtime calls of the plain model part (a converted model is cut down to the nodes
its logits need, so no heatmap is computed for them).

Mask metrics: background relevance fraction sum(|R| (1 - M)) / sum(|R|); the pointing game (is the
arg-max of the channel-summed heatmap inside the mask). Conservation error: |sum R - s| / |s| for the
seed sum s (the explained logit for LRP targets top and index).

`evaluate` runs all of this over image files (the `lrpgraph evaluate` command).
"""

import csv
import io
import math
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from lrpgraph import metadata
from lrpgraph.errors import LrpgraphError, NotConvertedError

METRICS = ("deletion", "insertion", "background", "pointing", "conservation")
MASK_METRICS = ("background", "pointing")
BLUR_SIZE, BLUR_SIGMA = 11, 5.0
DEFAULT_BATCH_SIZE = 256
KNOWN_INPUTS = ("target", "relevance_seed", "noise_seed")


# ---- the plain model ---------------------------------------------------------------------------

def _roles(model):
    """(image input, logits tensor) of a plain or converted classifier."""
    config = metadata.read(model).get(metadata.CONFIG) or {}
    inits = {i.name for i in model.graph.initializer}
    image = config.get("image_input") or next((i.name for i in model.graph.input if i.name not in inits), None)
    logits = config.get("logits")
    if not logits:
        output = model.graph.output[0].name
        producer = next((n for n in model.graph.node if output in n.output), None)
        logits = producer.input[0] if producer is not None and producer.op_type in ("Softmax", "LogSoftmax") else output
    return image, logits


def plain_model(model):
    """The part of a (converted) classifier that computes its logits: image in, `logits` out (pre-softmax).
    The nodes that only the heatmaps need are dropped, so running it costs one forward pass."""
    image, logits = _roles(model)
    needed, keep = {logits}, []
    for node in reversed(list(model.graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(t for t in node.input if t)
    inputs = [i for i in model.graph.input if i.name in needed]
    inits = {i.name for i in model.graph.initializer}
    extra = [i.name for i in inputs if i.name != image and i.name not in inits]
    if image not in needed or extra:
        raise LrpgraphError(f"the logits '{logits}' must depend on the image input '{image}' alone"
                            + (f" (they also read {', '.join(extra)})" if extra else ""))
    out = onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None)
    graph = onnx.helper.make_graph(keep[::-1], "plain", inputs, [out],
                                   [i for i in model.graph.initializer if i.name in needed])
    graph.value_info.extend(v for v in model.graph.value_info if v.name in needed and v.name != logits)
    plain = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    return plain


def _load(model):
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise LrpgraphError(f"model file {path} does not exist")
    try:
        return onnx.load(path)
    except Exception as error:  # protobuf raises its own types
        raise LrpgraphError(f"{path}: not a readable ONNX model ({type(error).__name__})") from None


def _session(model, provider, threads):
    from lrpgraph.runtime.session import choose_providers

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, sess_options=options, providers=choose_providers(provider))


def softmax(logits):
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class Classifier:
    """The plain model part of an ONNX classifier (path, ModelProto or bytes; plain or converted) in ONNX
    Runtime: .logits(images) and .probabilities(images) for images [N, C, H, W], in batches."""

    def __init__(self, model, provider=None, threads=None, batch_size=DEFAULT_BATCH_SIZE):
        self.model = plain_model(_load(model))
        self.session = _session(self.model, provider, threads)
        self.image_input = self.session.get_inputs()[0].name
        self.batch_size = int(batch_size)
        self.calls = 0

    def logits(self, images):
        images = np.ascontiguousarray(images, dtype=np.float32)
        parts = []
        for start in range(0, len(images), self.batch_size):
            parts.append(self.session.run(None, {self.image_input: images[start:start + self.batch_size]})[0])
            self.calls += 1
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def probabilities(self, images):
        return softmax(self.logits(images))


# ---- perturbation curves -----------------------------------------------------------------------

class Curves:
    """fractions [K + 1] of pixels changed, probabilities [N, K + 1] of the explained classes, auc [N]."""

    def __init__(self, kind, fractions, probabilities, classes):
        self.kind, self.fractions, self.probabilities, self.classes = kind, fractions, probabilities, classes
        self.auc = np.array([auc(fractions, p) for p in probabilities])

    def __repr__(self):
        return (f"Curves({self.kind}, {len(self.auc)} images, {len(self.fractions)} points, "
                f"mean AUC {self.auc.mean():.4f})")


def auc(fractions, values):
    """Trapezoid rule over the fractions (x in [0, 1])."""
    x, y = np.asarray(fractions, np.float64), np.asarray(values, np.float64)
    return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())


def default_step(height, width):
    """About 100 steps per curve: round(H * W / 100) pixels per step (RISE used 224 at 224 x 224)."""
    return max(1, round(height * width / 100))


def pixel_order(relevance):
    """Flat pixel indices [N, H * W], most relevant first (relevance summed over channels; stable)."""
    heat = _heat(relevance)
    return np.argsort(-heat.reshape(len(heat), -1), axis=1, kind="stable")


def _heat(relevance):
    """[N, H, W] from relevance [N, C, H, W] (summed over channels) or [N, H, W]."""
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim == 4:
        return r.sum(axis=1)
    if r.ndim == 3:
        return r
    raise LrpgraphError(f"relevance must be [N, C, H, W] or [N, H, W], got shape {list(r.shape)}")


def gaussian_kernel(size=BLUR_SIZE, sigma=BLUR_SIGMA):
    t = np.arange(size) - size // 2
    g = np.exp(-t**2 / (2 * sigma**2))
    return g / g.sum()  # the 2-D kernel is the outer product: separable, sums to 1


def blur(images, size=BLUR_SIZE, sigma=BLUR_SIGMA):
    """Gaussian blur of each channel, zero padding (RISE's insertion start), float32 [N, C, H, W]."""
    x = np.asarray(images, dtype=np.float64)
    g, pad = gaussian_kernel(size, sigma), size // 2
    h, w = x.shape[-2:]
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(pad, pad), (pad, pad)])
    rows = sum(g[k] * padded[..., k:k + h, :] for k in range(size))
    return sum(g[k] * rows[..., :, k:k + w] for k in range(size)).astype(np.float32)


def _steps(count, step):
    """Number of pixels changed at each point: 0, step, 2 step, ..., count."""
    step = int(step)
    if step < 1:
        raise LrpgraphError(f"step must be a positive number of pixels, got {step}")
    return np.append(np.arange(0, count, step), count)


def perturbation_curves(classifier, start, finish, relevance, classes, step=None, kind="perturbation"):
    """Move each image from start to finish, `step` pixels at a time, most relevant first; track the
    probability of classes [N]. start, finish: [N, C, H, W] (finish may broadcast). Returns Curves."""
    start = np.asarray(start, dtype=np.float32)
    n, c, h, w = start.shape
    finish = np.broadcast_to(np.asarray(finish, dtype=np.float32), start.shape)
    order = pixel_order(relevance)
    if order.shape != (n, h * w):
        raise LrpgraphError(f"relevance of shape {list(np.shape(relevance))} does not match images {list(start.shape)}")
    counts = _steps(h * w, default_step(h, w) if step is None else step)
    points = len(counts)
    classes = np.asarray(classes, dtype=np.int64)
    probabilities = np.zeros((n, points))
    group = max(1, classifier.batch_size // points)  # images whose perturbed copies share a batch
    for first in range(0, n, group):
        rows = range(first, min(first + group, n))
        batch = np.empty((len(rows), points, c, h, w), np.float32)
        for j, i in enumerate(rows):
            rank = np.empty(h * w, np.int64)
            rank[order[i]] = np.arange(h * w)
            changed = (rank[None, :] < counts[:, None]).reshape(points, 1, h, w)
            batch[j] = np.where(changed, finish[i][None], start[i][None])
        p = classifier.probabilities(batch.reshape(-1, c, h, w)).reshape(len(rows), points, -1)
        probabilities[first:first + len(rows)] = p[np.arange(len(rows)), :, classes[rows.start:rows.stop]]
    return Curves(kind, counts / (h * w), probabilities, classes)


def _classes(classifier, images, classes):
    if classes is None:
        return classifier.logits(images).argmax(axis=1)
    return np.broadcast_to(np.asarray(classes, dtype=np.int64), (len(images),))


def deletion(classifier, images, relevance, classes=None, step=None, fill=0.0):
    """Deletion curves (lower AUC is better): the most relevant pixels are replaced by fill first.
    classes: explained class per image (default: the predicted one); fill broadcasts to the images
    (a number, per channel [C, 1, 1], or whole images)."""
    images = np.asarray(images, dtype=np.float32)
    return perturbation_curves(classifier, images, fill, relevance, _classes(classifier, images, classes), step,
                               "deletion")


def insertion(classifier, images, relevance, classes=None, step=None, blurred=None):
    """Insertion curves (higher AUC is better): from a blurred copy (default blur()), the most relevant
    pixels of the image are put back first."""
    images = np.asarray(images, dtype=np.float32)
    start = blur(images) if blurred is None else blurred
    return perturbation_curves(classifier, start, images, relevance, _classes(classifier, images, classes), step,
                               "insertion")


# ---- mask metrics and conservation -------------------------------------------------------------

def _masks(masks, heat):
    m = np.asarray(masks)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.shape != heat.shape:
        raise LrpgraphError(f"masks of shape {list(np.shape(masks))} do not match heatmaps {list(heat.shape)}")
    return m != 0


def background_fraction(relevance, masks):
    """sum(|R| (1 - M)) / sum(|R|) per image (|R| summed over channels); NaN for an all-zero heatmap."""
    r = np.abs(np.asarray(relevance, dtype=np.float64))
    heat = r.sum(axis=1) if r.ndim == 4 else r
    m = _masks(masks, heat)
    total = heat.reshape(len(heat), -1).sum(1)
    outside = (heat * ~m).reshape(len(heat), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, outside / total, np.nan)


def pointing_game(relevance, masks):
    """True where the arg-max of the channel-summed heatmap lies inside the mask."""
    heat = _heat(relevance)
    m = _masks(masks, heat).reshape(len(heat), -1)
    peak = heat.reshape(len(heat), -1).argmax(axis=1)
    return m[np.arange(len(heat)), peak]


def conservation_error(relevance, seed_sums):
    """|sum R - s| / |s| per image."""
    r = np.asarray(relevance, dtype=np.float64)
    total = r.reshape(len(r), -1).sum(1)
    s = np.asarray(seed_sums, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(total - s) / np.abs(s)


# ---- evaluating a converted model on image files -----------------------------------------------

def parse_metrics(text):
    chosen = [m.strip().lower() for m in str(text).split(",") if m.strip()]
    unknown = [m for m in chosen if m not in METRICS]
    if unknown or not chosen:
        raise LrpgraphError(f"--metrics: unknown metric {', '.join(unknown) or repr(text)}; "
                            f"choose from {','.join(METRICS)}")
    return list(dict.fromkeys(chosen))


class HeatmapModel:
    """A converted model in ONNX Runtime: every heatmap output for a batch, explaining the predicted
    class (fed through `target` / `relevance_seed` where the model takes them; `noise_seed` is fed seed)."""

    def __init__(self, model, provider=None, threads=None, seed=0):
        self.proto = _load(model)
        meta = metadata.read(self.proto)
        if metadata.CONFIG not in meta:
            raise NotConvertedError("the model has no lrpgraph metadata: evaluate a converted model "
                                    "(run `lrpgraph convert` first)")
        self.config, self.preprocess = meta[metadata.CONFIG], meta.get(metadata.PREPROCESS)
        self.outputs = list(self.config.get("relevance_outputs") or ["relevance"])
        self.gradient_seed = self.config.get("gradient_seed") or {}
        self.session = _session(self.proto, provider, threads)
        self.image_input = self.config.get("image_input") or self.session.get_inputs()[0].name
        names = {i.name for i in self.session.get_inputs()}
        odd = sorted(names - {self.image_input, *KNOWN_INPUTS})
        if odd:
            raise LrpgraphError(f"the model takes input(s) {', '.join(odd)} that evaluate cannot feed; convert it "
                                "without them (e.g. IG with --baseline zero or blur)")
        self.inputs, self.seed = names, int(seed)
        shape = next(i for i in self.proto.graph.input if i.name == self.image_input).type.tensor_type.shape
        dims = [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
        if len(dims) != 4:
            raise LrpgraphError(f"the image input {self.image_input} must be [N, C, H, W], got {len(dims)} dims")
        self.input_shape = tuple(dims[1:])

    def heatmaps(self, images, classes, logits):
        """{output: relevance [N, C, H, W]} explaining classes [N] (logits [N, K] give LRP seeds)."""
        feeds = {self.image_input: np.ascontiguousarray(images, dtype=np.float32)}
        if "target" in self.inputs:
            feeds["target"] = classes.astype(np.int64)
        if "noise_seed" in self.inputs:
            feeds["noise_seed"] = np.array([self.seed], np.int64)
        if "relevance_seed" not in self.inputs:
            return dict(zip(self.outputs, self.session.run(self.outputs, feeds)))
        onehot = np.eye(logits.shape[1], dtype=np.float32)[classes]
        out = {}
        for gradient in (True, False):  # one seed input: a one-hot gradient or logit x one-hot relevance
            names = [o for o in self.outputs if bool(self.gradient_seed.get(o, False)) == gradient]
            if names:
                feeds["relevance_seed"] = onehot if gradient else onehot * logits.astype(np.float32)
                out.update(zip(names, self.session.run(names, feeds)))
        return out

    def seed_sums(self, output, logits, classes):
        """The seed sum that LRP relevance conserves; NaN for gradient-family outputs."""
        if self.gradient_seed.get(output, False):
            return np.full(len(classes), np.nan)
        if self.config.get("target") == "all":
            return logits.astype(np.float64).sum(1)
        return logits[np.arange(len(classes)), classes].astype(np.float64)

    def black(self):
        """The model input value of a black pixel, per channel [C, 1, 1] (0 without preprocess metadata)."""
        from PIL import Image

        from lrpgraph.runtime.images import image_mode, to_array

        mode = image_mode(self.preprocess, self.input_shape)
        return to_array(Image.new(mode, (1, 1)), self.preprocess)


def _load_mask(path, preprocess, input_shape):
    """A boolean H x W mask from a PNG (nonzero = foreground), resized and cropped as the images are."""
    from PIL import Image

    from lrpgraph.runtime.images import open_image, resize_and_crop

    binary = Image.fromarray(((np.asarray(open_image(path, "L")) > 0) * 255).astype(np.uint8))
    mask = np.asarray(resize_and_crop(binary, preprocess, input_shape)) >= 128
    if mask.shape != tuple(input_shape[1:]):
        raise LrpgraphError(f"mask {path} gives {mask.shape[0]}x{mask.shape[1]}, not the model's "
                            f"{input_shape[1]}x{input_shape[2]}")
    return mask


def _mask_path(masks_dir, relative):
    for candidate in (Path(masks_dir) / relative, (Path(masks_dir) / relative).with_suffix(".png")):
        if candidate.is_file():
            return candidate
    raise LrpgraphError(f"no mask for {relative} in {masks_dir} (expected {Path(masks_dir) / relative} or "
                        "the same name with .png)")


def evaluate(model, paths, metrics=("deletion", "insertion"), masks_dir=None, out_dir=None, step=None, fill="black",
             batch_size=16, provider=None, threads=None, seed=0, plots=True):
    """Evaluate every heatmap output of a converted model on image files (folders walked recursively).

    masks_dir holds a mask per image under the same relative name (PNG; nonzero = foreground), needed for
    background and pointing. fill: 'black' (a black pixel in the model's input space) or a number.
    Returns {"rows": [per image and output: dict], "summary": {output: {metric: mean}}, "curves": n written,
    "notes": [...]}; with out_dir also writes metrics.csv and, with matplotlib, curves/<image>.curves.png."""
    from lrpgraph.runtime.explain import output_bases
    from lrpgraph.runtime.images import find_images, load_image

    metrics = parse_metrics(metrics) if isinstance(metrics, str) else list(metrics)
    if any(m not in METRICS for m in metrics):
        raise LrpgraphError(f"unknown metric in {metrics}; choose from {', '.join(METRICS)}")
    needs_masks = [m for m in metrics if m in MASK_METRICS]
    if needs_masks and masks_dir is None:
        raise LrpgraphError(f"metric(s) {', '.join(needs_masks)} need --masks DIR (a mask per image)")
    if masks_dir is not None and not Path(masks_dir).is_dir():
        raise LrpgraphError(f"--masks {masks_dir} is not a folder")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LrpgraphError(f"batch size must be a positive integer, got {batch_size!r}")
    if step is not None and (not isinstance(step, int) or step < 1):
        raise LrpgraphError(f"step must be a positive number of pixels, got {step!r}")
    heatmaps = HeatmapModel(model, provider, threads, seed)
    classifier = Classifier(heatmaps.proto, provider, threads)
    fill_value = heatmaps.black() if str(fill).lower() == "black" else _number(fill, "fill")
    found = find_images(paths, exclude=out_dir)
    if not found:
        raise LrpgraphError(f"no image files found in {', '.join(map(str, paths))}")
    mask_files = [_mask_path(masks_dir, rel) for _, rel in found] if needs_masks else None
    bases = output_bases(found)
    plot = _plotter(out_dir) if plots and out_dir is not None and {"deletion", "insertion"} & set(metrics) else None
    notes = ["matplotlib is not installed: no curve plots written"] if plot is False else []
    rows, written = [], 0
    for first in range(0, len(found), batch_size):
        chunk = range(first, min(first + batch_size, len(found)))
        images = np.stack([load_image(found[i][0], heatmaps.preprocess, heatmaps.input_shape) for i in chunk])
        logits = classifier.logits(images)
        classes = logits.argmax(axis=1)
        probs = softmax(logits)
        maps = heatmaps.heatmaps(images, classes, logits)
        masks = (np.stack([_load_mask(mask_files[i], heatmaps.preprocess, heatmaps.input_shape) for i in chunk])
                 if mask_files else None)
        curves = {}
        for output, relevance in maps.items():
            values = {}
            if "deletion" in metrics:
                curves[(output, "deletion")] = c = deletion(classifier, images, relevance, classes, step, fill_value)
                values["deletion_auc"] = c.auc
            if "insertion" in metrics:
                curves[(output, "insertion")] = c = insertion(classifier, images, relevance, classes, step)
                values["insertion_auc"] = c.auc
            if "background" in metrics:
                values["background_fraction"] = background_fraction(relevance, masks)
            if "pointing" in metrics:
                values["pointing_hit"] = pointing_game(relevance, masks).astype(np.float64)
            if "conservation" in metrics:
                values["conservation_error"] = conservation_error(relevance, heatmaps.seed_sums(output, logits,
                                                                                                 classes))
            for j, i in enumerate(chunk):
                rows.append({"file": str(found[i][0]), "output": output, "class": int(classes[j]),
                             "probability": float(probs[j, classes[j]]),
                             **{k: float(v[j]) for k, v in values.items()}})
        if plot:
            for j, i in enumerate(chunk):
                plot(bases[i], {key: (c.fractions, c.probabilities[j]) for key, c in curves.items()})
                written += 1
    summary = summarize(rows, heatmaps.outputs)
    if out_dir is not None:
        _write_csv(Path(out_dir) / "metrics.csv", rows)
    return {"rows": rows, "summary": summary, "curves": written, "notes": notes, "images": len(found)}


def _number(value, what):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise LrpgraphError(f"--{what} must be 'black' or a number, got {value!r}") from None


def summarize(rows, outputs):
    """{output: {column: mean over images (NaN-aware)}}."""
    summary = {}
    for output in outputs:
        mine = [r for r in rows if r["output"] == output]
        columns = [k for k in (mine[0] if mine else {}) if k not in ("file", "output", "class")]
        summary[output] = {k: float(np.nanmean([r[k] for r in mine])) if not all(math.isnan(r[k]) for r in mine)
                           else float("nan") for k in columns}
    return summary


def format_table(summary, images=None):
    """A markdown table: one row per heatmap output, the mean of each metric."""
    columns = list(next(iter(summary.values()), {}))
    lines = ["| output | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for output, values in summary.items():
        cells = ["n/a" if math.isnan(values[c]) else f"{values[c]:.4f}" for c in columns]
        lines.append(f"| {output} | " + " | ".join(cells) + " |")
    if images is not None:
        lines.append(f"({images} images)")
    return "\n".join(lines)


def _write_csv(path, rows):
    from lrpgraph.runtime.render import save_text

    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    columns = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    save_text(path, buffer.getvalue())


def _plotter(out_dir):
    """A function (base name, {(output, kind): (fractions, probabilities)}) -> writes a PNG; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False

    def plot(base, curves):
        path = Path(out_dir) / "curves" / f"{base}.curves.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        kinds = [k for k in ("deletion", "insertion") if any(kind == k for _, kind in curves)]
        fig, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.4), squeeze=False)
        for ax, kind in zip(axes[0], kinds):
            for (output, k), (x, y) in curves.items():
                if k == kind:
                    ax.plot(x, y, label=f"{output} (AUC {auc(x, y):.3f})")
            ax.set(title=kind, xlabel="fraction of pixels", ylabel="probability of the class", xlim=(0, 1),
                   ylim=(0, 1.02))
            ax.legend(fontsize=7)
        fig.suptitle(str(base), fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)

    return plot

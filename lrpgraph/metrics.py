"""Heatmap evaluation metrics (defined in docs/methods.md, Metrics), with numpy and ONNX Runtime only (no torch).

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

lrpgraph.runtime.evaluate runs all of this over image files (the `lrpgraph evaluate` command).
"""


import numpy as np
import onnx

from lrpgraph import graph, metadata
from lrpgraph.catalog import is_kind
from lrpgraph.errors import LrpgraphError
from lrpgraph.ort import Runner

BLUR_SIZE, BLUR_SIGMA = 11, 5.0
DEFAULT_BATCH_SIZE = 256


# ---- the plain model ---------------------------------------------------------------------------

def _roles(model):
    """(image input, logits tensor) of a plain or converted classifier."""
    record = metadata.Record.from_model(model) or metadata.Record()
    inits = {i.name for i in model.graph.initializer}
    image = record.image_input or next((i.name for i in model.graph.input if i.name not in inits), None)
    logits = record.logits
    if not logits:
        output = model.graph.output[0].name
        producer = next((n for n in model.graph.node if output in n.output), None)
        logits = producer.input[0] if producer is not None and is_kind(producer, "head") else output
    return image, logits


def plain_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The part of a (converted) classifier that computes its logits: image in, `logits` out (pre-softmax).
    The nodes that only the heatmaps need are dropped, so running it costs one forward pass."""
    image, logits = _roles(model)
    keep = graph.needed_nodes(model.graph.node, [logits])
    needed = {logits} | {t for node in keep for t in node.input if t}
    inputs = [i for i in model.graph.input if i.name in needed]
    inits = {i.name for i in model.graph.initializer}
    extra = [i.name for i in inputs if i.name != image and i.name not in inits]
    if image not in needed or extra:
        raise LrpgraphError(f"the logits '{logits}' must depend on the image input '{image}' alone"
                            + (f" (they also read {', '.join(extra)})" if extra else ""))
    out = onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None)
    cut = onnx.helper.make_graph(keep, "plain", inputs, [out], [i for i in model.graph.initializer if i.name in needed])
    cut.value_info.extend(v for v in model.graph.value_info if v.name in needed and v.name != logits)
    plain = onnx.helper.make_model(cut, opset_imports=model.opset_import, ir_version=model.ir_version)
    return plain


def open_session(model: onnx.ModelProto | bytes, provider: str | None = None, threads: int | None = None,
                 noise_seed: int = 0) -> Runner:
    """An lrpgraph.ort.Runner of a ModelProto (or bytes) on the chosen provider."""
    from lrpgraph.runtime.providers import choose_providers

    return Runner(model, choose_providers(provider), threads, noise_seed=noise_seed)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class Classifier:
    """The plain model part of an ONNX classifier (path, ModelProto or bytes; plain or converted) in ONNX
    Runtime: .logits(images) and .probabilities(images) for images [N, C, H, W], in batches."""

    def __init__(self, model: object, provider: str | None = None, threads: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        self.model = plain_model(graph.read(model))
        self.runner = open_session(self.model, provider, threads)
        self.image_input = next(iter(self.runner.inputs))
        self.batch_size = int(batch_size)
        self.calls = 0

    def logits(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        parts = []
        for start in range(0, len(images), self.batch_size):
            feeds = self.runner.feeds(self.image_input, images[start:start + self.batch_size])
            parts.append(self.runner.run(None, feeds)[0])
            self.calls += 1
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return softmax(self.logits(images))


# ---- perturbation curves -----------------------------------------------------------------------

class Curves:
    """fractions [K + 1] of pixels changed, probabilities [N, K + 1] of the explained classes, auc [N]."""

    def __init__(self, kind: str, fractions: np.ndarray, probabilities: np.ndarray, classes: np.ndarray):
        self.kind, self.fractions, self.probabilities, self.classes = kind, fractions, probabilities, classes
        self.auc = np.array([auc(fractions, p) for p in probabilities])

    def __repr__(self):
        return (f"Curves({self.kind}, {len(self.auc)} images, {len(self.fractions)} points, "
                f"mean AUC {self.auc.mean():.4f})")


def auc(fractions: np.ndarray, values: np.ndarray) -> float:
    """Trapezoid rule over the fractions (x in [0, 1])."""
    x, y = np.asarray(fractions, np.float64), np.asarray(values, np.float64)
    return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())


def default_step(height: int, width: int) -> int:
    """About 100 steps per curve: round(H * W / 100) pixels per step (RISE used 224 at 224 x 224)."""
    return max(1, round(height * width / 100))


def pixel_order(relevance: np.ndarray) -> np.ndarray:
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


def gaussian_kernel(size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> np.ndarray:
    t = np.arange(size) - size // 2
    g = np.exp(-t**2 / (2 * sigma**2))
    return g / g.sum()  # the 2-D kernel is the outer product: separable, sums to 1


def blur(images: np.ndarray, size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> np.ndarray:
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


def perturbation_curves(classifier: Classifier, start: np.ndarray, finish: np.ndarray, relevance: np.ndarray,
                        classes: np.ndarray | None, step: int | None = None, kind: str = "perturbation") -> Curves:
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


def deletion(classifier: Classifier, images: np.ndarray, relevance: np.ndarray, classes: np.ndarray | None = None,
             step: int | None = None, fill: float | np.ndarray = 0.0) -> Curves:
    """Deletion curves (lower AUC is better): the most relevant pixels are replaced by fill first.
    classes: explained class per image (default: the predicted one); fill broadcasts to the images
    (a number, per channel [C, 1, 1], or whole images)."""
    images = np.asarray(images, dtype=np.float32)
    return perturbation_curves(classifier, images, fill, relevance, _classes(classifier, images, classes), step,
                               "deletion")


def insertion(classifier: Classifier, images: np.ndarray, relevance: np.ndarray, classes: np.ndarray | None = None,
              step: int | None = None, blurred: np.ndarray | None = None) -> Curves:
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


def background_fraction(relevance: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """sum(|R| (1 - M)) / sum(|R|) per image (|R| summed over channels); NaN for an all-zero heatmap."""
    r = np.abs(np.asarray(relevance, dtype=np.float64))
    heat = r.sum(axis=1) if r.ndim == 4 else r
    m = _masks(masks, heat)
    total = heat.reshape(len(heat), -1).sum(1)
    outside = (heat * ~m).reshape(len(heat), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, outside / total, np.nan)


def pointing_game(relevance: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """True where the arg-max of the channel-summed heatmap lies inside the mask."""
    heat = _heat(relevance)
    m = _masks(masks, heat).reshape(len(heat), -1)
    peak = heat.reshape(len(heat), -1).argmax(axis=1)
    return m[np.arange(len(heat)), peak]


def conservation_error(relevance: np.ndarray, seed_sums: np.ndarray) -> np.ndarray:
    """|sum R - s| / |s| per image."""
    r = np.asarray(relevance, dtype=np.float64)
    total = r.reshape(len(r), -1).sum(1)
    s = np.asarray(seed_sums, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(total - s) / np.abs(s)

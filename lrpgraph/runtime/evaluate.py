"""`lrpgraph evaluate`: the metrics of lrpgraph.metrics over image files, for every heatmap output of a
converted model, in ONNX Runtime.

HeatmapModel runs the converted model for its heatmaps, explaining the predicted class (fed through
`target` / `relevance_seed` where the model takes them); a metrics.Classifier runs its plain model part
for the logits and the perturbed copies. Images are found, loaded and preprocessed as `lrpgraph explain`
does (runtime.images, from the model's metadata); masks (PNG, nonzero = foreground) have the images'
relative names and are resized and cropped as the images are. evaluate() returns a row per image and
output and the mean per output (summarize; format_table prints them as a markdown table); with an out
folder it writes metrics.csv and, with matplotlib, curves/<image>.curves.png.
"""

import csv
import io
import math
import os
import sys
from collections.abc import Callable
from typing import TextIO
from pathlib import Path

import numpy as np
from PIL import Image

from lrpgraph import graph, metadata
from lrpgraph.errors import LrpgraphError, NotConvertedError
from lrpgraph.ort import SEED_INPUT
from lrpgraph.metrics import (Classifier, auc, background_fraction, conservation_error, deletion, insertion,
                              open_session, pointing_game, softmax)
from lrpgraph.runtime.explain import output_bases
from lrpgraph.runtime.images import find_images, image_mode, load_image, open_image, resize_and_crop, to_array
from lrpgraph.files import atomic_write, inside
from lrpgraph.runtime.render import save_text

METRICS = ("deletion", "insertion", "background", "pointing", "conservation")
MASK_METRICS = ("background", "pointing")
KNOWN_INPUTS = ("target", "relevance_seed", "noise_seed")


def parse_metrics(text: str) -> list:
    chosen = [m.strip().lower() for m in str(text).split(",") if m.strip()]
    unknown = [m for m in chosen if m not in METRICS]
    if unknown or not chosen:
        raise LrpgraphError(f"--metrics: unknown metric {', '.join(unknown) or repr(text)}; "
                            f"choose from {','.join(METRICS)}")
    return list(dict.fromkeys(chosen))


class HeatmapModel:
    """A converted model in ONNX Runtime: every heatmap output for a batch, explaining the predicted
    class (fed through `target` / `relevance_seed` where the model takes them; `noise_seed` is fed seed)."""

    def __init__(self, model: object, provider: str | None = None, threads: int | None = None, seed: int = 0):
        self.proto = graph.read(model)
        self.record = metadata.Record.from_model(self.proto)
        if self.record is None:
            raise NotConvertedError("the model has no lrpgraph metadata: evaluate a converted model "
                                    "(run `lrpgraph convert` first)")
        self.preprocess = self.record.preprocess
        self.outputs = self.record.relevance_outputs
        self.runner = open_session(self.proto, provider, threads, noise_seed=seed)
        self.image_input = self.record.image_input or next(iter(self.runner.inputs))
        odd = sorted(set(self.runner.inputs) - {self.image_input, *KNOWN_INPUTS})
        if odd:
            raise LrpgraphError(f"the model takes input(s) {', '.join(odd)} that evaluate cannot feed; convert it "
                                "without them (e.g. IG with --baseline zero or blur)")
        shape = next(i for i in self.proto.graph.input if i.name == self.image_input).type.tensor_type.shape
        dims = [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
        if len(dims) != 4:
            raise LrpgraphError(f"the image input {self.image_input} must be [N, C, H, W], got {len(dims)} dims")
        self.input_shape = tuple(dims[1:])

    def heatmaps(self, images: np.ndarray, classes: np.ndarray, logits: np.ndarray) -> dict:
        """{output: relevance [N, C, H, W]} explaining classes [N] (logits [N, K] give LRP seeds)."""
        runner = self.runner
        if runner.target_input != SEED_INPUT:
            feeds = runner.feeds(self.image_input, images, runner.target_feed(classes, logits.shape[1]))
            return dict(zip(self.outputs, runner.run(self.outputs, feeds)))
        out = {}
        for gradient in (True, False):  # one seed input: a one-hot gradient or logit x one-hot relevance
            names = [o for o in self.outputs if self.record.is_gradient(o) == gradient]
            if names:
                seed = runner.target_feed(classes, logits.shape[1], None if gradient else logits)
                out.update(zip(names, runner.run(names, runner.feeds(self.image_input, images, seed))))
        return out

    def seed_sums(self, output: str, logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """The seed sum that LRP relevance conserves; NaN for gradient-family outputs."""
        if self.record.is_gradient(output):
            return np.full(len(classes), np.nan)
        if self.record.target == "all":
            return logits.astype(np.float64).sum(1)
        return logits[np.arange(len(classes)), classes].astype(np.float64)

    def black(self) -> np.ndarray:
        """The model input value of a black pixel, per channel [C, 1, 1] (0 without preprocess metadata)."""
        mode = image_mode(self.preprocess, self.input_shape)
        return to_array(Image.new(mode, (1, 1)), self.preprocess)


def _load_mask(path, preprocess, input_shape):
    """A boolean H x W mask from a PNG (nonzero = foreground), resized and cropped as the images are."""
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


def _report_failure(file, message):
    print(f"skipped: {message}" if str(file) in message else f"skipped {file}: {message}", file=sys.stderr)


def _load_chunk(found, chunk, heatmaps, failed, on_failure):
    """(indices that loaded, their images stacked); an unreadable image is reported and left out."""
    kept, images = [], []
    for i in chunk:
        try:
            images.append(load_image(found[i][0], heatmaps.preprocess, heatmaps.input_shape))
        except LrpgraphError as error:
            message = str(error)
        except Exception as error:  # an odd file must not stop a long run; the message names it
            message = f"cannot read image {found[i][0]}: {type(error).__name__}: {error}"
        else:
            kept.append(i)
            continue
        failed.append({"file": str(found[i][0]), "error": message})
        if on_failure is not None:
            on_failure(found[i][0], message)
    return kept, (np.stack(images) if images else None)


def evaluate(model: object, paths: list, metrics: str | tuple | list = ("deletion", "insertion"),
             masks_dir: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
             step: int | None = None, fill: str | float = "black", batch_size: int = 16, provider: str | None = None,
             threads: int | None = None, seed: int = 0, plots: bool = True,
             on_failure: Callable | None = _report_failure, progress: Callable | None = None) -> dict:
    """Evaluate every heatmap output of a converted model on image files (folders walked recursively).

    masks_dir holds a mask per image under the same relative name (PNG; nonzero = foreground), needed for
    background and pointing. fill: 'black' (a black pixel in the model's input space) or a number.
    An image that cannot be read is reported by on_failure(file, message) (default: one line on stderr),
    skipped, and listed in "failed", as `lrpgraph explain` does. progress(done, total) is called after each
    batch (progress_lines: a line on stderr every few seconds, readable in a log file as on a terminal).
    Returns {"rows": [per image and output: dict], "summary": {output: {metric: mean}}, "curves": n written,
    "notes": [...], "images": n found, "failed": [{"file", "error"}]}; with out_dir also writes metrics.csv and, with matplotlib, curves/<image>.curves.png."""
    metrics, needs_masks = _checked(metrics, masks_dir, batch_size, step)
    heatmaps = HeatmapModel(model, provider, threads, seed)
    classifier = Classifier(heatmaps.proto, provider, threads)
    fill_value = heatmaps.black() if str(fill).lower() == "black" else _number(fill, "fill")
    scores = _Scores(heatmaps, classifier, metrics, step, fill_value)
    found = find_images(paths, exclude=out_dir)
    if not found:
        raise LrpgraphError(f"no image files found in {', '.join(map(str, paths))}")
    mask_files = [_mask_path(masks_dir, rel) for _, rel in found] if needs_masks else None
    bases = output_bases(found)
    plot = _plotter(out_dir) if plots and out_dir is not None and {"deletion", "insertion"} & set(metrics) else None
    notes = ["matplotlib is not installed: no curve plots written"] if plot is False else []
    for base in bases if plot else ():
        inside(Path(out_dir) / "curves", f"{base}.curves.png")  # refused before any image is run
    rows, written, failed = [], 0, []
    for first in range(0, len(found), batch_size):
        chunk, images = _load_chunk(found, range(first, min(first + batch_size, len(found))), heatmaps, failed,
                                    on_failure)
        if not chunk:
            continue
        chunk_rows, curves = scores.chunk(images, [str(found[i][0]) for i in chunk],
                                          [mask_files[i] for i in chunk] if mask_files else None)
        rows += chunk_rows
        if progress is not None:
            progress(min(first + batch_size, len(found)), len(found))
        if plot:
            for j, i in enumerate(chunk):
                plot(bases[i], {key: (c.fractions, c.probabilities[j]) for key, c in curves.items()})
                written += 1
    summary = summarize(rows, heatmaps.outputs)
    if out_dir is not None:
        _write_csv(Path(out_dir) / "metrics.csv", rows)
    return {"rows": rows, "summary": summary, "curves": written, "notes": notes, "images": len(found),
            "failed": failed}


def progress_lines(every: float = 5.0, stream: "TextIO | None" = None) -> Callable:
    """A progress(done, total) for evaluate: one line 'evaluated D of T images (S s)' on stream (stderr) at the
    first batch, then at most every `every` seconds, and at the end."""
    import time

    start, last = time.perf_counter(), [None]

    def progress(done, total):
        now = time.perf_counter()
        if last[0] is None or now - last[0] >= every or done == total:
            last[0] = now
            print(f"evaluated {done} of {total} images ({now - start:.0f} s)", file=stream or sys.stderr, flush=True)

    return progress


def _checked(metrics, masks_dir, batch_size, step):
    """evaluate's arguments checked: (the metrics as a list, those of them that need masks)."""
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
    return metrics, needs_masks


class _Scores:
    """evaluate's metrics on one chunk of images at a time: the predicted class from the classifier, every
    heatmap output of heatmaps, and a row per image and output."""

    def __init__(self, heatmaps, classifier, metrics, step, fill_value):
        self.heatmaps, self.classifier, self.metrics = heatmaps, classifier, metrics
        self.step, self.fill_value = step, fill_value

    def chunk(self, images, files, mask_files):
        """(rows, {(output, "deletion" | "insertion"): curve}) for images [N, C, H, W] read from files."""
        heatmaps = self.heatmaps
        logits = self.classifier.logits(images)
        classes = logits.argmax(axis=1)
        probs = softmax(logits)
        maps = heatmaps.heatmaps(images, classes, logits)
        masks = (np.stack([_load_mask(path, heatmaps.preprocess, heatmaps.input_shape) for path in mask_files])
                 if mask_files else None)
        rows, curves = [], {}
        for output, relevance in maps.items():
            values = self._values(output, images, relevance, classes, logits, masks, curves)
            for j, file in enumerate(files):
                rows.append({"file": file, "output": output, "class": int(classes[j]),
                             "probability": float(probs[j, classes[j]]),
                             **{k: float(v[j]) for k, v in values.items()}})
        return rows, curves

    def _values(self, output, images, relevance, classes, logits, masks, curves):
        """{column: value per image} of one heatmap output; its deletion / insertion curves go to curves."""
        metrics, classifier, values = self.metrics, self.classifier, {}
        if "deletion" in metrics:
            curves[(output, "deletion")] = c = deletion(classifier, images, relevance, classes, self.step,
                                                        self.fill_value)
            values["deletion_auc"] = c.auc
        if "insertion" in metrics:
            curves[(output, "insertion")] = c = insertion(classifier, images, relevance, classes, self.step)
            values["insertion_auc"] = c.auc
        if "background" in metrics:
            values["background_fraction"] = background_fraction(relevance, masks)
        if "pointing" in metrics:
            values["pointing_hit"] = pointing_game(relevance, masks).astype(np.float64)
        if "conservation" in metrics:
            values["conservation_error"] = conservation_error(relevance, self.heatmaps.seed_sums(output, logits,
                                                                                                 classes))
        return values


def _number(value, what):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise LrpgraphError(f"--{what} must be 'black' or a number, got {value!r}") from None


def summarize(rows: list, outputs: list) -> dict:
    """{output: {column: mean over images (NaN-aware)}}."""
    summary = {}
    for output in outputs:
        mine = [r for r in rows if r["output"] == output]
        columns = [k for k in (mine[0] if mine else {}) if k not in ("file", "output", "class")]
        summary[output] = {k: float(np.nanmean([r[k] for r in mine])) if not all(math.isnan(r[k]) for r in mine)
                           else float("nan") for k in columns}
    return summary


def format_table(summary: dict, images: int | None = None) -> str:
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
        path = inside(Path(out_dir) / "curves", f"{base}.curves.png")
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
        atomic_write(path, lambda file: fig.savefig(file, format="png", dpi=80))  # never through a planted link
        plt.close(fig)

    return plot

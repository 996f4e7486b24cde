"""Explain image files with an ExplainSession and write heatmaps, overlays, npy files and records.

Output layout: each image's outputs go to out_dir / <its path below the folder it was found in>, with
the extension replaced, e.g. images/cats/a.jpg -> out/cats/a.relevance.png; a model with several heatmap
outputs gets one file per output, named by it (a.relevance_lrp.png, a.relevance_gig.png). Two images that would get
the same name (a.jpg and a.png, or two files named directly from different folders) are told apart
by keeping the extension (a.png.relevance.png) or, failing that, by a -2, -3 suffix.
Files under out_dir are never read as inputs, so out_dir may lie inside an input folder.

Every written file goes to a temporary name in its folder first and is then renamed.
"""

import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from lrpgraph.errors import LrpgraphError
from lrpgraph.files import inside
from lrpgraph.metrics import softmax
from lrpgraph.runtime import render
from lrpgraph.runtime.images import IMAGE_EXTENSIONS, find_images, load_image_and_display
from lrpgraph.runtime.page import write_index_html

if TYPE_CHECKING:
    from lrpgraph.runtime.session import ExplainSession

__all__ = ["explain_paths", "output_bases", "parse_formats", "upscale",
           "write_index_html"]  # the page of explain --html and demo, public here too

FORMATS = ("png", "npy")
PROGRESS_MIN_IMAGES = 4
LOAD_THREADS = 2
WRITE_THREADS = 2  # PNG encoding and file writes release the GIL: they overlap the next batch's run
OVERLAY_ALPHA = 0.5


def parse_formats(formats: str | tuple | list) -> tuple:
    """A tuple of output formats from ('png', 'npy') or a comma-separated string 'png,npy'."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    chosen = tuple(dict.fromkeys(item.strip().lower() for item in items if item.strip()))
    unknown = [item for item in chosen if item not in FORMATS]
    if unknown or not chosen:
        raise LrpgraphError(f"unknown output format {', '.join(unknown) or repr(formats)}; use png, npy or png,npy")
    return chosen


def output_bases(found: list) -> list:
    """For each (file, relative path): the relative output name without extension, made unique."""
    bases, used = [], set()
    for _, relative in found:
        relative = PurePosixPath(Path(relative).as_posix())
        candidates = [relative.with_suffix(""), relative]
        candidates += [relative.parent / f"{relative.stem}-{n}" for n in range(2, len(found) + 3)]
        base = next(c for c in candidates if str(c).lower() not in used)
        used.add(str(base).lower())
        bases.append(base)
    return bases


def _label(labels, index):
    if index is None or not isinstance(labels, list) or not 0 <= index < len(labels):
        return None
    return str(labels[index])


def _check_target(session, target):
    """One target for all images: an int, or for seed models one float seed [classes]."""
    array = np.asarray(target.detach().cpu().numpy() if hasattr(target, "detach") else target)
    if target is not None and array.ndim > 0 and array.dtype.kind != "f":
        raise LrpgraphError(
            "explain_paths takes one target class for all images (an int); "
            "for per-image targets call ExplainSession.explain"
        )
    session.check_target(target)


def _try_load(session, file):
    try:
        return load_image_and_display(file, session.preprocess, session.input_shape)
    except LrpgraphError as error:
        return str(error)
    except Exception as error:  # an odd file must not stop a long run; the message names it
        return f"cannot read image {file}: {type(error).__name__}: {error}"


def _loaded_batches(session, files, batch_size):
    """Yield [(index, (array, display) or error message)] per batch; the next batch loads meanwhile."""
    chunks = [range(s, min(s + batch_size, len(files))) for s in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(max_workers=LOAD_THREADS) as pool:

        def submit(chunk):
            return [(i, pool.submit(_try_load, session, files[i])) for i in chunk]

        waiting = submit(chunks[0]) if chunks else []
        for k in range(len(chunks)):
            current, waiting = waiting, submit(chunks[k + 1]) if k + 1 < len(chunks) else []
            yield [(i, future.result()) for i, future in current]


def _output_names(base, formats, overlay, outputs=("relevance",), inputs_png=False):
    """{kind: path relative to out_dir (posix)} of the files written for one image.

    One heatmap output `relevance`: relevance_png, overlay_png, relevance_npy (<base>.relevance.png, ...).
    Several (relevance_NAME): <output>_png, <output>_overlay_png, <output>_npy (<base>.relevance_NAME.png,
    <base>.relevance_NAME.overlay.png, <base>.relevance_NAME.npy). inputs_png: input_png (<base>.input.png),
    the preprocessed image the heatmap lines up with."""
    names = {"input_png": f"{base}.input.png"} if inputs_png else {}
    for output in outputs:
        single = tuple(outputs) == ("relevance",)
        if "png" in formats:
            names[f"{output}_png"] = f"{base}.{output}.png"
        if overlay:
            names["overlay_png" if single else f"{output}_overlay_png"] = (
                f"{base}.overlay.png" if single else f"{base}.{output}.overlay.png")
        if "npy" in formats:
            names[f"{output}_npy"] = f"{base}.{output}.npy"
    return names


def upscale(array: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an H x W (x 3) picture by an integer factor (pixels stay square)."""
    return array if factor == 1 else np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


def _write_outputs(out_dir, names, maps, display, cmap, png_scale=1):
    """Write every file of one image: maps {output: relevance C x H x W}, display the preprocessed image."""
    if "input_png" in names:
        render.save_png(out_dir / names["input_png"], upscale(np.asarray(display), png_scale))
    single = tuple(maps) == ("relevance",)
    for output, relevance in maps.items():
        overlay_key = "overlay_png" if single else f"{output}_overlay_png"
        if f"{output}_png" in names or overlay_key in names:
            heat = render.heatmap_rgb(relevance, cmap)
            if f"{output}_png" in names:
                render.save_png(out_dir / names[f"{output}_png"], upscale(heat, png_scale))
            if overlay_key in names:
                blend = render.overlay(display, heat, OVERLAY_ALPHA)
                render.save_png(out_dir / names[overlay_key], upscale(blend, png_scale))
        if f"{output}_npy" in names:
            render.save_npy(out_dir / names[f"{output}_npy"], relevance)


def _explain_loaded(session, good, target, batch_size, files, bases, options):
    """Run the loaded images [(index, (array, display))]; yield (index, record, {output: relevance}, display)."""
    if not good:
        return
    batch = np.stack([loaded[0] for _, loaded in good])
    logits, relevance, explained = session.explain(batch, target, batch_size=batch_size, return_targets=True)
    maps = relevance if isinstance(relevance, dict) else {session.relevance_output: relevance}
    logits, maps = np.asarray(logits), {k: np.asarray(v) for k, v in maps.items()}
    probabilities = logits.astype(np.float64) if session.outputs_probabilities else softmax(logits)
    for row, (i, (_, display)) in enumerate(good):
        outputs = _output_names(bases[i], options["formats"], options["overlay"], list(maps), options["inputs_png"])
        chosen = None if explained is None else int(explained[row])
        mine = {k: v[row] for k, v in maps.items()}
        record = _record(session, files[i], outputs, logits[row], probabilities[row], mine, chosen)
        yield i, record, mine, display


def _finite(value):
    """value as a float, or None where it is NaN or infinite (JSON has no NaN)."""
    value = float(value)
    return value if np.isfinite(value) else None


def _record(session, file, outputs, logits_row, probabilities_row, maps, explained):
    order = np.argsort(-np.nan_to_num(probabilities_row, nan=-np.inf), kind="stable")[:5]
    predicted = int(order[0])
    sums = {k: _finite(np.asarray(v, dtype=np.float64).sum()) for k, v in maps.items()}
    record = {
        "file": str(file),
        "outputs": outputs,
        "predicted": predicted,
        "predicted_label": _label(session.labels, predicted),
        "top5": [
            {"class": int(k), "label": _label(session.labels, int(k)), "probability": _finite(probabilities_row[k])}
            for k in order
        ],
        "explained": explained,
        "explained_label": _label(session.labels, explained),
        "explained_score": None if explained is None else _finite(logits_row[explained]),
        "explained_score_kind": "probability" if session.outputs_probabilities else "logit",
        "relevance_sum": next(iter(sums.values())) if len(sums) == 1 else sums,
    }
    bad = [k for k, v in maps.items() if not np.isfinite(np.asarray(v)).all()]
    if bad or not np.isfinite(logits_row).all():
        what = f"heatmap {', '.join(bad)}" if bad else "the logits"
        record["error"] = (f"{file}: {what} holds NaN or infinite values; convert the model with finite, "
                           "non-negative rule parameters (e.g. --epsilon 1e-6)")
    return record


def _report_failure(file, message):
    tqdm.write(f"skipped: {message}" if str(file) in message else f"skipped {file}: {message}", file=sys.stderr)


def explain_paths(session: "ExplainSession", paths: list, out_dir: str | os.PathLike,
                  target: int | np.ndarray | None = None, batch_size: int = 16, formats: tuple | str = ("png",),
                  overlay: bool = False, cmap: str = "bwr", json_lines: Callable | None = None, progress: bool = True,
                  on_failure: Callable | None = _report_failure, png_scale: int = 1, inputs_png: bool = False) -> dict:
    """Explain the images in paths (files and folders); write outputs under out_dir; return a summary.

    target: None (each image's predicted class) or one class index for all images. formats: 'png'
    (heatmap), 'npy' (raw C x H x W relevance) or both; a model with several heatmap outputs gets files
    per output, named by it (a.relevance_lrp.png, a.relevance_gig.png). png_scale: PNGs are enlarged by this
    integer factor (nearest neighbour; the .npy stays at the model's resolution). inputs_png: also write
    the preprocessed input as <name>.input.png (a page under out_dir then needs nothing outside it).
    json_lines: a path ('-' for stdout) that gets one JSON record per image (a failed image gets
    {"file", "error"}; values that are not finite are null). A failing image is reported by
    on_failure(file, message) (default: one line on stderr) and skipped. The summary holds counts,
    failures, records, seconds and images per second.
    """
    options = _options(session, target, batch_size, formats, png_scale, cmap, overlay, inputs_png)
    out_dir = Path(out_dir)
    files, bases = _found(paths, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = _Written(out_dir, cmap, png_scale, json_lines, on_failure)
    started = time.perf_counter()
    bar = tqdm(total=len(files), unit="img", disable=not progress or len(files) < PROGRESS_MIN_IMAGES, file=sys.stderr)
    try:
        for items in _loaded_batches(session, files, batch_size):
            good = [(i, result) for i, result in items if not isinstance(result, str)]
            written.add(files, items, _explain_loaded(session, good, target, batch_size, files, bases, options))
            bar.update(len(items))
        written.wait()
    finally:
        written.close()
        bar.close()
    written.save_lines()
    seconds = time.perf_counter() - started
    return {
        "found": len(files),
        "explained": len(written.records),
        "failed": written.failures,
        "records": written.records,
        "out_dir": str(out_dir),
        "seconds": seconds,
        "images_per_second": len(written.records) / seconds if seconds > 0 else None,
    }


def _options(session, target, batch_size, formats, png_scale, cmap, overlay, inputs_png):
    """explain_paths' arguments checked: {"formats", "overlay", "inputs_png"} for _output_names."""
    formats = parse_formats(formats)
    if not isinstance(png_scale, int) or isinstance(png_scale, bool) or not 1 <= png_scale <= 64:
        raise LrpgraphError(f"png_scale must be an integer from 1 to 64, got {png_scale!r}")
    options = {"formats": formats, "overlay": overlay, "inputs_png": inputs_png}
    if cmap not in render.COLORMAPS:
        raise LrpgraphError(f"unknown colour map {cmap!r}; use one of {', '.join(render.COLORMAPS)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LrpgraphError(f"batch_size must be a positive integer, got {batch_size!r}")
    _check_target(session, target)
    return options


def _found(paths, out_dir):
    """([image file], [its output name without extension]) of the images in paths, none under out_dir."""
    found = find_images(paths, exclude=out_dir)
    if not found:
        given = [paths] if isinstance(paths, (str, os.PathLike)) else paths
        raise LrpgraphError(
            f"no image files found in {', '.join(map(str, given))}; "
            f"give files or folders with {', '.join(IMAGE_EXTENSIONS)}"
        )
    bases = output_bases(found)
    for base in bases:
        inside(out_dir, str(base))  # an output folder under out_dir that is a symlink to elsewhere: refused
    return [file for file, _ in found], bases


class _Written:
    """What explain_paths writes: each batch's files (in threads, while the next batch runs), the records,
    the failures (reported by on_failure) and the JSON lines (streamed to stdout for '-', else saved at the end)."""

    def __init__(self, out_dir, cmap, png_scale, json_lines, on_failure):
        self.out_dir, self.cmap, self.png_scale = out_dir, cmap, png_scale
        self.json_lines, self.on_failure = json_lines, on_failure
        self.stream = sys.stdout if json_lines == "-" else None
        self.records, self.failures, self.lines = [], [], []
        self.pool = ThreadPoolExecutor(max_workers=WRITE_THREADS)
        self.writing, self.written = [], []

    def add(self, files, items, explained):
        """One batch: items [(index, loaded or error message)], explained (_explain_loaded of the loaded ones)."""
        batch_lines = {}
        for i, message in ((i, r) for i, r in items if isinstance(r, str)):
            batch_lines[i] = self._fail(files[i], message)
        for i, record, maps, display in explained:
            batch_lines[i] = record
            if "error" in record:  # NaN heatmaps: no files, reported like an unreadable image
                self._fail(files[i], record["error"])
                continue
            self.writing.append(self.pool.submit(_write_outputs, self.out_dir, record["outputs"], maps, display,
                                                 self.cmap, self.png_scale))
            self.records.append(record)
        self.lines += [batch_lines[i] for i in sorted(batch_lines)]  # in file order
        if self.stream is not None:
            for line in self.lines:
                self.stream.write(json.dumps(line, allow_nan=False) + "\n")
            self.stream.flush()
            self.lines = []
        self.wait()  # the previous batch's files: raise its errors, bound the queue
        self.written, self.writing = self.writing, []

    def _fail(self, file, message):
        self.failures.append({"file": str(file), "error": message})
        if self.on_failure is not None:
            self.on_failure(file, message)
        return self.failures[-1]

    def wait(self):
        for future in self.written:
            future.result()

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)

    def save_lines(self):
        if self.json_lines is not None and self.stream is None:
            render.save_text(self.json_lines, "".join(json.dumps(line, allow_nan=False) + "\n" for line in self.lines))

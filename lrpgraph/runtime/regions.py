"""Regions of a segmenter (`explain --region CLASS`): the relevance of "class c here". The seed is L-CRP's: the
class-c logits on the pixels predicted as c, their positive part, fed as a relevance seed [N, K, C, H, W] (one
per class asked for, all explained in one call); the pictures get the mask's outline drawn."""

import os
from typing import TYPE_CHECKING

import numpy as np

from lrpgraph.errors import LrpgraphError

if TYPE_CHECKING:
    from lrpgraph.runtime.session import ExplainSession


def region_seed(logits: np.ndarray, classes: list) -> np.ndarray:
    """float32 [N, K, C, H, W]: for each class c asked for, max(logits[:, c], 0) where the argmax over C is c."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 4:
        raise LrpgraphError(f"--region needs a segmenter's output [N, classes, H, W]; the explained tensor is "
                            f"{list(logits.shape)}")
    bad = [c for c in classes if not 0 <= c < logits.shape[1]]
    if bad:
        raise LrpgraphError(f"--region {bad[0]}: the model has {logits.shape[1]} classes (0 to {logits.shape[1] - 1})")
    predicted = logits.argmax(axis=1)
    seed = np.zeros((logits.shape[0], len(classes)) + logits.shape[1:], np.float32)
    for k, c in enumerate(classes):
        seed[:, k, c] = np.maximum(logits[:, c], 0) * (predicted == c)
    return seed


def outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of a boolean mask [H, W] that have a 4-neighbour outside it (or lie on the border)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def fit(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A mask [h, w] brought to [height, width] by nearest neighbour (a segmenter may output a smaller map)."""
    rows = np.arange(height) * mask.shape[0] // height
    cols = np.arange(width) * mask.shape[1] // width
    return mask[rows][:, cols]


def explain_regions(session: "ExplainSession", paths: list, out_dir: str | os.PathLike, classes: list,
                    cmap: str = "bwr") -> list:
    """For each image: the seed of each class in classes (region_seed), their heatmaps in one call, written as
    NAME.regionC.png (the heatmap over the image, the mask's outline drawn), NAME.json (each region's pixels, the
    pixels of every class predicted) and index.html (pictures.explain_each); returns the records."""
    from lrpgraph.ort import SEED_INPUT
    from lrpgraph.runtime import render
    from lrpgraph.runtime.detect import forward
    from lrpgraph.runtime.pictures import explain_each

    if not session.record.k_targets or session.target_input != SEED_INPUT:
        raise LrpgraphError(f"{session.name}: --region needs a model converted with --target seed whose explained "
                            "tensor is the segmenter's output [N, classes, H, W]")
    labels = session.labels if isinstance(session.labels, list) else []

    def explain_one(x, display, base, out_dir):
        logits = forward(session, x[None], session.logits_output)
        seed = region_seed(logits, classes)
        _, relevance = session.explain(x[None], target=seed)
        relevance = relevance if not isinstance(relevance, dict) else next(iter(relevance.values()))
        counts = np.bincount(logits[0].argmax(axis=0).ravel(), minlength=logits.shape[1])
        record = {"regions": [], "heatmaps": [],  # the classes predicted anywhere, most pixels first
                  "predicted": {str(c): int(counts[c]) for c in np.argsort(-counts, kind="stable") if counts[c]}}
        for k, c in enumerate(classes):
            mask = fit(seed[0, k, c] > 0, *display.shape[:2])
            picture = render.overlay(display, render.heatmap_rgb(relevance[0, k], cmap), 0.6)
            picture[outline(mask)] = (0, 200, 0)
            render.save_png(out_dir / f"{base}.region{c}.png", picture)
            region = {"class": int(c), "pixels": int((seed[0, k, c] > 0).sum())}
            if c < len(labels):
                region["label"] = str(labels[c])
            record["regions"].append(region)
            record["heatmaps"].append(f"{base}.region{c}.png")
        return record

    return explain_each(session, paths, out_dir, explain_one, "lrpgraph regions", captions, "no region asked for")


def captions(record: dict) -> list:
    """The caption of each region: its label (or class) and how many pixels were predicted as it."""
    return [f"{region.get('label', region['class'])}: {region['pixels']} pixels" for region in record["regions"]]

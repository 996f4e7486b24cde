"""The options of `lrpgraph explain` for detectors (--decode yolo, --top, --score, --iou) and segmenters (--region)
and the runs they start (runtime/detect.py, runtime/regions.py)."""

import functools
import os
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from lrpgraph.runtime.session import ExplainSession


def detect_options(command: object) -> object:
    """Add --decode, --top, --score and --iou to a click command."""
    options = [
        click.option("--decode", type=click.Choice(["yolo"]), default=None,
                     help="decode an ultralytics detect output, NMS-filter it and explain the --top best boxes in "
                          "one call: NAME.detK.png with the box drawn, NAME.json, index.html"),
        click.option("--top", "top", type=click.IntRange(min=1), default=5, show_default=True,
                     help="with --decode: how many detections per image are explained"),
        click.option("--score", type=click.FloatRange(0, 1), default=0.25, show_default=True,
                     help="with --decode: the score threshold"),
        click.option("--iou", type=click.FloatRange(0, 1), default=0.45, show_default=True,
                     help="with --decode: the IoU above which NMS drops a box"),
        click.option("--region", "regions", type=click.IntRange(min=0), multiple=True,
                     help="segmenters (converted with --target seed): explain class CLASS on the pixels predicted as "
                          "it (repeatable; all in one call): NAME.regionCLASS.png with the mask outline, NAME.json, "
                          "index.html"),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), command)


def run_decode(session: "ExplainSession", inputs: tuple, out_dir: str, top: int, score: float, iou: float, cmap: str) -> None:
    """Explain the detections of the images in inputs (explain --decode yolo)."""
    from lrpgraph.runtime.detect import explain_detections

    records = explain_detections(session, list(inputs), out_dir, top=top, score=score, iou=iou, cmap=cmap)
    count = sum(len(r["heatmaps"]) for r in records)
    click.echo(f"{count} detections in {len(records)} images explained -> {os.path.join(out_dir, 'index.html')}",
               err=True)
    empty = [r for r in records if "best_score" in r and not r["heatmaps"]]
    if empty:  # a model whose scores all lie below the threshold (an untrained or differently scaled one) says so
        best = max(r["best_score"] for r in empty)
        click.echo(f"no box scored above --score {score:g} in {len(empty)} of {len(records)} images (their highest "
                   f"class score: {best:.4g}); lower --score to explain weaker boxes", err=True)


def run_regions(session: "ExplainSession", inputs: tuple, out_dir: str, classes: tuple, cmap: str) -> None:
    """Explain the regions of the classes in the images in inputs (explain --region)."""
    from lrpgraph.runtime.regions import explain_regions

    records = explain_regions(session, list(inputs), out_dir, list(classes), cmap=cmap)
    click.echo(f"{len(classes)} region(s) in {len(records)} images explained -> {os.path.join(out_dir, 'index.html')}",
               err=True)
    for record in records:  # a class predicted nowhere has an empty seed, so an empty heatmap: say so
        empty = [str(r["class"]) for r in record.get("regions", []) if not r["pixels"]]
        if empty:
            found = ", ".join(f"{c} ({n} px)" for c, n in list(record["predicted"].items())[:5])
            click.echo(f"{record['file']}: no pixel is predicted as {' or '.join('class ' + c for c in empty)}, so the "
                       f"heatmap is empty; classes predicted there: {found}", err=True)


def run_boxes(model: str, data: tuple, boxes_file: str, out_dir: str, seed: int, provider: str | None,
              threads: int | None) -> None:
    """evaluate --boxes: the pointing game and the positive relevance inside each box, against a random heatmap;
    prints the means and writes OUT/boxes.csv."""
    import csv

    from lrpgraph.cli_checks import check_output_dir
    from lrpgraph.runtime.boxes import evaluate_boxes
    from lrpgraph.runtime.session import ExplainSession

    check_output_dir(out_dir, "--out")
    result = evaluate_boxes(ExplainSession(model, provider=provider, threads=threads), list(data), boxes_file, seed)
    summary = result["summary"]
    click.echo(f"{len(result['rows'])} boxes: pointing game {summary['pointing']:.3f} (random heatmap "
               f"{summary['random pointing']:.3f}); positive relevance inside the box {summary['inside']:.3f} "
               f"(random heatmap {summary['random inside']:.3f})")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "boxes.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "class", "anchor", "pointing", "inside", "random_pointing", "random_inside"])
        writer.writerows(result["rows"])

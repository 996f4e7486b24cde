"""The loop `explain --decode yolo` (detect.py) and `explain --region` (regions.py) share: create the output folder,
read each image with its display copy, let the caller explain it and write its pictures, write NAME.json, and
at the end index.html with one row per image and one captioned picture per heatmap. Every string from outside
(file names, labels) is escaped in the page."""

import html
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from lrpgraph.runtime.session import ExplainSession


def explain_each(session: "ExplainSession", paths: list, out_dir: str | os.PathLike, explain_one: Callable,
                 title: str, captions: Callable, empty: str) -> list:
    """For each image in paths: record = explain_one(x [C, H, W], display [H, W, 3], base name, out folder) (a
    dict with "heatmaps": the picture names it wrote), saved as NAME.json with "file" first; index.html shows
    each picture above its caption (captions(record) -> one string per picture; empty where there is none).
    Returns the records."""
    from lrpgraph.cli_checks import make_output_dir
    from lrpgraph.runtime import render
    from lrpgraph.runtime.images import list_images, load_image_and_display

    make_output_dir(out_dir, "--out")
    out_dir = Path(out_dir)
    records = []
    for path in list_images(paths, exclude=out_dir):
        x, display = load_image_and_display(path, session.preprocess, session.input_shape)
        base = Path(path).stem
        record = {"file": str(path), **explain_one(x, display, base, out_dir)}
        render.save_text(out_dir / f"{base}.json", json.dumps(record, indent=1))
        records.append(record)
    render.save_text(out_dir / "index.html", page(records, title, captions, empty))
    return records


def page(records: list, title: str, captions: Callable, empty: str) -> str:
    """index.html: one row per image (its file name), one picture per heatmap with its caption."""
    from lrpgraph.runtime.page import STYLE, footer

    rows = []
    for record in records:
        cells = [f"<td>{html.escape(str(record['file']))}</td>"]
        for png, caption in zip(record["heatmaps"], captions(record)):
            caption = html.escape(caption)
            cells.append(f'<td><img src="{html.escape(quote(png))}" alt="{caption}"><br>{caption}</td>')
        if not record["heatmaps"]:
            cells.append(f"<td>{html.escape(empty)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><table>\n" + "\n".join(rows)
            + f"\n</table>{footer()}</body></html>\n")

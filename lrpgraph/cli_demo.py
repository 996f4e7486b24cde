"""`lrpgraph demo` and the site writer it shares with `lrpgraph web`: the bundled Fashion-MNIST classifier
converted and explained on the bundled samples, offline."""

import os
import sys

import click

from lrpgraph.cli_checks import make_output_dir

DEMO_DIR = os.path.join(os.path.dirname(__file__), "data", "demo")
DEMO_PNG_SIDE = 224  # the demo's PNGs are enlarged to about this size


def read_labels(path: str) -> list:
    """Class names, one per non-empty line."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def run_demo(out_dir: str, composite: str, web: bool) -> None:
    """Convert the demo model with composite, explain the samples into out_dir (and the site with web)."""
    from lrpgraph.pipeline import convert as convert_model
    from lrpgraph.files import save
    from lrpgraph.runtime.explain import explain_paths, write_index_html
    from lrpgraph.runtime.session import ExplainSession

    make_output_dir(out_dir, "--out")
    labels = read_labels(os.path.join(DEMO_DIR, "labels.txt"))
    converted = convert_model(os.path.join(DEMO_DIR, "model.onnx"), composite=composite, labels=labels,
                              preprocess={"mode": "L"}, webgpu=web)
    model_path = os.path.join(out_dir, "model.lrp.onnx")
    save(converted, model_path, force=True)
    click.echo(f"converted the demo model ({composite}) -> {model_path}")
    session = ExplainSession(model_path)
    scale = max(1, -(-DEMO_PNG_SIDE // max(session.input_shape[1:])))  # 28 px -> 224 px, nearest neighbour
    summary = explain_paths(session, [os.path.join(DEMO_DIR, "images")], out_dir, overlay=True, progress=False,
                            formats="png,npy", png_scale=scale, inputs_png=True)
    truth = demo_truth(summary["records"], labels)
    index = write_index_html(out_dir, summary["records"], title=f"lrpgraph demo: Fashion-MNIST, {composite}",
                             truth=truth)
    for record in summary["records"]:
        true = truth.get(record["file"])
        mark = "" if true in (None, record["predicted_label"]) else f"  (true: {true}, misclassified)"
        click.echo(f"  {os.path.basename(record['file']):<32} -> {record['predicted_label']}{mark}")
    click.echo(f"{summary['explained']} heatmaps and {index or os.path.join(out_dir, 'index.html')} written")
    if web:
        web_site(model_path, os.path.join(out_dir, "site"), [os.path.join(DEMO_DIR, "images")], True,
                  f"lrpgraph demo: Fashion-MNIST, {composite}")
    if summary["failed"]:
        sys.exit(1)


def demo_truth(records: list, labels: list) -> dict:
    """{file: true label} from the bundled samples' names, NN_<label>_<id>.png (NN: the class index)."""
    truth = {}
    for record in records:
        prefix = os.path.basename(record["file"]).split("_", 1)[0]
        if prefix.isdigit() and int(prefix) < len(labels):
            truth[record["file"]] = labels[int(prefix)]
    return truth


def web_site(model: str, out_dir: str, samples: list | tuple, force: bool, title: str | None = None) -> None:
    """Write the browser site for model into out_dir and say how to serve it."""
    from lrpgraph.web import build_site

    site = build_site(model, out_dir, samples, force, title)
    click.echo(f"wrote {site}; serve it: python -m http.server -d {out_dir}")

"""`lrpgraph explain` says what it shows: the composite behind each heatmap (also on its page), the
preprocessing applied, and the explained score next to the relevance sum, named logit or probability."""

import json
from pathlib import Path

import onnx
from click.testing import CliRunner
from onnx import helper

from lrpgraph.cli import main
from lrpgraph.cli_demo import DEMO_DIR

DEMO = Path(DEMO_DIR)


def _with_softmax(path):
    """The demo classifier with a final Softmax: its output is probabilities."""
    model = onnx.load(DEMO / "model.onnx")
    out = model.graph.output[0]
    node = helper.make_node("Softmax", [out.name], ["probabilities"], axis=1, name="softmax")
    model.graph.node.append(node)
    info = onnx.ValueInfoProto()
    info.CopyFrom(out)
    info.name = "probabilities"
    model.graph.output[0].CopyFrom(info)
    onnx.save(model, path)
    return path


def test_explain_names_composite_preprocessing_and_score(tmp_path):
    runner = CliRunner()
    images = sorted((DEMO / "images").glob("*.png"))[:2]
    for name, source, kind in (("logits", DEMO / "model.onnx", "logit"),
                               ("probs", _with_softmax(tmp_path / "softmax.onnx"), "probability")):
        model = tmp_path / f"{name}.lrp.onnx"
        assert runner.invoke(main, ["convert", str(source), "-o", str(model), "--composite", "flex"]).exit_code == 0
        out = tmp_path / name
        result = runner.invoke(main, ["explain", str(model), *map(str, images), "--out", str(out), "--html",
                                      "--json", "--quiet"])
        assert result.exit_code == 0, result.output
        assert "heatmaps: relevance = LRP composite flex (target top)" in result.output
        assert "preprocessing (none stored, the default" in result.output and "aspect ratio kept" in result.output
        records = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
        assert len(records) == 2 and all(r["explained_score_kind"] == kind for r in records)
        page = (out / "index.html").read_text()
        assert "LRP composite flex" in page and "aspect ratio kept" in page
        score = records[0]["explained_score"]
        assert f"explained {kind}: {score:.4g}" in page

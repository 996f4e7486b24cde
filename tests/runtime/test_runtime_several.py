"""Models with several heatmap outputs (convert --explain NAME=SPEC ...): ExplainSession returns every one
(a dict) and explain writes every one (files named by output); evaluate skips an unreadable image; JSON
output stays valid where a heatmap is not finite."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from lrpgraph.cli import main
from lrpgraph.cli_demo import DEMO_DIR
from lrpgraph.runtime import ExplainSession
from lrpgraph.runtime.images import load_image

DEMO_MODEL = str(Path(DEMO_DIR) / "model.onnx")
IMAGES = sorted(Path(DEMO_DIR, "images").glob("*.png"))[:3]


def convert(tmp_path, name, *args):
    out = tmp_path / name
    result = CliRunner().invoke(main, ["convert", DEMO_MODEL, "-o", str(out), "--mode", "L", *args])
    assert result.exit_code == 0, result.output
    return out


def batch():
    return np.stack([load_image(p, {"mode": "L"}, (1, 28, 28)) for p in IMAGES])


@pytest.mark.parametrize("target", ["top", "seed"])
def test_session_returns_every_heatmap_as_the_single_models_do(tmp_path, target):
    several = convert(tmp_path, "both.onnx", "--target", target, "--explain", "lrp=epsilon-plus",
                      "--explain", "grad=gradient")
    lrp = convert(tmp_path, "lrp.onnx", "--target", target, "--composite", "epsilon-plus")
    grad = convert(tmp_path, "grad.onnx", "--target", target, "--method", "gradient")
    x = batch()
    classes = None if target == "top" else np.array([3, 0, 7])
    logits, maps = ExplainSession(several).explain(x, classes)
    assert isinstance(maps, dict) and list(maps) == ["relevance_lrp", "relevance_grad"]
    for name, single in (("relevance_lrp", lrp), ("relevance_grad", grad)):
        alone_logits, alone = ExplainSession(single).explain(x, classes)
        assert isinstance(alone, np.ndarray)  # one heatmap: an array, as before
        np.testing.assert_allclose(maps[name], alone, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(logits, alone_logits, rtol=1e-6)
    assert not np.allclose(maps["relevance_lrp"], maps["relevance_grad"])


def test_explain_writes_every_heatmap_named_by_its_output(tmp_path):
    several = convert(tmp_path, "both.onnx", "--explain", "lrp=epsilon-plus", "--explain", "grad=gradient",
                      "--labels", str(Path(DEMO_DIR) / "labels.txt"))
    images = tmp_path / "images"
    images.mkdir()
    for p in IMAGES:
        shutil.copy(p, images)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["explain", str(several), str(images), "--out", str(out), "--format", "png,npy",
                                       "--overlay", "--json", "--html", "--quiet", "--png-scale", "4"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    _, maps = ExplainSession(several).explain(batch())
    page = (out / "index.html").read_text()
    for row, (path, record) in enumerate(zip(IMAGES, records)):
        assert set(record["relevance_sum"]) == {"relevance_lrp", "relevance_grad"}
        for name in ("relevance_lrp", "relevance_grad"):
            written = np.load(out / f"{path.stem}.{name}.npy")
            np.testing.assert_allclose(written, maps[name][row], rtol=1e-6)
            assert record["relevance_sum"][name] == pytest.approx(float(written.astype(np.float64).sum()), rel=1e-6)
            for png in (f"{path.stem}.{name}.png", f"{path.stem}.{name}.overlay.png"):
                assert (out / png).exists() and png in page
        assert (out / f"{path.stem}.input.png").exists()
    from PIL import Image
    with Image.open(out / f"{IMAGES[0].stem}.relevance_lrp.png") as picture:
        assert picture.size == (28 * 4, 28 * 4)


def test_evaluate_skips_an_unreadable_image_and_exits_1(tmp_path):
    model = convert(tmp_path, "lrp.onnx")
    images = tmp_path / "images"
    images.mkdir()
    for p in IMAGES:
        shutil.copy(p, images)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "evaluation"
    result = CliRunner().invoke(main, ["evaluate", str(model), str(images), "--out", str(out), "--no-plots",
                                       "--metrics", "deletion"])
    assert result.exit_code == 1, result.output
    assert len([line for line in result.stderr.splitlines() if "broken.png" in line]) == 1, result.stderr
    assert "Traceback" not in result.output
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["file"]).name for r in rows) == sorted(p.name for p in IMAGES)


def test_json_lines_stay_valid_when_a_heatmap_is_not_finite(make_model, save_model, tmp_path):
    from PIL import Image

    model, weight, _ = make_model("top", channels=1, height=6, width=5)
    broken = weight.copy()
    broken[0, :] = np.nan  # pixel 0 meets NaN weights: NaN logits and a NaN heatmap
    for init in model.graph.initializer:
        if init.name in ("W", "WT"):
            init.CopyFrom(numpy_helper.from_array(broken if init.name == "W" else np.ascontiguousarray(broken.T),
                                                  init.name))
    path = save_model(model)
    onnx.checker.check_model(onnx.load(path))
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((6, 5), 200, np.uint8)).save(images / "a.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["explain", str(path), str(images), "--out", str(out), "--json", "--quiet",
                                       "--format", "png,npy"])
    assert result.exit_code == 1, result.output

    def no_nan(text):
        raise AssertionError(f"{text} in JSON output")

    records = [json.loads(line, parse_constant=no_nan) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 1 and "NaN" in records[0]["error"] and records[0]["relevance_sum"] is None
    assert not list(out.glob("a.*"))

"""`lrpgraph web` without a browser: what the site holds, model.json's preprocessing steps, and bad input
(one line, exit 2, nothing written). onnxruntime-web's files are stand-ins here ($LRPGRAPH_ORT_WEB)."""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from lrpgraph.cli import main
from lrpgraph.pipeline import convert
from lrpgraph.files import save
from lrpgraph.web import ORT_FILES, pipeline

DEMO = Path(__file__).resolve().parents[2] / "lrpgraph" / "data" / "demo"


@pytest.fixture
def ort_files(tmp_path, monkeypatch):
    dist = tmp_path / "dist"
    dist.mkdir()
    for name in ORT_FILES:
        (dist / name).write_text(f"// {name}")
    monkeypatch.setenv("LRPGRAPH_ORT_WEB", str(dist))
    return dist


def web(*args):
    result = CliRunner().invoke(main, ["web", *map(str, args)])
    return result.exit_code, result.output


def converted(tmp_path, **options):
    path = tmp_path / "model.lrp.onnx"
    save(convert(str(DEMO / "model.onnx"), **options), path, force=True)
    return path


def test_site(tmp_path, ort_files):
    model = converted(tmp_path, labels=["a"] * 10, preprocess={"mode": "L", "resize": 32, "crop": 28})
    code, output = web(model, "--out", tmp_path / "site", "--samples", DEMO / "images")
    assert code == 0, output
    site = tmp_path / "site"
    files = {"index.html", "app.js", "model.json", "model.lrp.onnx", "ort", "samples", ".lrpgraph-site"}
    assert {p.name for p in site.iterdir()} == files
    assert sorted(p.name for p in (site / "ort").iterdir()) == sorted(ORT_FILES)
    config = json.loads((site / "model.json").read_text())
    assert config["input"] == "image" and config["shape"] == [1, 28, 28] and config["relevance"] == "relevance"
    assert config["pipeline"] == {"mode": "L", "scale": 255.0, "bgr": False, "shorter": 32, "crop": [28, 28]}
    assert len(config["samples"]) == 12 and config["labels"][0] == "a"
    assert config["webgpu_blocked"].startswith("MaxPool with indices")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no build folder left
    code, output = web(model, "--out", site)
    assert code == 2 and "exists; pass --force" in output
    assert web(model, "--out", site, "--force")[0] == 0 and (site / "samples").exists() is False


def test_pipeline_steps():
    assert pipeline(None, [3, 224, 224]) == {"mode": "RGB", "scale": 255.0, "bgr": False, "cover": [224, 224],
                                             "crop": [224, 224]}  # the aspect ratio kept
    steps = pipeline({"resize": [40, 30], "channel_order": "BGR", "mean": [0.5, 0.4, 0.3], "std": 0.2,
                      "scale": 1.0}, [3, 40, 30])
    assert steps == {"mode": "RGB", "scale": 1.0, "bgr": True, "size": [40, 30], "mean": [0.5, 0.4, 0.3], "std": [0.2]}


@pytest.mark.parametrize("case", ["not converted", "target index", "not a site", "no onnxruntime-web"])
def test_bad_input(tmp_path, ort_files, monkeypatch, case):
    model, out = converted(tmp_path), tmp_path / "site"
    expected = {"not converted": "convert it first", "target index": "--target top",
                "not a site": "is no lrpgraph site", "no onnxruntime-web": "make web"}[case]
    if case == "not converted":
        model = DEMO / "model.onnx"
    elif case == "target index":
        model = converted(tmp_path, target="index")
    elif case == "not a site":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    else:
        shutil.rmtree(ort_files)
    code, output = web(model, "--out", out, "--force")
    assert code == 2 and expected in output and "Traceback" not in output and len(output.strip().splitlines()) == 1
    assert (out / "keep.txt").read_text() == "mine" if case == "not a site" else not out.exists()


def test_demo_web(tmp_path, ort_files):
    result = CliRunner().invoke(main, ["demo", "--web", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "demo" / "site" / "model.json").read_text())
    assert config["webgpu_blocked"] is None and len(config["samples"]) == 12  # converted with --webgpu
    assert config["title"] == "lrpgraph demo: Fashion-MNIST, epsilon-plus"

"""Acceptance (runtime 2): `lrpgraph explain` on a folder of real images (the shipped samples) with one
corrupt file: every output file, the JSON lines, the exit code, and the corrupt file named."""

import json
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from lrpgraph.cli import main
from lrpgraph.cli_demo import DEMO_DIR


def test_explain_folder_of_samples_with_a_corrupt_image(tmp_path):
    runner = CliRunner()
    model = tmp_path / "demo.lrp.onnx"
    result = runner.invoke(main, ["convert", str(Path(DEMO_DIR) / "model.onnx"), "-o", str(model), "--labels",
                                  str(Path(DEMO_DIR) / "labels.txt"), "--mode", "L"])
    assert result.exit_code == 0, result.output
    images = tmp_path / "images"
    shutil.copytree(Path(DEMO_DIR) / "images", images / "samples")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    out = tmp_path / "out"
    result = runner.invoke(main, ["explain", str(model), str(images), "--out", str(out), "--overlay",
                                  "--format", "png,npy", "--json", "--html", "--quiet"])
    assert result.exit_code == 1, result.output  # one image failed, the others were explained
    assert len([line for line in result.stderr.splitlines() if "broken.png" in line]) == 1, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    samples = sorted((images / "samples").glob("*.png"))
    good = [r for r in records if "error" not in r]
    assert len(good) == len(samples) == 12
    assert [r for r in records if "error" in r][0]["file"].endswith("broken.png")
    labels = (Path(DEMO_DIR) / "labels.txt").read_text().split("\n")
    for record in good:
        stem = Path(record["file"]).stem
        assert record["predicted_label"] == labels[record["predicted"]]
        assert record["explained"] == record["predicted"]
        assert len(record["top5"]) == 5
        relevance = np.load(out / "samples" / f"{stem}.relevance.npy")
        assert relevance.shape == (1, 28, 28)
        assert abs(relevance.sum() - record["relevance_sum"]) <= 1e-4 * max(1.0, abs(relevance.sum()))
        for kind in ("relevance", "overlay"):
            with Image.open(out / "samples" / f"{stem}.{kind}.png") as picture:
                assert picture.size == (28, 28)
    page = (out / "index.html").read_text()
    assert all(f"{p.stem}.overlay.png" in page for p in samples)
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*"))

"""The demo page: self-contained (it still shows everything after the folder is moved), with column
headers, a colour bar with its meaning, the probability labelled, true vs predicted class with mistakes
flagged, and heatmaps enlarged with nearest-neighbour pixels next to the raw .npy."""

import re
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from lrpgraph.cli import main
from lrpgraph.cli_demo import DEMO_DIR

IMAGES = sorted(Path(DEMO_DIR, "images").glob("*.png"))


def test_demo_page_is_self_contained_and_labelled(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "demo", moved)
    page = (moved / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(links) >= 4 * len(IMAGES)
    for link in links:
        assert not link.startswith(("/", "file:", "http")) and ".." not in link, link
        assert (moved / link).is_file(), link
    headers = re.findall(r"<th>([^<]+)</th>", page)
    assert headers == ["image", "input", "heatmap", "overlay", "prediction / true class"]
    assert "linear-gradient" in page and "Red is positive" in page and "its own largest |relevance|" in page
    assert page.count("probability: ") == len(IMAGES)
    labels = (Path(DEMO_DIR) / "labels.txt").read_text().splitlines()
    predicted = dict(re.findall(r"^\s+(\S+\.png)\s+-> (.+?)(?:\s+\(true|$)", result.output, flags=re.M))
    wrong = [name for name, label in predicted.items() if labels[int(name[:2])] != label]
    assert len(predicted) == len(IMAGES) and page.count("misclassified</span>") == len(wrong)
    assert page.count("<tr class=wrong>") == len(wrong) and f"{len(wrong)} misclassified" in page
    for path in IMAGES:
        raw = np.load(moved / f"{path.stem}.relevance.npy")
        assert raw.shape == (1, 28, 28)
        with Image.open(moved / f"{path.stem}.relevance.png") as picture:
            heat = np.asarray(picture.convert("RGB"))
        assert heat.shape == (224, 224, 3)
        small = heat[::8, ::8]
        assert (np.repeat(np.repeat(small, 8, axis=0), 8, axis=1) == heat).all()  # nearest: 8x8 blocks
        sign = np.sign(raw[0])  # red where relevance is positive, blue where negative
        red, blue = small[..., 0].astype(int), small[..., 2].astype(int)
        assert (red[sign > 0] >= blue[sign > 0]).all() and (blue[sign < 0] >= red[sign < 0]).all()

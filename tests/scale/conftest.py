"""Fixtures of the bulk-run tests: the bundled demo model converted (top, index, several heatmaps, IG) and
40 generated images with masks (scale_data.py makes them)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lrpgraph
from scale_data import write_images

DEMO = Path(lrpgraph.__file__).parent / "data" / "demo" / "model.onnx"


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """{name: path} of the demo model converted several ways."""
    folder = tmp_path_factory.mktemp("models")
    labels = (DEMO.parent / "labels.txt").read_text().splitlines()
    variants = {"top": {"labels": labels}, "index": {"target": "index"},
                "several": {"explain": ["lrp=epsilon-plus", "g=gradient"]}, "ig": {"method": "ig", "steps": 128}}
    paths = {}
    for name, options in variants.items():
        paths[name] = str(folder / f"{name}.lrp.onnx")
        lrpgraph.save(lrpgraph.convert(str(DEMO), **options), paths[name])
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """(images folder, masks folder) with 40 images, plus one broken file in the images folder."""
    folder = tmp_path_factory.mktemp("data")
    images, masks = write_images(folder, 40)
    (images / "part0" / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(masks / "part0" / "broken.png")
    return images, masks

"""benchmarks/bias_vit.py end to end on a tiny budget (a 1-layer ViT, 8 training images per class, 1 epoch):
it trains the four rows through the imported cp-lrp graph, writes the per-seed CSV, the markdown generated from
it (keeping the hand-written text around the generated part) and both figures, and its accuracies are what
onnxruntime gives for the written plain models on the dataset builder's test sets."""

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from lrpgraph import datasets

pytestmark = pytest.mark.skipif(not (datasets.fashion_dir() / "t10k-images-idx3-ubyte.gz").is_file(),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
pytest.importorskip("torchvision")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bias_vit.py"
PNG = b"\x89PNG\r\n\x1a\n"


def load_script():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("bias_vit_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bias_vit_runs_and_reports_what_onnxruntime_measures(tmp_path, capsys):
    work, out, figure, vit_figure = tmp_path / "work", tmp_path / "bias_vit.md", tmp_path / "b.png", tmp_path / "v.png"
    script = load_script()
    out.write_text(f"# Title kept\n\n{script.BEGIN}\nold numbers\n{script.END}\n\nNotes kept.\n")
    script.main(["--quick", "--seeds", "0", "--train-per-class", "8", "--test-per-class", "4", "--epochs", "1",
                 "--layers", "1", "--hidden", "16", "--heads", "2", "--mlp", "16", "--examples", "2", "--work",
                 str(work), "--out", str(out), "--figure", str(figure), "--vit-figure", str(vit_figure)])
    printed = capsys.readouterr().out
    with open(work / "bias_vit.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["seed"], r["model"]) for r in rows] == [("0", m) for m in ("plain", "oracle", "selective", "stochastic")]
    text = out.read_text()
    assert text.startswith("# Title kept") and text.rstrip().endswith("Notes kept.") and "old numbers" not in text
    assert "| model | acc. biased |" in text and "| 0 | stochastic |" in text and "stochastic: |confounded" in text
    assert "python benchmarks/bias_vit.py --quick --seeds 0" in text and "| selective |" in printed
    assert figure.read_bytes()[:8] == PNG and vit_figure.read_bytes()[:8] == PNG
    for row in rows:
        path = work / "seed0" / row["model"] / "model.onnx"
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for mode in datasets.MODES:
            data = datasets.biased_fashion_mnist("test", mode, 4, (0, 1, 5, 8), 36, 0)
            logits = session.run(None, {session.get_inputs()[0].name: data.images[:, None] / np.float32(255)})[0]
            assert float(row[f"acc_{mode}"]) == pytest.approx(100 * (logits.argmax(1) == data.labels).mean(), abs=1e-4)
            assert all(0 <= float(row[f"{metric}_{mode}"]) <= 1 for metric in ("bg", "art", "pg"))


def test_oracle_trains_without_the_artefact(tmp_path):
    """The oracle's training images are the plain row's images with the artefact left out (bias 0): the same
    garments and textures, different pixels only in the artefact's 3 x 3 box."""
    script = load_script()
    args = script.parse_args(["--quick", "--train-per-class", "3", "--work", str(tmp_path)])
    folders = script.make_data(args, 0, tmp_path / "data")
    from PIL import Image

    biased = sorted(Path(folders["biased"][0]).rglob("*.png"))
    unbiased = sorted(Path(folders["unbiased"][0]).rglob("*.png"))
    assert len(biased) == len(unbiased) == 12
    for a, b in zip(biased, unbiased):
        differ = np.asarray(Image.open(a)) != np.asarray(Image.open(b))
        rows, cols = np.nonzero(differ)
        assert differ.any() and np.ptp(rows) < 3 and np.ptp(cols) < 3


def test_artefact_share_counts_the_carried_artefacts_box():
    """Relevance only in each image's artefact box gives share 1; uniform relevance gives 9 / 36^2; an image
    without an artefact is scored at its own class's box."""
    script = load_script()
    data = datasets.biased_fashion_mnist("test", "confounded", 2, (0, 1, 5, 8), 36, 0)
    r = np.zeros((len(data.labels), 36, 36))
    for i, k in enumerate(data.artefacts):
        top, left = datasets.artefact_box(int(k), 36)
        r[i, top:top + 3, left:left + 3] = 1.0
    assert script.artefact_share(r, data) == pytest.approx(1.0)
    assert script.artefact_share(np.ones_like(r), data) == pytest.approx(9 / 36 ** 2)
    clean = datasets.biased_fashion_mnist("test", "unbiased", 2, (0, 1, 5, 8), 36, 0)
    top, left = datasets.artefact_box(int(clean.labels[0]), 36)
    one = np.zeros((1, 36, 36))
    one[0, top, left] = 2.0
    one[0, 20, 20] = 2.0
    assert script.artefact_share(one, datasets.BiasedSet(clean.images[:1], clean.masks[:1], clean.labels[:1],
                                                          clean.artefacts[:1], clean.classes)) == pytest.approx(0.5)

"""benchmarks/bias.py end to end on a tiny budget: it trains, scores and draws, and its accuracies are what
onnxruntime gives for the written models on the dataset builder's test sets."""

import csv
import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from lrpgraph import datasets

pytestmark = pytest.mark.skipif(not (datasets.fashion_dir() / "t10k-images-idx3-ubyte.gz").is_file(),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bias.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bias_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bias_benchmark_runs_and_reports_what_onnxruntime_measures(tmp_path, capsys):
    work, out, figure = tmp_path / "work", tmp_path / "bias.md", tmp_path / "bias.png"
    load_script().main(["--quick", "--variants", "plain,stochastic", "--train-per-class", "12", "--test-per-class",
                        "5", "--epochs", "1", "--examples", "2", "--threads", "1", "--work", str(work), "--out",
                        str(out), "--figure", str(figure)])
    printed = capsys.readouterr().out
    assert "| plain |" in printed and "| stochastic |" in printed and "stochastic: |confounded - unbiased|" in printed
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| model | acc. biased |" in out.read_text()
    with open(work / "bias.csv") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"plain", "stochastic"}
    for variant, row in rows.items():
        session = ort.InferenceSession(str(work / "runs" / variant / "model.onnx"), providers=["CPUExecutionProvider"])
        for mode in datasets.MODES:
            data = datasets.biased_fashion_mnist("test", mode, 5, (0, 1, 5, 8), 36, 0)
            logits = session.run(None, {session.get_inputs()[0].name: data.images[:, None] / np.float32(255)})[0]
            assert float(row[f"acc_{mode}"]) == pytest.approx((logits.argmax(1) == data.labels).mean(), abs=1e-6)
            assert 0 <= float(row[f"bg_{mode}"]) <= 1 and 0 <= float(row[f"pg_{mode}"]) <= 1

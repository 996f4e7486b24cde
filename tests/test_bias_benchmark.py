"""benchmarks/bias.py end to end on a tiny budget (it trains, scores, draws, writes the CSV and the markdown
from it, and its accuracies are what onnxruntime gives for the written models on the dataset builder's test
sets), and the acceptance checker (benchmarks/bias_checks.py) on numbers that must fail or pass."""

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from lrpgraph import datasets

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from bias_checks import check, compare_ood  # noqa: E402
from bias_report import BEGIN, END, markdown, read_csv, write_markdown  # noqa: E402

needs_data = pytest.mark.skipif(not (datasets.fashion_dir() / "t10k-images-idx3-ubyte.gz").is_file(),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
SETS = ("biased", "unbiased", "confounded")


def load_script():
    spec = importlib.util.spec_from_file_location("bias_benchmark", BENCHMARKS / "bias.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def accuracies(biased, unbiased, confounded):
    return dict(zip(SETS, (biased, unbiased, confounded)))


GOOD = {"plain": accuracies(99.5, 55.0, 14.0), "oracle": accuracies(92.0, 91.5, 91.0),
        "selective": accuracies(88.0, 87.0, 86.5), "stochastic": accuracies(90.0, 89.0, 88.0)}


def test_checker_passes_a_model_that_behaves_like_the_oracle():
    results = check(GOOD, ["selective", "stochastic"])
    assert len(results) == 1 + 2 * 4
    assert all(held for _, held in results), results
    assert "plain: biased 99.5 - confounded 14.0 = 85.5 points" in results[0][0]


def test_checker_fails_a_model_at_chance_level():
    means = dict(GOOD, selective=accuracies(25.5, 24.8, 25.2))
    results = dict(check(means, ["selective", "stochastic"]))
    failed = [line for line, held in results.items() if not held]
    assert failed and all(line.startswith("selective:") for line in failed)
    # confounded ~ unbiased holds at chance; the checks against plain and the oracle are what catch it
    assert [line.split(" = ")[0] for line in failed] == [
        "selective: confounded 25.2 - plain's confounded 14.0", "selective: confounded 25.2 - plain's unbiased 55.0",
        "selective: oracle's unbiased 91.5 - confounded 25.2"]


@pytest.mark.parametrize("row, numbers, fails", [
    ("plain", accuracies(80.0, 70.0, 65.0), "plain: biased"),  # no shortcut learned: nothing to test
    ("selective", accuracies(95.0, 85.0, 76.0), "selective: |confounded"),  # the artefact still moves it
    ("selective", accuracies(82.0, 81.0, 80.5), "selective: oracle's"),  # 11 points short of the oracle
])
def test_checker_fails_each_criterion_on_its_own(row, numbers, fails):
    results = check(dict(GOOD, **{row: numbers}), ["selective", "stochastic"])
    assert [line for line, held in results if not held and line.startswith(fails)]


def test_ood_comparison_pairs_the_seeds_and_fails_when_an_alternative_is_ahead():
    ood = {"selective": {0: 80.0, 1: 70.0, 2: 75.0}, "rrr": {0: 60.0, 1: 72.0, 2: 70.0},
           "segmenter": {0: 85.0, 1: 74.0}}
    results = compare_ood(ood, ["selective"], ["rrr", "segmenter"])
    (rrr_line, rrr_held), (seg_line, seg_held) = results
    # rrr: differences +20, -2, +5 -> mean 7.67, std sqrt(252.67 / 2) = 11.24; the segmenter shares seeds 0, 1: -5, -4
    assert rrr_held and "differences +20.0, -2.0, +5.0 (std 11.2); mean = 7.7 points" in rrr_line
    assert not seg_held and "differences -5.0, -4.0 (std 0.7); mean = -4.5 points" in seg_line


@needs_data
def test_bias_benchmark_runs_and_reports_what_onnxruntime_measures(tmp_path, capsys):
    """A tiny configuration end to end, with an ISNet variant, both alternatives and the untrained control: the
    control (chance level) fails its checks and the script exits 1; every accuracy in the CSV (the OOD set's too) is
    what onnxruntime gives for the written model on the dataset builder's test sets."""
    work, out, figure = tmp_path / "work", tmp_path / "bias.md", tmp_path / "bias.png"
    out.write_text(f"# kept above\n\n{BEGIN}\nold table\n{END}\n\nkept below\n")
    code = load_script().main(["--quick", "--variants", "stochastic", "--alternatives", "rrr,segmenter,untrained",
                               "--seeds", "0", "--train-per-class", "40", "--test-per-class", "10", "--epochs", "2",
                               "--examples", "2", "--threads", "1", "--work", str(work), "--csv",
                               str(tmp_path / "bias.csv"), "--out", str(out), "--figure", str(figure)])
    printed = capsys.readouterr().out
    for row in ("plain", "oracle", "stochastic", "rrr", "segmenter", "untrained"):
        assert f"| {row} |" in printed
    assert figure.read_bytes()[:8] == (tmp_path / "bias_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_csv(tmp_path / "bias.csv")
    block, held = markdown(rows)
    assert code == 1 and not held
    control = [line for line in block.splitlines() if line.startswith("- untrained:")]
    assert len(control) == 4 and any(line.endswith(": NO") for line in control)
    assert [line for line in block.splitlines() if line.startswith("- stochastic vs rrr: OOD accuracy")]
    text = out.read_text()
    assert text.startswith("# kept above\n\n" + BEGIN) and text.endswith(END + "\n\nkept below\n")
    assert "old table" not in text and block.split("\n\nAll checks hold")[0] in text
    assert [r["model"] for r in rows] == ["plain", "oracle", "stochastic", "rrr", "segmenter", "untrained"]
    with open(tmp_path / "bias.csv") as f:
        assert next(csv.reader(f))[:2] == ["seed", "model"]
    sets = {m: datasets.biased_fashion_mnist("test", m, 10, (0, 1, 5, 8), 36, 0) for m in datasets.MODES}
    sets["ood"] = datasets.ood_set(10, (0, 1, 5, 8), 36, 0)
    for row in rows:
        session = ort.InferenceSession(str(work / "seed0" / "runs" / row["model"] / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        for mode, data in sets.items():
            logits = session.run(None, {session.get_inputs()[0].name: data.images[:, None] / np.float32(255)})[0]
            assert row[f"acc_{mode}"] == pytest.approx(100 * (logits.argmax(1) == data.labels).mean(), abs=1e-4)
            assert 0 <= row[f"bg_{mode}"] <= 1 and 0 <= row[f"pg_{mode}"] <= 1


def test_markdown_block_replaces_only_its_own_part(tmp_path):
    path = tmp_path / "page.md"
    path.write_text(f"intro\n{BEGIN}\nold\n{END}\noutro\n")
    write_markdown(path, f"{BEGIN}\nnew\n{END}")
    assert path.read_text() == f"intro\n{BEGIN}\nnew\n{END}\noutro\n"


def test_loss_weight_per_variant():
    script = load_script()
    assert script.loss_weights("0.5,original=0.6,stochastic=0.7") == {None: 0.5, "original": 0.6, "stochastic": 0.7}
    assert script.loss_weights("0.7") == {None: 0.7}
    for bad in ("0.5,plain=0.6", "original=0.6"):  # not an ISNet variant; no default
        with pytest.raises(SystemExit, match="-P"):
            script.loss_weights(bad)

"""benchmarks/methods_table.py and methods_report.py: the Quantus deletion (PixelFlipping, an independent
implementation) flips whole pixels in the order lrpgraph.metrics.deletion does, so on a model where both can take the
same step the two curves agree; the guided IG claim check holds or fails by the deciding network; a tiny run with
two seeds writes per-seed rows whose mean ± std the generated tables report."""

import io
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from lrpgraph import metrics

pytest.importorskip("quantus")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import methods_report  # noqa: E402
import methods_table  # noqa: E402


def test_quantus_curve_is_lrpgraphs_deletion_curve_after_the_start():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    buffer = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, 3, 6, 6),), buffer, dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (5, 3, 6, 6)).astype(np.float32)
    heat = rng.normal(size=(5, 6, 6))  # distinct values: no ties
    classes = np.array([0, 1, 2, 0, 1])
    # 4 pixels a step: Quantus flips 12 values (12 divides 36 pixels), lrpgraph 4 pixels; 9 steps each
    quantus = methods_table.quantus_curves(net, x, classes, heat, 4)
    mine = metrics.deletion(metrics.Classifier(onnx.load_from_string(buffer.getvalue())), x, heat, classes, step=4)
    assert quantus.shape == (5, 9) and mine.probabilities.shape == (5, 10)
    np.testing.assert_allclose(quantus, mine.probabilities[:, 1:], rtol=1e-4, atol=1e-6)
    assert methods_table.quantus_deletion(net, x, classes, heat, 4) == pytest.approx(
        np.trapezoid(mine.probabilities[:, 1:], dx=1 / 8, axis=1))


def _rows(diffs):
    """CSV-like rows: per network and seed, IG deletion 0.3 and guided IG 0.3 + the given difference."""
    rows = []
    for name, per_seed in diffs.items():
        for seed, d in enumerate(per_seed):
            for key, value in (("ig", 0.3), ("guided_ig", 0.3 + d)):
                rows.append({"network": name, "seed": seed, "explainer": key, "reduction": "abs", "deletion": value})
    return rows


def test_claim_holds_or_not_by_the_deciding_network():
    # guided IG - IG per seed; means: a -0.02, b -0.01, c -0.005, d +0.01, e 0 (a tie is no win)
    diffs = {"a": [-0.03, -0.01], "b": [-0.02, 0.0], "c": [-0.01, 0.0], "d": [0.01, 0.01], "e": [0.0, 0.0]}
    holds, margin, std, per_net, per_seed = methods_report.claim(_rows(diffs), 3)
    assert holds and margin == pytest.approx(0.005) and std == pytest.approx(np.std([-0.01, 0.0], ddof=1))
    assert per_seed == [3, 1] and sorted(per_net) == sorted(diffs)
    diffs["c"] = [0.01, 0.0]  # now only two networks won: the claim fails, and the margin says by how much
    holds, margin, std, _, per_seed = methods_report.claim(_rows(diffs), 3)
    assert not holds and margin == pytest.approx(0.0) and per_seed == [2, 1]
    holds, margin, _, _, _ = methods_report.claim(_rows(diffs), 2)
    assert holds and margin == pytest.approx(0.01)
    lines = methods_report.claim_lines([dict(r, deletion_quantus=r["deletion"]) for r in _rows(diffs)] + [
        dict(r, reduction="signed", deletion_quantus=r["deletion"]) for r in _rows(diffs)], 3)
    assert "**does not hold**" in lines[0] and "wins on 2 (a, b)" in lines[0]


def test_seeds_run_end_to_end(tmp_path):
    """A tiny run with two seeds: one CSV row per seed, explainer and reduction; the generated block's guided IG - IG
    column is the mean and std over the seeds of the CSV's differences; --from-csv gives the same tables."""
    doc = tmp_path / "doc.md"
    doc.write_text(f"before\n{methods_table.BEGIN}\nold\n{methods_table.END}\nafter\n")
    args = ["--networks", "mobilenet", "--seeds", "2", "--epochs", "1", "--train-per-class", "8", "--images", "4",
            "--step", "1024", "--ig-steps", "2", "--samples", "2", "--explainers", "ig,guided_ig",
            "--csv", str(tmp_path / "t.csv"), "--out", str(doc), "--figure", str(tmp_path / "f.png")]
    assert methods_table.main(args) == 0
    rows = methods_report.read_csv(tmp_path / "t.csv")
    assert sorted({(r["seed"], r["explainer"], r["reduction"]) for r in rows}) == sorted(
        (s, k, h) for s in (0, 1) for k in ("ig", "guided_ig", "random") for h in ("signed", "abs"))
    assert len(rows) == 12 and all(0 <= r["deletion"] <= 1 and 0 <= r["insertion"] <= 1 for r in rows)
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("\nafter\n") and "\nold\n" not in text
    ig = {r["seed"]: r["deletion"] for r in rows if r["explainer"] == "ig" and r["reduction"] == "abs"}
    gig = {r["seed"]: r["deletion"] for r in rows if r["explainer"] == "guided_ig" and r["reduction"] == "abs"}
    d = np.array([gig[s] - ig[s] for s in (0, 1)])
    row = next(line for line in text.splitlines() if line.startswith("| mobilenet | abs |"))
    assert row.split(" | ")[4] == f"{d.mean():.3f} ± {d.std(ddof=1):.3f}"
    check = next(line for line in text.splitlines() if line.startswith("- the check (abs reduction, lrpgraph)"))
    assert ("**holds**" if d.mean() < 0 else "**does not hold**") in check and f"{int((d < 0).sum())} of 2" in row
    generated = text[text.index(methods_table.BEGIN):]
    again = methods_table.report(rows, methods_table.parse_args(args), args, None, {})
    assert again.split("The guided IG paper's claim")[1] in generated

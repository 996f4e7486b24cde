"""The bulk options of `lrpgraph explain` and `lrpgraph evaluate`: runs without ray (and without pyarrow where no
Parquet is asked for), one-line errors with exit code 2, and evaluate's bulk metrics equal to its plain ones."""

import csv
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from lrpgraph.cli import main

BLOCKED = "import sys\nfor name in {blocked!r}: sys.modules[name] = None\nfrom lrpgraph.cli import main\nmain()\n"


def run_blocked(blocked, *args):
    """The CLI in a fresh interpreter where the modules in blocked cannot be imported."""
    code = BLOCKED.format(blocked=list(blocked))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_explain_parquet_works_without_ray(models, images, tmp_path):
    folder, masks = images
    done = run_blocked(["ray"], "explain", models["top"], folder, "--out", tmp_path / "out", "--parquet", "-q",
                       "--masks", masks)
    assert done.returncode == 1, done.stderr  # 1: the broken image, reported in the errors table
    assert "40 of 41 inputs explained, 1 errors" in done.stderr and "mean relevance_background_fraction" in done.stderr
    assert pq.read_table(tmp_path / "out" / "rows").num_rows == 40
    assert pq.read_table(tmp_path / "out" / "errors").column("id").to_pylist() == [str(folder / "part0" / "broken.png")]
    refused = run_blocked(["ray"], "explain", models["top"], folder, "--out", tmp_path / "o2", "--engine", "ray")
    assert refused.returncode == 2
    assert refused.stderr.strip() == "lrpgraph: error: --engine ray needs Ray Data: pip install 'lrpgraph[ray]'"


def test_plain_explain_needs_neither_pyarrow_nor_ray(models, images, tmp_path):
    folder, _ = images
    plain = run_blocked(["ray", "pyarrow"], "explain", models["top"], folder / "part1", "--out", tmp_path / "h", "-q")
    assert plain.returncode == 0, plain.stderr
    assert len(list((tmp_path / "h").glob("*.relevance.png"))) == 20
    bulk = run_blocked(["ray", "pyarrow"], "explain", models["top"], folder, "--out", tmp_path / "p", "--parquet")
    assert bulk.returncode == 2
    assert bulk.stderr.strip() == "lrpgraph: error: Parquet output needs pyarrow: pip install 'lrpgraph[parquet]'"


def one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrpgraph: error:") and all(w in lines[0] for w in words), lines


def test_bad_options_are_one_line(models, images, tmp_path):
    folder, _ = images
    runner = CliRunner()
    base = ["explain", models["top"], str(folder), "--out", str(tmp_path / "o")]
    one_line_error(runner.invoke(main, base + ["--workers", "2"]), "--workers", "--parquet")
    one_line_error(runner.invoke(main, base + ["--parquet", "--overlay"]), "--overlay", "bulk")
    one_line_error(runner.invoke(main, base + ["--parquet", "--format", "gif"]), "gif")
    pq.write_table(pa.table({"picture": [b"x"]}), tmp_path / "x.parquet")
    one_line_error(runner.invoke(main, ["explain", models["top"], str(tmp_path / "x.parquet"), "--out",
                                        str(tmp_path / "o")]), "no column image", "--image-column")
    one_line_error(runner.invoke(main, ["evaluate", models["top"], str(folder), "--parquet", "--metrics", "pointing",
                                        "--out", str(tmp_path / "e")]), "--masks")


def test_evaluate_bulk_equals_plain_evaluate(models, images, tmp_path):
    folder, masks = images
    runner = CliRunner()
    metrics = "deletion,insertion,background,pointing,conservation"
    common = ["evaluate", models["top"], str(folder / "part1"), "--masks", str(masks / "part1"), "--metrics", metrics]
    plain = runner.invoke(main, common + ["--out", str(tmp_path / "plain"), "--no-plots"])
    bulk = runner.invoke(main, common + ["--out", str(tmp_path / "bulk"), "--parquet", "--batch-size", "6"])
    assert plain.exit_code == 0 and bulk.exit_code == 0, (plain.output, bulk.output)
    with open(tmp_path / "plain" / "metrics.csv") as f:
        want = sorted(csv.DictReader(f), key=lambda r: r["file"])
    got = pq.read_table(tmp_path / "bulk" / "rows").to_pandas().sort_values("id").reset_index(drop=True)
    assert got.id.tolist() == [r["file"] for r in want] and "relevance" not in got.columns
    assert got.explained.tolist() == [int(r["class"]) for r in want]
    for column in ("deletion_auc", "insertion_auc", "background_fraction"):
        np.testing.assert_allclose(got[f"relevance_{column}"], [float(r[column]) for r in want], rtol=1e-6)
    # the seed logit: the converted model's (bulk) or the plain model part's (evaluate), equal to ~1e-6; the ratio
    # |sum R - s| / |s| magnifies that where s is small
    np.testing.assert_allclose(got.relevance_conservation_error, [float(r["conservation_error"]) for r in want],
                               rtol=1e-4)
    assert got.relevance_pointing_hit.astype(float).tolist() == [float(r["pointing_hit"]) for r in want]
    assert "| relevance |" in bulk.output

import json
import os

import numpy as np
import pytest
from conftest import reference_relevance
from PIL import Image

from lrpgraph.errors import LrpgraphError
from lrpgraph.runtime.explain import explain_paths, output_bases, write_index_html
from lrpgraph.runtime.images import load_image
from lrpgraph.runtime.session import ExplainSession

LABELS = ["cat", "dog", "fox & hound", "<owl>"]
RECORD_KEYS = {"file", "outputs", "predicted", "predicted_label", "top5", "explained", "explained_label",
               "explained_score", "explained_score_kind", "relevance_sum"}


def make_folder(root):
    rng = np.random.default_rng(5)
    names = ["a.png", "a.jpg", "b.png", "sub/a.png", "sub/deeper/c.bmp", "sub/d.webp"]
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)).save(path)
    (root / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return names


def all_files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def test_explain_paths_writes_everything_and_reports_the_corrupt_file(make_model, tmp_path, capsys):
    images = tmp_path / "images"
    names = make_folder(images)
    model, weight, _ = make_model("index", labels=LABELS)
    session = ExplainSession(model)
    out = images / "out"  # inside the input folder: its files must not be read back as inputs
    summary = explain_paths(session, [images], out, batch_size=4, formats="png,npy", overlay=True,
                            json_lines=out / "records.jsonl", progress=True)

    assert summary["found"] == 7 and summary["explained"] == 6
    assert [f["file"] for f in summary["failed"]] == [str(images / "sub" / "broken.png")]
    assert "broken.png" in capsys.readouterr().err
    assert all_files(out) == sorted(
        [f"{base}.{kind}" for base in ["a", "a.png", "b", "sub/a", "sub/deeper/c", "sub/d"]
         for kind in ["relevance.png", "overlay.png", "relevance.npy"]] + ["records.jsonl"]
    )
    lines = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(lines) == 7 and sum("error" in line for line in lines) == 1
    for record in summary["records"]:
        assert set(record) == RECORD_KEYS
        x = load_image(record["file"], None, (3, 6, 5))[None]
        logits = x.reshape(1, -1) @ weight
        relevance = np.load(out / record["outputs"]["relevance_npy"])
        assert record["predicted"] == record["explained"] == int(logits.argmax())
        assert record["predicted_label"] == LABELS[record["predicted"]]
        want = reference_relevance(x, weight, [record["explained"]])[0]
        np.testing.assert_allclose(relevance, want, rtol=1e-5, atol=1e-6)
        assert record["relevance_sum"] == pytest.approx(float(relevance.astype(np.float64).sum()))
        probabilities = [entry["probability"] for entry in record["top5"]]
        assert len(probabilities) == 4 and probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1.0)
        assert Image.open(out / record["outputs"]["overlay_png"]).size == (5, 6)
    assert {r["file"] for r in summary["records"]} == {str(images / n) for n in names}
    assert json.loads(json.dumps(summary["records"])) == summary["records"]


def test_one_target_for_all_images(make_model, tmp_path):
    make_folder(tmp_path / "images")
    session = ExplainSession(make_model("index")[0])
    summary = explain_paths(session, tmp_path / "images", tmp_path / "out", target=3, progress=False, on_failure=None)
    assert {r["explained"] for r in summary["records"]} == {3}


def test_bad_target_fails_before_anything_is_written(make_model, tmp_path):
    make_folder(tmp_path / "images")
    with pytest.raises(LrpgraphError, match="target 'top'"):
        explain_paths(ExplainSession(make_model("top")[0]), tmp_path / "images", tmp_path / "out", target=1)
    with pytest.raises(LrpgraphError, match="one target class for all images"):
        explain_paths(ExplainSession(make_model("index")[0]), tmp_path / "images", tmp_path / "out", target=[1, 2])
    with pytest.raises(LrpgraphError, match="unknown output format"):
        explain_paths(ExplainSession(make_model("index")[0]), tmp_path / "images", tmp_path / "out", formats="png,jpg")
    assert not (tmp_path / "out").exists()


def test_no_images_found(make_model, tmp_path):
    with pytest.raises(LrpgraphError, match="no image files found"):
        explain_paths(ExplainSession(make_model("top")[0]), tmp_path, tmp_path / "out")


def test_json_lines_to_stdout_and_probability_models(make_model, tmp_path, capsys):
    make_folder(tmp_path / "images")
    session = ExplainSession(make_model("top", probabilities=True)[0])
    summary = explain_paths(session, tmp_path / "images", tmp_path / "out", json_lines="-", progress=False,
                            on_failure=None)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 7 and lines[0]["file"].endswith("a.jpg")
    record = summary["records"][0]
    x = load_image(record["file"], None, (3, 6, 5))[None]
    probabilities, _ = session.explain(x)
    assert record["top5"][0]["probability"] == pytest.approx(float(probabilities.max()))  # not softmaxed twice


def test_output_names_do_not_clash():
    from pathlib import Path

    found = [(Path(p), Path(p)) for p in ["a.png", "a.jpg", "A.png", "sub/a.png", "x.tar.png", "x.tar.jpg"]]
    names = [str(b) for b in output_bases(found)]
    assert names == ["a", "a.jpg", "A.png", "sub/a", "x.tar", "x.tar.jpg"]
    assert len({n.lower() for n in names}) == len(names)


def test_index_html_links_and_escapes(make_model, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (5, 6), (9, 9, 9)).save(images / "<b>&.png")
    session = ExplainSession(make_model("index", labels=LABELS)[0])
    out = tmp_path / "out"
    summary = explain_paths(session, images, out, overlay=True, progress=False)
    page = write_index_html(out, summary["records"])
    text = open(page, encoding="utf-8").read()
    assert "<b>&" not in text.replace("<b>&lt;", "") and "&lt;b&gt;&amp;.png" in text
    assert 'src="../images/%3Cb%3E%26.png"' in text
    assert 'src="%3Cb%3E%26.relevance.png"' in text and 'src="%3Cb%3E%26.overlay.png"' in text
    assert all_files(out) == ["<b>&.overlay.png", "<b>&.relevance.png", "index.html"]

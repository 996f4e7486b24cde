"""The local engine of bulk runs against direct ExplainSession calls and numpy formulas: rows, errors, masks,
targets from a Parquet column, several heatmaps, float16 and PNG columns, --resume and the summary."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from scale_data import garment, png_bytes, write_images
from lrpgraph import scale
from lrpgraph.errors import LrpgraphError
from lrpgraph.runtime import ExplainSession
from lrpgraph.runtime.images import find_images, load_image


def read_rows(out):
    return pq.read_table(out / "rows").to_pandas().sort_values("id").reset_index(drop=True)


def read_errors(out):
    return pq.read_table(out / "errors").to_pandas()


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_rows_match_explain_session_and_numpy(models, images, tmp_path):
    folder, masks = images
    summary = scale.run([folder], models["top"], tmp_path / "out", scale.JobOptions(batch_size=7), masks_dir=masks,
                        progress=False)
    rows, errors = read_rows(tmp_path / "out"), read_errors(tmp_path / "out")
    files = [str(f) for f, _ in find_images([folder]) if f.name != "broken.png"]
    assert rows.id.tolist() == sorted(files)
    assert errors.id.tolist() == [str(folder / "part0" / "broken.png")]
    assert "cannot read image" in errors.error[0] and "broken.png" in errors.error[0]

    session = ExplainSession(models["top"])
    x = np.stack([load_image(f, session.preprocess, session.input_shape) for f in rows.id])
    logits, relevance = session.explain(x)
    shape = tuple(rows["shape"][0])
    got = np.stack([np.asarray(r, np.float32).reshape(shape) for r in rows.relevance])
    np.testing.assert_allclose(got, relevance, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.stack(rows.logits), logits, atol=1e-6, rtol=0)
    p = softmax(logits)
    assert rows.predicted.tolist() == p.argmax(1).tolist() == rows.explained.tolist()
    np.testing.assert_allclose(rows.probability, p.max(1), rtol=1e-9)
    assert rows.predicted_label.tolist() == [session.labels[k] for k in p.argmax(1)]
    np.testing.assert_allclose(rows.relevance_sum, relevance.astype(np.float64).reshape(len(x), -1).sum(1), rtol=1e-9)

    mask = np.stack([np.asarray(Image.open(str(f).replace(str(folder), str(masks)))) > 0 for f in rows.id])
    heat = np.abs(relevance.astype(np.float64)).sum(1)
    np.testing.assert_allclose(rows.relevance_background_fraction, (heat * ~mask).sum((1, 2)) / heat.sum((1, 2)),
                               rtol=1e-9)
    peaks = relevance.sum(1).reshape(len(x), -1).argmax(1)
    assert rows.relevance_pointing_hit.tolist() == mask.reshape(len(x), -1)[np.arange(len(x)), peaks].tolist()

    assert (summary["inputs"], summary["explained"], summary["errors"]) == (41, 40, 1)
    counts = np.bincount(p.argmax(1), minlength=10)
    assert sum(summary["classes"].values()) == 40
    assert {k.split(" ")[0]: v for k, v in summary["classes"].items()} == {str(k): int(c) for k, c in
                                                                            enumerate(counts) if c}
    assert summary["means"]["relevance_background_fraction"] == pytest.approx(
        rows.relevance_background_fraction.mean(), rel=1e-12)
    assert summary["slowest_batch"]["seconds"] == max(rows.batch_seconds.max(), errors.batch_seconds.max())


def test_parquet_input_with_targets_masks_and_bad_records(models, tmp_path):
    rng = np.random.default_rng(3)
    pairs = [garment(rng) for _ in range(12)]
    images = [png_bytes(image) for image, _ in pairs]
    masks = [png_bytes(mask.astype(np.uint8) * 255) for _, mask in pairs]
    targets = [int(t) for t in rng.integers(0, 10, 12)]
    images[4], images[9] = b"garbage", None
    targets[6] = 12  # out of range: an error row, the job goes on
    table = pa.table({"key": [f"k{i:02d}" for i in range(12)], "img": images, "seg": masks, "cls": targets})
    pq.write_table(table, tmp_path / "data.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 nonsense")
    columns = {"image": "img", "mask": "seg", "target": "cls", "id": "key"}
    scale.run([str(tmp_path / "*.parquet")], models["index"], tmp_path / "out", scale.JobOptions(batch_size=5),
              columns=columns, progress=False)
    rows, errors = read_rows(tmp_path / "out"), read_errors(tmp_path / "out").sort_values("id")
    assert errors.id.tolist() == [str(tmp_path / "broken.parquet"), "k04", "k06", "k09"]
    assert "out of range" in errors.error.iloc[2] and "null" in errors.error.iloc[3]
    good = [i for i in range(12) if i not in (4, 6, 9)]
    assert rows.id.tolist() == [f"k{i:02d}" for i in good]
    session = ExplainSession(models["index"])
    x = np.stack([np.asarray(Image.open(io.BytesIO(images[i])), np.float32)[None] / 255 for i in good])
    logits, relevance = session.explain(x, np.array([targets[i] for i in good]))
    assert rows.explained.tolist() == [targets[i] for i in good]
    np.testing.assert_allclose(np.stack(rows.relevance).reshape(relevance.shape), relevance, atol=1e-6, rtol=0)
    heat = np.abs(relevance.astype(np.float64)).sum(1)
    inside = np.stack([pairs[i][1] for i in good])
    np.testing.assert_allclose(rows.relevance_background_fraction, (heat * ~inside).sum((1, 2)) / heat.sum((1, 2)),
                               rtol=1e-9)


def test_several_heatmaps_float16_png_and_resume(models, tmp_path):
    folder, _ = write_images(tmp_path / "data", 10, seed=5, masks=False)
    files = sorted(str(f) for f, _ in find_images([folder]))
    options = scale.JobOptions(batch_size=4, dtype="float16", png=True)
    first = scale.run(files[:6], models["several"], tmp_path / "out", options, progress=False)
    again = scale.run([folder], models["several"], tmp_path / "out", options, resume=True, progress=False)
    assert (first["explained"], again["explained"], again["skipped"]) == (6, 4, 6)
    rows = read_rows(tmp_path / "out")
    assert rows.id.tolist() == files  # every input once over both runs
    session = ExplainSession(models["several"])
    x = np.stack([load_image(f, session.preprocess, session.input_shape) for f in files])
    _, relevance = session.explain(x)
    for output in ("relevance_lrp", "relevance_g"):
        got = np.stack(rows[output]).reshape(relevance[output].shape)
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got, relevance[output].astype(np.float16))
        picture = Image.open(io.BytesIO(rows[f"{output}_png"][0]))
        assert picture.size == (28, 28) and picture.mode == "RGB"


def test_bad_input_is_one_line(models, tmp_path):
    with pytest.raises(LrpgraphError, match="matches no file"):
        scale.run([str(tmp_path / "*.parquet")], models["top"], tmp_path / "out", progress=False)
    pq.write_table(pa.table({"picture": [b"x"]}), tmp_path / "d.parquet")
    with pytest.raises(LrpgraphError, match="has no column image"):
        scale.run([str(tmp_path / "d.parquet")], models["top"], tmp_path / "out", progress=False)
    pq.write_table(pa.table({"image": [b"x"], "cls": [1]}), tmp_path / "t.parquet")
    with pytest.raises(LrpgraphError, match="--target-column needs a model that takes a target"):
        scale.run([str(tmp_path / "t.parquet")], models["top"], tmp_path / "out", columns={"target": "cls"},
                  progress=False)
    with pytest.raises(LrpgraphError, match="unknown engine"):
        scale.run([str(tmp_path / "d.parquet")], models["top"], tmp_path / "out", engine="spark", progress=False)
    with pytest.raises(LrpgraphError, match="float32 or float16"):
        scale.JobOptions(dtype="int8").check()

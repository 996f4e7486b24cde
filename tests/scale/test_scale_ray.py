"""The Ray engine on a real local Ray cluster (two actor processes): its Parquet equals the local engine's row for
row (images, and token ids of a text model), with the rows written by the actors (the driver receives only counts);
an actor killed by its pid mid-job is restarted and the output still has every input exactly once; the
Python API on ray.data.read_images. The cluster is shut down at the end and no ray process is left."""

import importlib.util
import os
import signal
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

import pyarrow as pa

from scale_data import command, descendants, read_s3, s3_server, token_model, token_table, upload, write_images
from lrpgraph import scale
from lrpgraph.scale import output, ray_engine

ray = pytest.importorskip("ray")  # the test extra installs it (lrpgraph[ray])


@pytest.fixture(scope="module")
def bucket():
    """A local S3 server started before the cluster, so that the cluster's processes inherit its AWS_* variables
    (None without moto)."""
    if importlib.util.find_spec("moto") is None:
        yield None
        return
    with s3_server() as s3:
        yield s3


@pytest.fixture(scope="module")
def cluster(bucket):
    """A local cluster: 3 logical CPUs (two actors and the read tasks), a 200 MB object store, no dashboard."""
    ray.init(num_cpus=3, object_store_memory=200 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    started = descendants()
    assert any("raylet" in command(p) for p in started)  # the cluster runs below this process
    try:
        yield ray
    finally:
        started |= descendants()  # the cluster's processes, workers included, before it stops
        ray.shutdown()
        deadline = time.monotonic() + 20
        while [p for p in started if command(p)] and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {p: command(p)[:60] for p in started if command(p)}
        assert not left, f"processes left running: {left}"


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """300 generated images with masks, plus two unreadable files."""
    folder = tmp_path_factory.mktemp("many")
    images, masks = write_images(folder, 300, seed=11)
    for name in ("part0/empty.png", "part1/text.png"):
        (images / name).write_bytes(b"" if "empty" in name else b"hello")
    return images, masks


def tables(out):
    rows = pq.read_table(out / "rows").to_pandas().sort_values("id").reset_index(drop=True)
    errors = pq.read_table(out / "errors").to_pandas().sort_values("id").reset_index(drop=True)
    return rows, errors


def test_ray_parquet_equals_local_row_for_row(cluster, models, many, tmp_path, monkeypatch):
    images, masks = many
    options = scale.JobOptions(batch_size=16)
    local = scale.run([images], models["top"], tmp_path / "local", options, masks_dir=masks, progress=False)
    received, tables_of = [], ray_engine.tables

    def counted(*args, **kw):  # what reaches the driver from the actors
        for table in tables_of(*args, **kw):
            received.append(table)
            yield table

    monkeypatch.setattr(ray_engine, "tables", counted)
    remote = scale.run([images], models["top"], tmp_path / "ray", options, engine="ray", workers=2,
                       masks_dir=masks, progress=False)
    assert (remote["explained"], remote["errors"], remote["duplicates"]) == (300, 2, 0)
    # the actors wrote the rows; the driver got one line of counts per batch, never a relevance array
    assert received and all(t.column_names == ["counts"] for t in received)
    assert sum(t.num_rows for t in received) == 19 and max(t.nbytes for t in received) < 2000
    assert sum(t.nbytes for t in received) < 300 * 28 * 28 * 4 / 100
    a, a_errors = tables(tmp_path / "local")
    b, b_errors = tables(tmp_path / "ray")
    assert a.columns.tolist() == b.columns.tolist() and len(a) == len(b) == 300
    assert a_errors[["id", "error"]].equals(b_errors[["id", "error"]])
    for column in a.columns:
        if column in ("relevance", "logits"):
            assert max(np.abs(np.asarray(x) - np.asarray(y)).max() for x, y in zip(a[column], b[column])) <= 1e-6
        elif column == "shape":
            assert all(list(x) == list(y) for x, y in zip(a[column], b[column]))
        elif column not in ("batch", "batch_seconds"):  # how Ray bundles records into batches is its own
            assert a[column].equals(b[column]), column
    assert local["classes"] == remote["classes"]
    assert local["means"] == pytest.approx(remote["means"], rel=1e-12)


def actor_pids():
    """The pids of this cluster's Explainer actors (Ray titles them ray::MapWorker(MapBatches(Explainer)))."""
    return sorted(p for p in descendants() if command(p).startswith("ray::") and "Explainer" in command(p))


def test_killed_actor_job_completes_every_input_once(cluster, models, tmp_path, monkeypatch):
    images, _ = write_images(tmp_path / "data", 96, seed=12, masks=False)
    (images / "part1" / "bad.png").write_bytes(b"\x89PNG broken")
    killed = []
    merge = output.Summary.merge

    def merge_then_kill(self, counts):  # after the first finished batch: kill one actor by its pid
        if not killed:
            pids = actor_pids()
            assert len(pids) == 2, pids
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
        return merge(self, counts)

    monkeypatch.setattr(output.Output, "add", None)  # the actors write the rows; the driver only counts
    monkeypatch.setattr(output.Summary, "merge", merge_then_kill)
    summary = scale.run([images], models["ig"], tmp_path / "out", scale.JobOptions(batch_size=4), engine="ray",
                        workers=2, progress=False)
    assert killed and killed[0] not in actor_pids()
    rows, errors = tables(tmp_path / "out")
    expected = sorted(str(images / f"part{i % 2}" / f"img_{i:04d}.png") for i in range(96))
    assert rows.id.tolist() == expected  # every input exactly once: none lost, none twice
    assert errors.id.tolist() == [str(images / "part1" / "bad.png")] and "cannot read image" in errors.error[0]
    assert (summary["explained"], summary["errors"]) == (96, 1)
    assert np.isfinite(np.stack(rows.relevance)).all()


def test_python_api_on_read_images(cluster, models, tmp_path):
    images, _ = write_images(tmp_path / "data", 20, seed=13, masks=False)
    ds = ray.data.read_images(str(images), include_paths=True)
    out = scale.explain(ds, models["top"], batch_size=8, concurrency=2).to_pandas()
    local = scale.run([images], models["top"], tmp_path / "local", scale.JobOptions(batch_size=8), progress=False)
    a, _ = tables(tmp_path / "local")
    out["id"] = ["/" + key.lstrip("/") for key in out.id]
    out = out.sort_values("id").reset_index(drop=True)
    assert out.id.tolist() == a.id.tolist() and local["explained"] == 20 and out.error.isna().all()
    assert max(np.abs(np.asarray(x) - np.asarray(y)).max() for x, y in zip(a.relevance, out.relevance)) <= 1e-6
    assert out.predicted.tolist() == a.predicted.tolist()


def test_token_model_ray_rows_equal_local(cluster, tmp_path):
    pytest.importorskip("transformers")
    model, _ = token_model(tmp_path)
    table = pa.concat_tables([token_table(60, seed=5), pa.table({"id": ["far"], "input_ids": [[3, 999]],
                                                                 "attention_mask": [[1, 1]], "text": ["w3"]})])
    pq.write_table(table, tmp_path / "seqs.parquet", row_group_size=16)
    options, columns = scale.JobOptions(batch_size=8), {"tokens": "input_ids"}
    runs = [scale.run([tmp_path / "seqs.parquet"], model, tmp_path / engine, options, engine=engine, workers=2,
                      columns=columns, progress=False) for engine in ("local", "ray")]
    assert [(r["explained"], r["errors"], r["duplicates"]) for r in runs] == [(60, 1, 0)] * 2
    a, a_errors = tables(tmp_path / "local")
    b, b_errors = tables(tmp_path / "ray")
    assert a_errors[["id", "error"]].equals(b_errors[["id", "error"]]) and a_errors.id.tolist() == ["far"]
    assert a.id.tolist() == b.id.tolist() == sorted(table.column("id").to_pylist()[:60])
    for column in ("tokens", "shape"):
        assert all(list(x) == list(y) for x, y in zip(a[column], b[column])), column
    for column in ("relevance", "logits"):
        assert max(np.abs(np.asarray(x) - np.asarray(y)).max() for x, y in zip(a[column], b[column])) <= 1e-6
    for column in ("predicted", "explained", "probability", "relevance_sum"):
        assert np.allclose(a[column], b[column], rtol=1e-6, atol=1e-9), column
    # the Python API on a ray Dataset of Arrow rows: token ids and attention_mask as columns
    ds = ray.data.from_arrow(table.slice(0, 60).drop_columns(["text"]))
    api = scale.explain(ds, model, batch_size=8, concurrency=2, columns={"tokens": "input_ids"}).to_pandas()
    api = api.sort_values("id").reset_index(drop=True)
    assert api.id.tolist() == a.id.tolist() and api.error.isna().all()
    assert max(np.abs(np.asarray(x) - np.asarray(y)).max() for x, y in zip(a.relevance, api.relevance)) <= 1e-6


def test_actors_read_and_write_an_object_store(cluster, bucket, models, tmp_path):
    if bucket is None:
        pytest.skip("moto (the test extra) is not installed")
    images, _ = write_images(tmp_path / "data", 40, seed=14, masks=False)
    upload(bucket, images, "ray/in")
    options = scale.JobOptions(batch_size=8)
    scale.run([images], models["top"], tmp_path / "local", options, progress=False)
    remote = scale.run(["s3://audit/ray/in/"], models["top"], "s3://audit/ray/out", options, engine="ray", workers=2,
                       progress=False)
    assert (remote["explained"], remote["errors"]) == (40, 0)
    a, _ = tables(tmp_path / "local")
    b = read_s3(bucket, "ray/out")
    assert b.id.tolist() == sorted(k.replace(str(images), "s3://audit/ray/in") for k in a.id)
    a = a.assign(id=[k.replace(str(images), "s3://audit/ray/in") for k in a.id]).sort_values("id")
    assert max(np.abs(np.asarray(x) - np.asarray(y)).max() for x, y in zip(a.relevance, b.relevance)) <= 1e-6
    assert a.predicted.tolist() == b.predicted.tolist()

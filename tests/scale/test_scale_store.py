"""Bulk runs on an object store: inputs and --out as s3:// URIs, through pyarrow's S3 file system, against a local
S3 server (moto's server mode on 127.0.0.1, no network). The rows written to the bucket equal the local engine's
on the same files on disk; --resume reads the bucket; the CLI takes the URIs."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scale_data import garment, png_bytes, read_s3, s3_server, upload, write_images
from lrpgraph import scale
from lrpgraph.cli import main
from lrpgraph.errors import LrpgraphError

pytest.importorskip("moto.server")  # the test extra installs moto[s3] and flask


@pytest.fixture(scope="module")
def bucket():
    """A pyarrow S3FileSystem on a local moto server with a bucket `audit`; AWS_* variables point URIs at it."""
    with s3_server() as s3:
        yield s3


def read(s3, folder, table="rows"):
    return read_s3(s3, folder, table)


def local_rows(out):
    return pq.read_table(out / "rows").to_pandas().sort_values("id").reset_index(drop=True)


def same_rows(a, b):
    """Every column equal (relevance and logits within 1e-6); batch and batch_seconds are the run's own."""
    assert a.columns.tolist() == b.columns.tolist() and len(a) == len(b)
    for column in a.columns:
        if column in ("relevance", "logits", "shape"):
            assert max(np.abs(np.asarray(x) - np.asarray(y)).max() for x, y in zip(a[column], b[column])) <= 1e-6
        elif column not in ("batch", "batch_seconds"):
            assert a[column].equals(b[column]), column


def test_images_and_parquet_from_s3_to_s3_equal_local(bucket, models, tmp_path):
    images, _ = write_images(tmp_path / "data", 24, seed=21, masks=False)
    (images / "part0" / "broken.png").write_bytes(b"not a png")
    rng = np.random.default_rng(22)
    table = pa.table({"id": [f"r{i}" for i in range(12)], "image": [png_bytes(garment(rng)[0]) for _ in range(12)]})
    (tmp_path / "tables").mkdir()
    pq.write_table(table, tmp_path / "tables" / "records.parquet", row_group_size=5)
    upload(bucket, images, "in/images")
    upload(bucket, tmp_path / "tables", "in/tables")
    options = scale.JobOptions(batch_size=8)
    local = scale.run([images, tmp_path / "tables" / "records.parquet"], models["top"], tmp_path / "out", options,
                      progress=False)
    remote = scale.run(["s3://audit/in/images/", "s3://audit/in/tables/*.parquet"], models["top"], "s3://audit/out",
                       options, progress=False)
    assert (remote["explained"], remote["errors"]) == (local["explained"], local["errors"]) == (36, 1)
    a, b = local_rows(tmp_path / "out"), read(bucket, "out")
    a["id"] = [k.replace(str(images), "s3://audit/in/images") for k in a.id]
    same_rows(a.sort_values("id").reset_index(drop=True), b)
    assert read(bucket, "out", "errors").id.tolist() == ["s3://audit/in/images/part0/broken.png"]
    with bucket.open_input_stream("audit/out/summary.json") as f:
        assert b'"explained": 36' in f.read()
    again = scale.run(["s3://audit/in/images/", "s3://audit/in/tables/"], models["top"], "s3://audit/out", options,
                      resume=True, progress=False)
    assert (again["skipped"], again["explained"], again["errors"]) == (37, 0, 0)


def test_cli_takes_uris_and_says_what_is_wrong_in_one_line(bucket, models, tmp_path):
    images, _ = write_images(tmp_path / "data", 6, seed=23, masks=False)
    upload(bucket, images, "cli/images")
    done = CliRunner().invoke(main, ["explain", models["top"], "s3://audit/cli/images", "--out", "s3://audit/cli/out",
                                     "--parquet", "-q"])
    assert done.exit_code == 0, done.output
    assert len(read(bucket, "cli/out")) == 6
    plain = CliRunner().invoke(main, ["explain", models["top"], str(images), "--out", "s3://audit/cli/plain"])
    assert plain.exit_code == 2 and "an object-store URI takes bulk runs (Parquet); add --parquet" in plain.output
    with pytest.raises(LrpgraphError, match="s3://audit/nothing/: no such file or folder"):
        scale.run(["s3://audit/nothing/"], models["top"], tmp_path / "o", progress=False)
    with pytest.raises(LrpgraphError, match="matches no file"):
        scale.run(["s3://audit/cli/images/*.parquet"], models["top"], tmp_path / "o", progress=False)

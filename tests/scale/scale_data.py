"""Generated data for the bulk-run tests (28 x 28 garment-like images with masks, PNG bytes) and the processes a\nlocal Ray cluster started by this test process runs."""

import contextlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image


def garment(rng, size=28):
    """(uint8 image, bool mask): a bright blob on a dark, noisy background."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(8, 20, 2)
    ry, rx = rng.uniform(4, 10, 2)
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    image = rng.integers(0, 40, (size, size)) + mask * rng.integers(120, 215, (size, size))
    return image.astype(np.uint8), mask


def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(folder, count, seed=0, masks=True):
    """count PNGs (two sub-folders) under folder/images and their masks under folder/masks."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        image, mask = garment(rng)
        relative = Path(f"part{i % 2}") / f"img_{i:04d}.png"
        for root, array in (("images", image), ("masks", mask.astype(np.uint8) * 255)):
            if root == "masks" and not masks:
                continue
            (folder / root / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / root / relative)
    return folder / "images", folder / "masks"


def _parents():
    """{pid: parent pid} of every process."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        found[int(pid)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def command(pid):
    """The command line of pid ('' once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def descendants(root=None):
    """The pids of every process below root (this process by default): a cluster ray.init starts here (its
    gcs_server, raylet and workers), not one another test process started."""
    parents, found, todo = _parents(), set(), [root or os.getpid()]
    while todo:
        pid = todo.pop()
        children = [child for child, parent in parents.items() if parent == pid and child not in found]
        found.update(children)
        todo += children
    return found


def token_model(folder):
    """(path, tokenizer.json text) of a small BERT classifier with random weights (tests/transformers' export),
    converted with attn-lrp, and a word-level tokenizer over its 120 ids ("w0" ... "w119")."""
    import sys

    from tokenizers import Tokenizer, models, pre_tokenizers

    import lrpgraph

    sys.path.insert(0, str(Path(__file__).parents[1] / "transformers"))
    import transformer_models as tm

    ids, mask, types = tm.text_batch(n=1)
    path = str(Path(folder) / "bert.lrp.onnx")
    lrpgraph.save(lrpgraph.convert(tm.export_text_model(tm.bert(seed=0), ids, mask, types), composite="attn-lrp"),
                  path)
    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(120)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return path, tokenizer.to_str()


def token_table(count, seed=0):
    """A pyarrow table of count sequences: id, input_ids (lengths 3 to 9), attention_mask (ones), text (the same
    ids as words "wN")."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    ids = [rng.integers(1, 120, int(rng.integers(3, 10))).tolist() for _ in range(count)]
    return pa.table({"id": [f"seq{i:03d}" for i in range(count)], "input_ids": ids,
                     "attention_mask": [[1] * len(row) for row in ids],
                     "text": [" ".join(f"w{t}" for t in row) for row in ids]})


@contextlib.contextmanager
def s3_server():
    """A local S3 server (moto's server mode on 127.0.0.1) with a bucket `audit`, the AWS_* variables pointing
    s3:// URIs at it while it runs (processes started meanwhile, such as a local Ray cluster, inherit them);
    yields a pyarrow S3FileSystem on it."""
    import logging

    from moto.server import ThreadedMotoServer
    from pyarrow import fs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    s3 = fs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="test", secret_key="test",
                         region="us-east-1", allow_bucket_creation=True)
    s3.create_dir("audit")
    try:
        yield s3
    finally:
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
        server.stop()


def upload(s3, folder, prefix):
    """Copy every file under folder to s3://audit/prefix/ with the same relative names."""
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        with s3.open_output_stream(f"audit/{prefix}/{path.relative_to(folder).as_posix()}") as out:
            out.write(path.read_bytes())


def read_s3(s3, folder, table="rows"):
    """The parts of s3://audit/folder/table as one pandas frame sorted by id."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow import fs

    parts = [i.path for i in s3.get_file_info(fs.FileSelector(f"audit/{folder}/{table}")) if i.is_file]
    assert parts and all(p.rsplit("/", 1)[1].startswith("part-") for p in parts)
    found = pa.concat_tables([pq.read_table(p, filesystem=s3) for p in parts])
    return found.to_pandas().sort_values("id").reset_index(drop=True)

"""`lrpgraph web` after `pip install`: onnxruntime-web comes from the tarball package-lock.json pins, fetched
once into a user cache and checked against the lock file's hash (lrpgraph.web.fetch). Never the network here:
a server on 127.0.0.1, a file:// URL, and a closed port for the offline case."""

import base64
import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading

import pytest

from lrpgraph import web
from lrpgraph.errors import LrpgraphError
from lrpgraph.web import fetch


def _tarball(files):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in files:
            data = f"// {name}".encode()
            info = tarfile.TarInfo(f"package/dist/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake onnxruntime-web tarball, a lock file pinning its hash, an empty cache, no node_modules."""
    data = _tarball(web.ORT_FILES)
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    lock = tmp_path / "package-lock.json"
    lock.write_text(json.dumps({"packages": {"node_modules/onnxruntime-web": {"version": "9.9.9",
                                                                              "integrity": integrity}}}))
    (tmp_path / "pkg.tgz").write_bytes(data)
    monkeypatch.setattr(fetch, "LOCK", lock)
    monkeypatch.setattr(web, "HERE", tmp_path / "no_package")  # as a pip install: no node_modules
    monkeypatch.delenv("LRPGRAPH_ORT_WEB", raising=False)
    monkeypatch.setenv("LRPGRAPH_CACHE", str(tmp_path / "cache"))
    return dict(data=data, lock=lock, tgz=tmp_path / "pkg.tgz", cache=tmp_path / "cache")


def test_the_lock_file_pins_the_registry_tarball(monkeypatch):
    monkeypatch.delenv("LRPGRAPH_ORT_WEB_URL", raising=False)
    version, url, integrity = fetch.locked()
    assert url == f"https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-{version}.tgz"
    assert integrity.startswith("sha512-") and len(base64.b64decode(integrity[7:])) == 64


def test_first_use_downloads_checks_and_caches(fake, monkeypatch, capsys):
    served = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            served.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(fake["data"])))
            self.end_headers()
            self.wfile.write(fake["data"])

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("LRPGRAPH_ORT_WEB_URL", f"http://127.0.0.1:{server.server_port}/ort.tgz")
        folder = web.ort_dist()
        assert folder == fake["cache"] / "onnxruntime-web-9.9.9" / "dist"
        assert all((folder / n).read_text() == f"// {n}" for n in web.ORT_FILES)
        assert "downloading onnxruntime-web" in capsys.readouterr().err  # the progress bar
        assert web.ort_dist() == folder and served == ["/ort.tgz"]  # the second use reads the cache
    finally:
        server.shutdown()


def test_a_wrong_hash_caches_nothing(fake, monkeypatch):
    tampered = fake["tgz"].with_name("other.tgz")
    tampered.write_bytes(_tarball(web.ORT_FILES[:1] + ("extra.js",)))
    monkeypatch.setenv("LRPGRAPH_ORT_WEB_URL", tampered.as_uri())
    with pytest.raises(LrpgraphError, match="is not package-lock.json's"):
        web.ort_dist(progress=False)
    assert not (fake["cache"] / "onnxruntime-web-9.9.9").exists()
    monkeypatch.setenv("LRPGRAPH_ORT_WEB_URL", fake["tgz"].as_uri())  # the right file: accepted
    assert (web.ort_dist(progress=False) / web.ORT_FILES[0]).is_file()


def test_offline_is_one_clear_line(fake, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    monkeypatch.setenv("LRPGRAPH_ORT_WEB_URL", f"http://127.0.0.1:{port}/ort.tgz")
    with pytest.raises(LrpgraphError) as error:
        web.ort_dist(progress=False)
    message = str(error.value)
    assert "cannot download onnxruntime-web" in message and "connect to the network once" in message
    assert "\n" not in message and not (fake["cache"] / "onnxruntime-web-9.9.9").exists()

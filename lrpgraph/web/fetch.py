"""onnxruntime-web for a pip-installed lrpgraph: the tarball pinned by package-lock.json (its version and
integrity hash), downloaded from the npm registry once, checked against that hash, and kept unpacked in a user
cache ($LRPGRAPH_CACHE, else $XDG_CACHE_HOME/lrpgraph, else ~/.cache/lrpgraph). `make web` (npm ci) and
$LRPGRAPH_ORT_WEB still take precedence (web.ort_dist); $LRPGRAPH_ORT_WEB_URL replaces the registry's URL (a
mirror, or a file:// URL of the same tarball)."""

import base64
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from lrpgraph.errors import LrpgraphError

LOCK = Path(__file__).resolve().parent / "package-lock.json"
REGISTRY = "https://registry.npmjs.org"
PACKAGE = "onnxruntime-web"


def locked() -> tuple:
    """(version, tarball URL, integrity 'sha512-...') of onnxruntime-web in package-lock.json."""
    entry = json.loads(LOCK.read_text(encoding="utf-8"))["packages"][f"node_modules/{PACKAGE}"]
    version = entry["version"]
    url = os.environ.get("LRPGRAPH_ORT_WEB_URL") or f"{REGISTRY}/{PACKAGE}/-/{PACKAGE}-{version}.tgz"
    return version, url, entry["integrity"]


def cache_root() -> Path:
    base = os.environ.get("LRPGRAPH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "lrpgraph")
    return Path(base)


def _download(url: str, target, progress: bool) -> None:
    """Stream url into the open file target, with a progress bar on stderr."""
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {PACKAGE}", file=sys.stderr,
                      disable=not progress) as bar:
                while chunk := response.read(1 << 16):
                    target.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise LrpgraphError(f"cannot download {PACKAGE} from {url} ({reason}); connect to the network once (it is "
                            "cached), or run `make web` in a source checkout, or set LRPGRAPH_ORT_WEB to its dist "
                            "folder") from None


def _integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def cached_dist(files: tuple, progress: bool = True) -> Path:
    """The cached dist folder holding files, downloaded, checked and unpacked on first use."""
    version, url, integrity = locked()
    folder = cache_root() / f"{PACKAGE}-{version}" / "dist"
    if all((folder / name).is_file() for name in files):
        return folder
    cache_root().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{PACKAGE}-", dir=cache_root()))
    try:
        tarball = work / "package.tgz"
        with open(tarball, "wb") as f:
            _download(url, f, progress)
        got = _integrity(tarball)
        if got != integrity:
            raise LrpgraphError(f"{url}: the download's hash {got[:23]}... is not package-lock.json's "
                                f"{integrity[:23]}...; nothing was cached; try again, or set LRPGRAPH_ORT_WEB")
        (work / "dist").mkdir()
        with tarfile.open(tarball, "r:gz") as archive:
            for name in files:
                try:
                    member = archive.extractfile(f"package/dist/{name}")
                except KeyError:
                    member = None
                if member is None:
                    raise LrpgraphError(f"{url}: the tarball lacks package/dist/{name}")
                with open(work / "dist" / name, "wb") as out:
                    shutil.copyfileobj(member, out)
        folder.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(work / "dist", folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder

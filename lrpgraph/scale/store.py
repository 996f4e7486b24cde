"""Where bulk runs read and write: local paths, or object-store URIs (s3://bucket/audit/, gs://..., file:///...)
through pyarrow's file systems (pyarrow.fs.FileSystem.from_uri).

An S3 URI takes its credentials, region and endpoint as the AWS tools do (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL for an S3-compatible server such as MinIO), or
from the URI's query (s3://bucket/audit?endpoint_override=host:9000&scheme=http). Local paths keep the
os module's behaviour. Folder is the output side: its parts are written whole, under a temporary name and
renamed on a local disk, in one PUT in an object store (an object is either all there or absent).
"""

import fnmatch
import os
import re
import uuid

from lrpgraph.errors import LrpgraphError

URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+://")


def is_uri(path: object) -> bool:
    """True for a URI with a scheme (s3://, gs://, file://), False for a local path."""
    return isinstance(path, str) and bool(URI.match(path))


def resolve(uri: str) -> tuple:
    """(pyarrow FileSystem, path in it) of a URI; one line when the scheme or the URI is not usable."""
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(uri)
    except Exception as error:  # pyarrow raises ArrowInvalid / OSError / ValueError with long messages
        raise LrpgraphError(f"{uri}: not a usable URI ({first_line(error)})") from None


def first_line(error: BaseException) -> str:
    """An exception's first line (its type's name when it has no message)."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _as_uri(uri, path):
    """The URI of path, in the file system (and with the query) of uri."""
    scheme, rest = uri.split("://", 1)
    query = "?" + rest.split("?", 1)[1] if "?" in rest else ""
    return f"{scheme}://{path}{query}"


def info(uri: str) -> object:
    """pyarrow FileInfo of a URI (type File, Directory or NotFound); a store that cannot be reached is one line."""
    fs, path = resolve(uri)
    try:
        return fs.get_file_info(path)
    except Exception as error:
        raise LrpgraphError(f"{uri}: cannot reach it ({first_line(error)})") from None


def files_under(uri: str) -> list:
    """The URIs of the files under a folder URI, recursively, sorted; hidden names left out."""
    from pyarrow import fs as pafs

    fs, path = resolve(uri)
    try:
        found = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=True, allow_not_found=True))
    except Exception as error:
        raise LrpgraphError(f"{uri}: cannot list it ({first_line(error)})") from None
    names = [f.path for f in found if f.type == pafs.FileType.File]
    return sorted(_as_uri(uri, n) for n in names if not any(p.startswith(".") for p in n.split("/")))


def glob(pattern: str) -> list:
    """The file URIs matching a URI pattern (*, ?, [..]; ** crosses folders), sorted."""
    scheme, rest = pattern.split("://", 1)
    parts = rest.split("/")
    fixed = next(i for i, p in enumerate(parts) if any(c in p for c in "*?["))
    base = f"{scheme}://" + "/".join(parts[:fixed])
    wanted = re.compile(fnmatch.translate(pattern.replace("**/", "*").replace("**", "*")))
    return [uri for uri in files_under(base) if wanted.match(uri)]


def read_bytes(uri: str) -> bytes:
    """The bytes of a file URI."""
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def open_input(path: str) -> object:
    """A local path as it is, or a URI as a pyarrow input file (what pyarrow.parquet reads from)."""
    if not is_uri(path):
        return path
    fs, inner = resolve(path)
    return fs.open_input_file(inner)


class Folder:
    """An output folder, local or a URI: subfolders, the Parquet parts in them, whole writes."""

    def __init__(self, location: str | os.PathLike):
        self.location = str(location)
        self.remote = is_uri(self.location)
        if self.remote:
            self.fs, self.path = resolve(self.location)
            self.path = self.path.rstrip("/")

    def _inner(self, *names):
        return "/".join([self.path, *names]) if self.remote else os.path.join(self.location, *names)

    def make(self, name: str) -> None:
        """Create the subfolder name (an object store needs none; its bucket must exist)."""
        if not self.remote:
            os.makedirs(self._inner(name), exist_ok=True)
            for stale in os.listdir(self._inner(name)):  # left by a job that was killed
                if stale.startswith(".part-") and stale.endswith(".tmp"):
                    os.unlink(self._inner(name, stale))

    def parts(self, name: str) -> list:
        """The Parquet parts (part-*.parquet) in subfolder name, as paths or URIs, sorted."""
        if self.remote:
            from pyarrow import fs as pafs

            found = self.fs.get_file_info(pafs.FileSelector(self._inner(name), allow_not_found=True))
            names = sorted(f.base_name for f in found if f.type == pafs.FileType.File)
            return [_as_uri(self.location, self._inner(name, n)) for n in names if fnmatch.fnmatch(n, "part-*.parquet")]
        folder = self._inner(name)
        names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        return [os.path.join(folder, n) for n in names if fnmatch.fnmatch(n, "part-*.parquet")]

    def write_part(self, name: str, filename: str, table: object) -> None:
        """Write table as subfolder name's Parquet file filename, whole or not at all."""
        import pyarrow.parquet as pq

        if self.remote:
            try:
                pq.write_table(table, self._inner(name, filename), filesystem=self.fs)
            except OSError as error:
                raise LrpgraphError(f"cannot write {self.location}/{name}/{filename}: {first_line(error)}") from None
            return
        temporary = self._inner(name, f".{filename}.{uuid.uuid4().hex[:6]}.tmp".replace(".parquet.", "."))
        pq.write_table(table, temporary)
        os.replace(temporary, self._inner(name, filename))

    def write_text(self, filename: str, text: str) -> None:
        """Write a text file in the folder (atomically on a local disk)."""
        if self.remote:
            with self.fs.open_output_stream(self._inner(filename)) as stream:
                stream.write(text.encode("utf-8"))
            return
        from lrpgraph.files import atomic_write

        atomic_write(os.path.join(self.location, filename), lambda f: f.write(text), binary=False)

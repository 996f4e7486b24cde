"""The inputs of a bulk job, as records: folders, files and globs of images, and Parquet files (or folders
of them) with an image column (encoded bytes) and optional mask and target columns.

A record has the columns of RECORD_COLUMNS: `id` (the image's path as found, or the Parquet id column,
else `<file>#<row>`), `path` (an image file to read, or null), `image` (encoded bytes, or null), `mask_path`
/ `mask` (the same for its mask), `target` (a class index, -1 for none) and `problem` (why the record
cannot be explained, found while reading: an unreadable Parquet file, a missing mask). Records of token models
carry `tokens` (token ids), or `text` (tokenized by the worker), and `extra` (JSON: the model's other inputs,
e.g. attention_mask, found as columns of the same name) instead of an image. The inputs are cut into units
(batch_size image files, or one row group of a Parquet file); a Reader turns one unit into a pyarrow table of
records. Units are what Ray spreads over its workers, so Parquet inputs are best written with row groups of a
few hundred records (pyarrow.parquet.write_table(..., row_group_size=256)).
Both engines read the same units with the same function: the local engine in its own process, the Ray
engine in Ray tasks, so the files must be readable where the tasks run (a shared file system on a cluster).
An unreadable Parquet file becomes one record whose id is the file and whose image is null, so the
worker writes it to the errors table with the reason.
"""

import glob
import json
import os
from pathlib import Path

from lrpgraph.errors import LrpgraphError, MissingDependencyError
from lrpgraph.scale import store
from lrpgraph.runtime.images import IMAGE_EXTENSIONS, find_images

RECORD_COLUMNS = ("id", "path", "image", "mask_path", "mask", "target", "problem", "tokens", "text", "extra")
PARQUET_EXTENSIONS = (".parquet", ".pq")
NO_TARGET = -1


def pyarrow() -> object:
    """The pyarrow module, or a one-line error naming the extra that installs it."""
    try:
        import pyarrow as pa
        import pyarrow.compute  # noqa: F401  (pa.compute and pa.parquet are used by the callers)
        import pyarrow.parquet  # noqa: F401
    except ModuleNotFoundError as error:
        if error.name not in ("pyarrow", "pyarrow.parquet", "pyarrow.compute"):
            raise
        raise MissingDependencyError("Parquet output needs pyarrow: pip install 'lrpgraph[parquet]'") from None
    return pa


def is_parquet(path: str | os.PathLike) -> bool:
    """True for a .parquet / .pq name (a URI's query left out)."""
    name = str(path).split("?", 1)[0] if store.is_uri(str(path)) else str(path)
    return name.lower().endswith(PARQUET_EXTENSIONS)


def _expand(inputs):
    """Paths given or matched by globs (a glob that matches nothing is an error), in argument order."""
    paths = []
    for given in inputs:
        if any(c in str(given).split("?", 1)[0] if store.is_uri(str(given)) else c in str(given) for c in "*?["):
            matched = store.glob(str(given)) if store.is_uri(str(given)) else sorted(glob.glob(str(given),
                                                                                              recursive=True))
            if not matched:
                raise LrpgraphError(f"{given} matches no file; give image files, folders or Parquet files")
            paths += matched
        else:
            paths.append(str(given))
    return paths


def _parquet_in(folder):
    """The Parquet files under folder (a Parquet dataset), sorted; hidden ones skipped."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if is_parquet(f) and not f.startswith(".")]
    return found


class Source:
    """The inputs of one job: image files (with relative names for masks) and Parquet files.

    columns: {"image", "mask", "target", "id"} -> the Parquet column names (mask and target may be None;
    the id column is used where a file has it). masks_dir: a folder of masks with the images' relative
    names (PNG; also the name with .png). exclude: a folder left out (the output folder)."""

    def __init__(self, inputs: list, columns: dict | None = None, masks_dir: str | os.PathLike | None = None,
                 exclude: str | os.PathLike | None = None):
        self.columns = {"image": "image", "mask": None, "target": None, "id": "id", "tokens": None, "text": None,
                        "extra": (), **(columns or {})}
        if self.tokens:
            self.columns["image"] = None
        if store.is_uri(str(masks_dir)):
            raise LrpgraphError(f"--masks {masks_dir}: give masks in an object store as a Parquet column "
                                "(--masks-column); --masks takes a local folder")
        if masks_dir is not None and not Path(masks_dir).is_dir():
            raise LrpgraphError(f"--masks {masks_dir} is not a folder")
        self.masks_dir = None if masks_dir is None else str(masks_dir)
        self.images, self.parquet = [], []
        image_inputs = []
        for path in _expand(inputs):
            if store.is_uri(path):
                self._add_uri(path)
            elif is_parquet(path) and os.path.isfile(path):
                self.parquet.append(path)
            elif os.path.isdir(path) and _parquet_in(path) and not find_images([path], exclude=exclude):
                self.parquet += _parquet_in(path)
            else:
                image_inputs.append(path)
        if image_inputs:
            self.images = [(str(f), str(Path(r).as_posix())) for f, r in find_images(image_inputs, exclude=exclude)]
        if self.tokens and self.images:
            raise LrpgraphError(f"{self.images[0][0]} is an image; token ids and texts are read from Parquet files "
                                "(--tokens-column / --text-column)")
        if not self.images and not self.parquet:
            raise LrpgraphError(f"no image or Parquet files found in {', '.join(map(str, inputs))}; give files or "
                                f"folders with {', '.join(IMAGE_EXTENSIONS)}, or .parquet files")
        for file in self.parquet:
            self._check_columns(file)

    def _add_uri(self, uri):
        """A file or folder URI: its Parquet files, and its image files with their names relative to it."""
        found = store.info(uri)
        if found.type.name == "File":
            self.images += [] if is_parquet(uri) else [(uri, uri.rsplit("/", 1)[-1])]
            self.parquet += [uri] if is_parquet(uri) else []
        elif found.type.name == "Directory":
            files = store.files_under(uri)
            self.parquet += [f for f in files if is_parquet(f)]
            base = uri.split("?", 1)[0].rstrip("/") + "/"
            self.images += [(f, f.split("?", 1)[0][len(base):]) for f in files
                            if f.split("?", 1)[0].lower().endswith(IMAGE_EXTENSIONS)]
        else:
            raise LrpgraphError(f"{uri}: no such file or folder")

    @property
    def tokens(self) -> bool:
        """True when the records are token ids or texts (a token model's job)."""
        return bool(self.columns["tokens"] or self.columns["text"])

    def _check_columns(self, file):
        """Refuse a readable Parquet file that lacks a named column (an unreadable one becomes an error record)."""
        try:
            names = pyarrow().parquet.ParquetFile(store.open_input(file)).schema_arrow.names
        except LrpgraphError:
            raise
        except Exception:
            return
        missing = [c for c in _named(self.columns) if c not in names]
        if missing:
            raise LrpgraphError(f"{file} has no column {', '.join(missing)}; its columns are {', '.join(names)} "
                                "(choose with --image-column, --masks-column, --target-column, --tokens-column, "
                                "--text-column)")

    def units(self, batch_size: int) -> list:
        """The read units as JSON strings: batch_size image files, or a Parquet file's row group (with the
        file's row number of its first record; an unreadable file is one unit)."""
        units = [json.dumps({"files": self.images[s:s + batch_size]})
                 for s in range(0, len(self.images), batch_size)]
        for file in self.parquet:
            try:
                groups = pyarrow().parquet.ParquetFile(store.open_input(file)).metadata
                sizes = [groups.row_group(g).num_rows for g in range(groups.num_row_groups)]
            except Exception:  # unreadable: the reader makes it one error record
                sizes = [0]
            first = 0
            for group, size in enumerate(sizes):
                units.append(json.dumps({"parquet": file, "group": group, "first": first}))
                first += size
        return units

    def count(self) -> int:
        """How many records the inputs hold (Parquet row counts from the files' footers)."""
        total = len(self.images)
        if self.parquet:
            pq = pyarrow().parquet
            for file in self.parquet:
                try:
                    total += pq.ParquetFile(store.open_input(file)).metadata.num_rows
                except Exception:  # unreadable: it becomes one error record
                    total += 1
        return total

    def reader(self) -> "Reader":
        """A picklable function unit -> records table (what Ray ships to its read tasks)."""
        return Reader(self.columns, self.masks_dir)


class Reader:
    """read(unit, skip) -> a pyarrow table of records, leaving out the ids in skip (done by an earlier run)."""

    def __init__(self, columns: dict, masks_dir: str | None):
        self.columns, self.masks_dir = columns, masks_dir

    def __call__(self, unit: str, skip: frozenset = frozenset()) -> object:
        pa = pyarrow()
        spec = json.loads(unit)
        records = self._files(spec["files"]) if "files" in spec else self._parquet(**spec)
        table = pa.Table.from_pydict(records, schema=record_schema())
        if skip:
            keep = [i for i, key in enumerate(records["id"]) if key not in skip]
            table = table.take(pa.array(keep, type=pa.int64()))
        return table

    def _files(self, files):
        records = _empty()
        for file, relative in files:
            mask = self._mask_path(relative)
            records["id"].append(file)
            records["path"].append(file)
            records["mask_path"].append(mask)
            records["problem"].append(None if mask is not None or self.masks_dir is None else
                                      f"no mask for {relative} in {self.masks_dir} (expected "
                                      f"{Path(self.masks_dir) / relative} or the same name with .png)")
        _fill(records, len(files), image=None, mask=None, target=NO_TARGET, tokens=None, text=None, extra=None)
        return records

    def _mask_path(self, relative):
        if self.masks_dir is None:
            return None
        for candidate in (Path(self.masks_dir) / relative, (Path(self.masks_dir) / relative).with_suffix(".png")):
            if candidate.is_file():
                return str(candidate)
        return None

    def _parquet(self, parquet, group, first):
        pq, file = pyarrow().parquet, parquet
        records = _empty()
        try:
            table = pq.ParquetFile(store.open_input(file)).read_row_group(group)
        except Exception as error:  # a broken file: one error record, the job goes on
            records["id"].append(file)
            _fill(records, 1, path=None, image=None, mask_path=None, mask=None, target=NO_TARGET, tokens=None,
                  text=None, extra=None, problem=f"cannot read Parquet file {file}: {str(error).splitlines()[0] if str(error) else error}")
            return records
        names, n = table.column_names, table.num_rows
        missing = [c for c in _named(self.columns) if c not in names]
        if missing:
            raise LrpgraphError(f"{file} has no column {', '.join(missing)}; its columns are {', '.join(names)} "
                                "(choose with --image-column, --masks-column, --target-column, --tokens-column, "
                                "--text-column)")
        ids = table.column(self.columns["id"]).to_pylist() if self.columns["id"] in names else [None] * n
        records["id"] = [str(key) if key is not None else f"{file}#{first + row}" for row, key in enumerate(ids)]
        def values(role):
            return table.column(self.columns[role]).to_pylist() if self.columns[role] else [None] * n

        records["image"], records["mask"] = values("image"), values("mask")
        records["tokens"], records["text"] = values("tokens"), values("text")
        records["target"] = [NO_TARGET if t is None else int(t) for t in values("target")]
        extra = {name: table.column(name).to_pylist() for name in self.columns["extra"] if name in names}
        records["extra"] = [json.dumps({name: column[row] for name, column in extra.items()}) if extra else None
                            for row in range(n)]
        _fill(records, n, path=None, mask_path=None, problem=None)
        return records


def slices(table: object, batch_size: int) -> list:
    """table cut into tables of batch_size rows (the last one shorter): the batches of both engines."""
    return [table.slice(start, batch_size) for start in range(0, table.num_rows, batch_size)]


def _empty():
    return {name: [] for name in RECORD_COLUMNS}


def _fill(records, n, **values):
    for name, value in values.items():
        records[name] += [value] * n


def record_schema() -> object:
    """The pyarrow schema of records (RECORD_COLUMNS)."""
    pa = pyarrow()
    return pa.schema([("id", pa.string()), ("path", pa.string()), ("image", pa.binary()),
                      ("mask_path", pa.string()), ("mask", pa.binary()), ("target", pa.int64()),
                      ("problem", pa.string()), ("tokens", pa.list_(pa.int64())), ("text", pa.string()),
                      ("extra", pa.string())])


def _named(columns):
    """The Parquet columns a job reads besides the id (which may be absent)."""
    return [columns[role] for role in ("image", "mask", "target", "tokens", "text") if columns.get(role)]
